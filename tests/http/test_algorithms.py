"""Signing keys of every algorithm (issue 15): RS256/384/512, PS256/384/512, ES256, ES384
and EdDSA, through the app in process.

Each algorithm's key signs tokens that ``/verify_token`` and introspection accept; the JWK
Set publishes each key with the members of its type (RFC 7518 §6.2 for EC, RFC 8037 §2 for
OKP), its kid the RFC 7638 thumbprint (computed here by jwcrypto, not by the dealer's
code); the metadata lists exactly the published algorithms; and a token whose header names
another algorithm than its key's is refused, whichever families are mixed.

Signatures are made here with ``cryptography`` directly, not with the dealer's signing
code, so a bug there cannot hide itself; ``test_hand_signed_tokens_verify`` proves the
hand signing right.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwcrypto import jwk as jwcrypto_jwk

from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.tokens import (
    VERIFY_PATH,
    b64url_decode,
    b64url_encode,
    get_token,
    introspect,
    segment,
    unverified,
)
from tokendealer.keys.keyset import MANIFEST, atomic_write, remove_key
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
#: The members each key type publishes, and nothing else.
MEMBERS = {
    "RSA": {"kty", "use", "alg", "kid", "n", "e"},
    "EC": {"kty", "use", "alg", "kid", "crv", "x", "y"},
    "OKP": {"kty", "use", "alg", "kid", "crv", "x"},
}
#: (kty, crv, coordinate octets) of each algorithm's keys.
KEY_TYPES = {
    **{alg: ("RSA", None, None) for alg in ALGORITHMS[:6]},
    "ES256": ("EC", "P-256", 32),
    "ES384": ("EC", "P-384", 48),
    "EdDSA": ("OKP", "Ed25519", 32),
}
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(alg: str) -> PrivateKey:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(name="private_keys", scope="module")
def _private_keys() -> dict[str, PrivateKey]:
    """One key per algorithm, made once: RSA generation is the slow part."""
    return {alg: new_key(alg) for alg in ALGORITHMS}


def jwcrypto_thumbprint(key: PrivateKey) -> str:
    """The RFC 7638 thumbprint as jwcrypto computes it, from the public PEM."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(jwcrypto_jwk.JWK.from_pem(pem).thumbprint())


def install(keys_dir: Path, key: PrivateKey, alg: str, *, at: float | None = None) -> str:
    """Write ``key`` into the keys directory as an operator's tool would (PKCS#8 PEM,
    0600), named in the manifest for ``alg`` and activating ``at`` (default now)."""
    kid = jwcrypto_thumbprint(key)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(keys_dir / f"{kid}.pem", pem)
    manifest = json.loads((keys_dir / MANIFEST).read_text())
    when = time.time() if at is None else at
    manifest["keys"].append({"kid": kid, "alg": alg, "created_at": when, "activate_at": when})
    atomic_write(keys_dir / MANIFEST, json.dumps(manifest).encode())
    return kid


async def use(dealer: Dealer, settings: Settings, key: PrivateKey, alg: str) -> str:
    """Make ``key`` the active signing key for ``alg``; the dealer reloads at once."""
    kid = install(settings.keys_dir, key, alg)
    assert await dealer.refresh_keys()
    active = dealer.keyset.active()
    assert active is not None and (active.kid, active.alg) == (kid, alg)
    return kid


# -- signing by hand ------------------------------------------------------------------------


def signature(key: Any, alg: str, data: bytes) -> bytes:
    """The JWS signature of ``data`` under ``alg`` with ``key``, whatever the pair: an
    attacker's signer does what it is told (an ECDSA key with SHA-384, an RSA key with PSS
    for an RS* kid...). ECDSA signatures in JWS form: R || S, each the curve's size."""
    if alg.startswith("RS"):
        return bytes(key.sign(data, padding.PKCS1v15(), _HASHES[alg[2:]]()))
    if alg.startswith("PS"):
        digest = _HASHES[alg[2:]]()
        return bytes(
            key.sign(
                data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest
            )
        )
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_HASHES[alg[2:]]())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "EdDSA":
        return bytes(key.sign(data))
    if alg.startswith("HS"):
        return hmac.new(key, data, getattr(hashlib, f"sha{alg[2:]}")).digest()
    return b""  # none


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": "svc",
        "client_id": "svc",
        "aud": ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": f"jti-{time.monotonic_ns()}",
        "scope": "read",
        **changes,
    }


def forge(header: dict[str, Any], key: Any, sign_as: str) -> str:
    signing_input = f"{segment(header)}.{segment(claims())}"
    return f"{signing_input}.{b64url_encode(signature(key, sign_as, signing_input.encode()))}"


async def verify_token(client: QuartClient, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(VERIFY_PATH, form={"access_token": token})
    return response.status_code, json.loads(await response.get_data())


# -- each algorithm ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_each_algorithm_signs_tokens_that_verify_and_introspect(
    client: QuartClient,
    dealer: Dealer,
    settings: Settings,
    register: Register,
    private_keys: dict[str, PrivateKey],
    alg: str,
) -> None:
    """A key of each algorithm signs the token endpoint's tokens: the header names the
    algorithm and the key, the signature has the algorithm's length and verifies with
    PyJWT given only the public key, and /verify_token and introspection accept it."""
    key = private_keys[alg]
    kid = await use(dealer, settings, key, alg)
    secret = await register("svc", scopes=("read",))
    token = await get_token(client, "svc", secret, scope="read")

    header, _ = unverified(token)
    assert header == {"alg": alg, "kid": kid, "typ": "at+jwt"}
    raw = b64url_decode(token.split(".")[2])
    kty, _, size = KEY_TYPES[alg]
    assert len(raw) == (256 if kty == "RSA" else 2 * size if kty == "EC" else 64)
    decoded = jwt.decode(token, key.public_key(), algorithms=[alg], audience=ISSUER, issuer=ISSUER)
    assert decoded["client_id"] == "svc"

    status, verified = await verify_token(client, token)
    assert status == 200 and verified["client_id"] == "svc" and verified["scope"] == "read"
    status, answer, _ = await introspect(client, token, ("svc", secret))
    assert status == 200 and answer["active"] is True and answer["client_id"] == "svc"

    # The key retires when another signs; its tokens keep verifying while published.
    successor = "EdDSA" if alg != "EdDSA" else "ES256"
    await use(dealer, settings, private_keys[successor], successor)
    assert (await verify_token(client, token))[0] == 200


async def test_a_key_set_of_every_type(
    client: QuartClient,
    dealer: Dealer,
    settings: Settings,
    private_keys: dict[str, PrivateKey],
) -> None:
    """With a key of each algorithm published: each JWK has exactly the members of its
    type, in their exact encoding; its kid is jwcrypto's RFC 7638 thumbprint; jwcrypto
    reads each back to the same public key; and the metadata lists each algorithm once."""
    kids = {alg: install(settings.keys_dir, private_keys[alg], alg) for alg in ALGORITHMS}
    assert await dealer.refresh_keys()
    response = await client.get("/.well-known/jwks.json")
    raw = await response.get_data()
    published = {jwk["kid"]: jwk for jwk in json.loads(raw)["keys"]}
    for member in PRIVATE_MEMBERS:
        assert f'"{member}"'.encode() not in raw

    for alg, kid in kids.items():
        jwk = published[kid]
        kty, crv, size = KEY_TYPES[alg]
        assert set(jwk) == MEMBERS[kty], jwk
        assert (jwk["kty"], jwk["use"], jwk["alg"]) == (kty, "sig", alg)
        key = private_keys[alg]
        public = key.public_key()
        if kty == "EC":
            assert isinstance(public, ec.EllipticCurvePublicKey)
            numbers = public.public_numbers()
            # RFC 7518 §6.2.1.2: the full coordinate size, leading zeros kept.
            assert jwk["crv"] == crv
            assert jwk["x"] == b64url_encode(numbers.x.to_bytes(size, "big"))
            assert jwk["y"] == b64url_encode(numbers.y.to_bytes(size, "big"))
        elif kty == "OKP":
            assert jwk["crv"] == "Ed25519"
            raw_key = public.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            assert b64url_decode(jwk["x"]) == raw_key and len(raw_key) == 32
        else:
            assert isinstance(public, rsa.RSAPublicKey)
            assert int.from_bytes(b64url_decode(jwk["n"]), "big") == public.public_numbers().n
            assert jwk["e"] == "AQAB"
        assert jwk["kid"] == kid == jwcrypto_thumbprint(key)
        imported = jwcrypto_jwk.JWK(**jwk)
        assert imported.thumbprint() == kid
        assert imported.export_to_pem() == public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    metadata = await (await client.get("/.well-known/oauth-authorization-server")).get_json()
    assert metadata["access_token_signing_alg_values_supported"] == sorted(ALGORITHMS)


async def test_metadata_lists_exactly_the_published_algorithms(
    client: QuartClient,
    dealer: Dealer,
    settings: Settings,
    private_keys: dict[str, PrivateKey],
) -> None:
    """``access_token_signing_alg_values_supported`` follows the JWK Set: the algorithms
    of the keys published now, each once, whatever their state."""

    async def listed() -> tuple[list[str], list[str]]:
        metadata = await (await client.get("/.well-known/oauth-authorization-server")).get_json()
        jwks = await (await client.get("/.well-known/jwks.json")).get_json()
        return metadata["access_token_signing_alg_values_supported"], sorted(
            {jwk["alg"] for jwk in jwks["keys"]}
        )

    assert await listed() == (["RS512"], ["RS512"])
    es256 = install(settings.keys_dir, private_keys["ES256"], "ES256")
    install(settings.keys_dir, private_keys["EdDSA"], "EdDSA", at=time.time() + 3600)  # next
    assert await dealer.refresh_keys()
    assert await listed() == (["ES256", "EdDSA", "RS512"], ["ES256", "EdDSA", "RS512"])
    # The RS512 key is retired (ES256 signs); removed, its algorithm is no longer listed.
    (rs512,) = [key.kid for key in dealer.keyset.keys if key.alg == "RS512"]
    remove_key(settings.keys_dir, rs512)
    assert await dealer.refresh_keys()
    assert await listed() == (["ES256", "EdDSA"], ["ES256", "EdDSA"])
    active = dealer.keyset.active()
    assert active is not None and active.kid == es256


# -- algorithm confusion ---------------------------------------------------------------------------


@pytest.fixture(name="kids")
async def _kids(
    dealer: Dealer, settings: Settings, register: Register, private_keys: dict[str, PrivateKey]
) -> dict[str, str]:
    """A key of each algorithm published; the client ``svc`` the forged tokens name."""
    await register("svc", token_epoch="")
    kids = {alg: install(settings.keys_dir, private_keys[alg], alg) for alg in ALGORITHMS}
    assert await dealer.refresh_keys()
    return kids


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_hand_signed_tokens_verify(
    client: QuartClient, kids: dict[str, str], private_keys: dict[str, PrivateKey], alg: str
) -> None:
    """The control of the cases below: a token signed here with a key's own algorithm is
    accepted, so each refusal below comes from the one thing its case changes."""
    token = forge({"alg": alg, "typ": "at+jwt", "kid": kids[alg]}, private_keys[alg], alg)
    status, body = await verify_token(client, token)
    assert status == 200, body


#: (the key whose kid the header names, the header's alg): each signed by that key as the
#: header's alg says (the signature is genuine for the header's algorithm), or keyed with
#: the public key for HMAC.
CONFUSIONS = [
    ("ES256", "RS256"),
    ("ES256", "ES384"),
    ("ES256", "EdDSA"),
    ("ES384", "ES256"),
    ("EdDSA", "ES256"),
    ("EdDSA", "RS512"),
    ("RS512", "PS512"),
    ("RS512", "ES256"),
    ("PS256", "RS256"),
    ("RS256", "EdDSA"),
    ("ES256", "HS256"),
    ("EdDSA", "HS512"),
    ("ES384", "none"),
]


def _signing_key(private_keys: dict[str, PrivateKey], key_alg: str, header_alg: str) -> Any:
    """What signs a confused token: for HMAC, the named key's public PEM (the classic
    confusion); for none, nothing; the named key itself when it is of the header
    algorithm's type (an RSA key signing PSS for an RS* kid, a P-256 key signing with
    SHA-384); else a key of the header's algorithm (a signature genuine for some key)."""
    key = private_keys[key_alg]
    if header_alg.startswith("HS"):
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if header_alg == "none":
        return None
    if KEY_TYPES[header_alg][0] == KEY_TYPES[key_alg][0]:
        return key
    return private_keys[header_alg]


@pytest.mark.parametrize(("key_alg", "header_alg"), CONFUSIONS)
async def test_an_algorithm_other_than_the_keys_is_refused(
    client: QuartClient,
    kids: dict[str, str],
    private_keys: dict[str, PrivateKey],
    register: Register,
    key_alg: str,
    header_alg: str,
) -> None:
    """RFC 8725 §3.1: the kid names the key, and the key its one algorithm: a header with
    any other (of the same family or not, an HMAC keyed with the public key, none) is
    refused by /verify_token and inactive at introspection."""
    signer = _signing_key(private_keys, key_alg, header_alg)
    token = forge({"alg": header_alg, "typ": "at+jwt", "kid": kids[key_alg]}, signer, header_alg)
    status, body = await verify_token(client, token)
    assert status == 400 and body["error"] == "invalid_token", body
    if header_alg != "none":
        assert body["error_description"] == "The token algorithm does not match its key."
    secret = await register("rs", audiences=(ISSUER,))
    status, answer, _ = await introspect(client, token, ("rs", secret))
    assert status == 200 and answer == {"active": False}


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
async def test_a_der_encoded_ecdsa_signature_is_refused(
    client: QuartClient, kids: dict[str, str], private_keys: dict[str, PrivateKey], alg: str
) -> None:
    """RFC 7518 §3.4: an ECDSA JWS signature is R || S, not the DER that X.509 uses: a
    DER signature (right key, right hash) is refused, as is a signature cut short."""
    key = private_keys[alg]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    header = segment({"alg": alg, "typ": "at+jwt", "kid": kids[alg]})
    signing_input = f"{header}.{segment(claims())}"
    der = key.sign(signing_input.encode(), ec.ECDSA(_HASHES[alg[2:]]()))
    raw = signature(key, alg, signing_input.encode())
    for wrong in (der, raw[:-1], raw + b"\x00"):
        status, _ = await verify_token(client, f"{signing_input}.{b64url_encode(wrong)}")
        assert status == 400
    assert (await verify_token(client, f"{signing_input}.{b64url_encode(raw)}"))[0] == 200
