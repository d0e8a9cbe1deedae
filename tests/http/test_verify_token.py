"""``POST /verify_token``: strict verification (RFC 9068 §4, RFC 8725, RFC 7519 §7.2).

Tokens are forged here by hand (header, payload and signature built byte by byte) so
that every attack can be expressed exactly. ``test_forge_control`` proves the forging
itself yields tokens the dealer accepts, so each rejection below is caused by the one
thing its case changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.tokens import (
    VERIFY_PATH,
    b64url_decode,
    b64url_encode,
    get_token,
    rfc7638_thumbprint,
    segment,
    tamper,
    unverified,
)
from tokendealer.library.verification import (
    ExpiredToken,
    ImmatureToken,
    InvalidAudience,
    InvalidClaims,
    InvalidIssuer,
    InvalidToken,
    MalformedToken,
)
from tokendealer.service.dealer import Dealer

MARKER = "Zq8echoMarker"
ERROR_CHARSET = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]+")
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")

# -- forging -----------------------------------------------------------------------------


Signer = Callable[[bytes], bytes]


def rsa_signer(private_key: rsa.RSAPrivateKey, alg: str = "RS512") -> Signer:
    bits = alg[2:]
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[bits]
    if alg.startswith("PS"):
        pad: padding.AsymmetricPadding = padding.PSS(
            mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH
        )
    else:
        pad = padding.PKCS1v15()
    return lambda data: private_key.sign(data, pad, digest)


def hmac_signer(secret: bytes, alg: str) -> Signer:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return lambda data: hmac.new(secret, data, digest).digest()


def forge(header: dict[str, Any] | str, payload: dict[str, Any] | str, sign: Signer) -> str:
    """A JWS of ``header`` and ``payload`` (JSON objects, or raw JSON text to write
    duplicates) signed by ``sign``."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64url_encode(sign(signing_input.encode('ascii')))}"


def good_claims(**changes: Any) -> dict[str, Any]:
    """Claims the dealer accepts; a change to ``None`` removes the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "svc",
        "client_id": "svc",
        "aud": ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": f"jti-{MARKER}",
        "scope": "read",
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


@dataclass(frozen=True)
class Keys:
    """Our signing key (as the dealer loaded it), its published JWK, and an attacker's key."""

    kid: str
    private_key: rsa.RSAPrivateKey
    jwk: dict[str, Any]
    attacker: rsa.RSAPrivateKey

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def header(self, **changes: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": "RS512", "typ": "at+jwt", "kid": self.kid}
        for name, value in changes.items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        return header

    def token(self, claims: dict[str, Any] | None = None, **header: Any) -> str:
        """A token signed with our real key: valid unless the caller changed something."""
        return forge(
            self.header(**header),
            good_claims() if claims is None else claims,
            rsa_signer(self.private_key),
        )

    def attacker_jwk(self) -> dict[str, Any]:
        numbers = self.attacker.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": rfc7638_thumbprint(self.attacker.public_key()),
            "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url_encode(numbers.e.to_bytes(3, "big")),
        }


@pytest.fixture(name="attacker_key", scope="module")
def _attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(name="keys")
async def _keys(
    client: QuartClient, dealer: Dealer, register: Register, attacker_key: rsa.RSAPrivateKey
) -> Keys:
    # Forged tokens name the client "svc": it must exist, or the revocation check refuses.
    # Their claims are written here, without a token epoch, like the record's.
    await register("svc", token_epoch="")
    active = dealer.keyset.active()
    assert active is not None
    jwks = await (await client.get("/.well-known/jwks.json")).get_json()
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == active.kid]
    return Keys(active.kid, active.private_key, jwk, attacker_key)


# -- calling the endpoint ----------------------------------------------------------------


async def verify(
    client: QuartClient, token: str, audience: str | None = None, *, as_json: bool = False
) -> Any:
    params = {"access_token": token}
    if audience is not None:
        params["audience"] = audience
    if as_json:
        return await client.post(VERIFY_PATH, json=params)
    return await client.post(VERIFY_PATH, form=params)


async def assert_error(response: Any, status: int, error: str) -> str:
    """An RFC 6749 §5.2-shaped JSON error without echo; returns error_description."""
    raw = await response.get_data()
    assert response.status_code == status, raw
    assert response.mimetype == "application/json"
    body = json.loads(raw)
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error
    assert ERROR_CHARSET.fullmatch(body["error_description"])
    assert MARKER.lower().encode() not in raw.lower()
    assert response.headers.get("Cache-Control") == "no-store"
    description: str = body["error_description"]
    return description


Reason = type[InvalidToken] | str | None


async def assert_rejected(response: Any, reason: Reason = None) -> str:
    """400 invalid_token; with ``reason`` (a class or a description), for exactly that one."""
    description = await assert_error(response, 400, "invalid_token")
    if isinstance(reason, str):
        assert description == reason
    elif reason is not None:
        assert description == reason.description
    return description


# -- valid tokens ------------------------------------------------------------------------


async def issue(client: QuartClient, register: Register) -> str:
    """A token from the token endpoint for client ``svc`` (audience ``https://api.test``)."""
    secret = await register("svc", scopes=("read", "write"), audiences=("https://api.test",))
    return await get_token(client, "svc", secret)


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
async def test_issued_token_verifies(
    client: QuartClient, register: Register, as_json: bool
) -> None:
    """A token from the token endpoint is 200 with exactly its claims, form or JSON body."""
    token = await issue(client, register)
    response = await verify(client, token, as_json=as_json)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    claims = await response.get_json()
    assert claims == unverified(token)[1]
    assert claims["client_id"] == "svc" and claims["aud"] == "https://api.test"


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
async def test_audience_matching(client: QuartClient, register: Register, as_json: bool) -> None:
    """With audience, the token verifies only if its aud contains that audience."""
    token = await issue(client, register)
    matching = await verify(client, token, "https://api.test", as_json=as_json)
    assert matching.status_code == 200
    for other in ("https://other.test", "https://api.test/", ISSUER, f"https://{MARKER}"):
        response = await verify(client, token, other, as_json=as_json)
        await assert_rejected(response, InvalidAudience)


async def test_audience_list_claim(client: QuartClient, keys: Keys) -> None:
    """An aud array matches any of its members and no other value."""
    token = keys.token(good_claims(aud=["https://a.test", "https://b.test"]))
    assert (await verify(client, token)).status_code == 200
    assert (await verify(client, token, "https://b.test")).status_code == 200
    await assert_rejected(await verify(client, token, "https://c.test"), InvalidAudience)


async def test_json_body_with_charset(client: QuartClient, register: Register) -> None:
    """application/json; charset=utf-8 is accepted as JSON."""
    token = await issue(client, register)
    response = await client.post(
        VERIFY_PATH,
        data=json.dumps({"access_token": token}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


async def test_forge_control(client: QuartClient, keys: Keys) -> None:
    """A hand-forged token signed with our real key and good claims is accepted."""
    response = await verify(client, keys.token())
    assert response.status_code == 200
    assert (await response.get_json())["jti"] == f"jti-{MARKER}"


@pytest.mark.parametrize(
    "header",
    [
        {"typ": "application/at+jwt"},
        {"typ": "AT+JWT"},
        {"jku": "http://127.0.0.1:9/jwks.json"},
        {"x5u": "http://127.0.0.1:9/cert.pem"},
        {"cty": "JWT", "x5t": "abc"},
    ],
    ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()),
)
async def test_accepted_header_variants(
    client: QuartClient, keys: Keys, header: dict[str, str]
) -> None:
    """RFC 9068 typ variants are accepted; jku/x5u are ignored, not fetched, on our own token."""
    assert (await verify(client, keys.token(**header))).status_code == 200


async def test_embedded_jwk_of_our_own_key_is_ignored(client: QuartClient, keys: Keys) -> None:
    """A jwk header is never consulted: our own token carrying one still verifies by kid."""
    token = keys.token(jwk=keys.attacker_jwk())
    assert (await verify(client, token)).status_code == 200


async def test_nbf_is_optional(client: QuartClient, keys: Keys) -> None:
    """nbf is not required by RFC 9068 §2.2; a token without it verifies."""
    assert (await verify(client, keys.token(good_claims(nbf=None)))).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": -10}, id="expired-within-leeway"),
        pytest.param({"nbf": 10}, id="nbf-within-leeway"),
        pytest.param({"iat": 10}, id="iat-within-leeway"),
    ],
)
async def test_leeway(client: QuartClient, keys: Keys, claims: dict[str, int]) -> None:
    """Clock skew within the configured leeway (30 s) is tolerated."""
    now = int(time.time())
    changes = {name: now + offset for name, offset in claims.items()}
    if "iat" in changes:
        changes["nbf"] = now
    assert (await verify(client, keys.token(good_claims(**changes)))).status_code == 200


# -- attacks on the signature, the key and the header ------------------------------------

PUBLIC_FORMS: dict[str, Callable[[Keys], bytes]] = {
    "pem-spki": lambda k: k.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "pem-spki-stripped": lambda k: k.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).strip(),
    "pem-pkcs1": lambda k: k.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    ),
    "der-spki": lambda k: k.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "der-pkcs1": lambda k: k.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    ),
    "openssh": lambda k: k.public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ),
    "jwk-json": lambda k: json.dumps(k.jwk).encode(),
    "jwk-json-compact": lambda k: json.dumps(k.jwk, separators=(",", ":")).encode(),
    "jwks-json": lambda k: json.dumps({"keys": [k.jwk]}, separators=(",", ":")).encode(),
    "n-bytes": lambda k: b64url_decode(k.jwk["n"]),
}


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("form", PUBLIC_FORMS.keys())
async def test_hmac_keyed_with_public_key(
    client: QuartClient, keys: Keys, alg: str, form: str
) -> None:
    """HS* signed with our public key in any serialisation is refused (RFC 8725 §2.1)."""
    secret = PUBLIC_FORMS[form](keys)
    token = forge(keys.header(alg=alg), good_claims(), hmac_signer(secret, alg))
    await assert_rejected(await verify(client, token))


def _none(keys: Keys, alg: str = "none", signature: str = "") -> str:
    header = segment(keys.header(alg=alg))
    payload = segment(good_claims())
    return f"{header}.{payload}.{signature}"


def _with_real_signature_under(alg: str) -> Callable[[Keys], str]:
    """Header says ``alg`` but the signature is a valid RS512 one over the same input."""
    return lambda k: forge(k.header(alg=alg), good_claims(), rsa_signer(k.private_key))


def _signed_by_us(alg: str) -> Callable[[Keys], str]:
    """Our own key, but another RSA algorithm than the one the key is published for."""
    return lambda k: forge(k.header(alg=alg), good_claims(), rsa_signer(k.private_key, alg))


def _attacker(**header: Any) -> Callable[[Keys], str]:
    def build(k: Keys) -> str:
        h = k.header(**header)
        for name, value in list(h.items()):
            if value == "<attacker-jwk>":
                h[name] = k.attacker_jwk()
            if value == "<attacker-kid>":
                h[name] = k.attacker_jwk()["kid"]
        return forge(h, good_claims(), rsa_signer(k.attacker))

    return build


def _ours_with_header(**header: Any) -> Callable[[Keys], str]:
    return lambda k: k.token(**header)


def _tamper_payload(k: Keys) -> str:
    return tamper(k.token(), scope="admin", sub="root")


def _tamper_header(k: Keys) -> str:
    _, payload, signature = k.token().split(".")
    return f"{segment(k.header(cty='x'))}.{payload}.{signature}"


def _swap_signature(k: Keys) -> str:
    first = k.token(good_claims(sub="a", client_id="a"))
    second = k.token(good_claims(sub="b", client_id="b"))
    return ".".join(first.split(".")[:2] + second.split(".")[2:])


def _signature_edit(edit: Callable[[str], str]) -> Callable[[Keys], str]:
    def build(k: Keys) -> str:
        header, payload, signature = k.token().split(".")
        return f"{header}.{payload}.{edit(signature)}"

    return build


def _non_canonical(signature: str) -> str:
    """Same decoded bytes, different text: set the unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = (len(signature) * 6) % 8
    last = alphabet.index(signature[-1])
    assert unused_bits and last & ((1 << unused_bits) - 1) == 0
    changed = signature[:-1] + alphabet[last | 1]
    assert b64url_decode(changed) == b64url_decode(signature)
    return changed


def _raw_json_header(text: str) -> Callable[[Keys], str]:
    def build(k: Keys) -> str:
        return forge(text.replace("KID", k.kid), good_claims(), rsa_signer(k.private_key))

    return build


ATTACKS: dict[str, Callable[[Keys], str]] = {
    # alg none and friends
    "alg none, empty signature": lambda k: _none(k),
    "alg none, garbage signature": lambda k: _none(k, signature="AAAA"),
    "alg None": lambda k: _none(k, "None", "AAAA"),
    "alg NONE": lambda k: _none(k, "NONE", "AAAA"),
    "alg none with our valid signature": _with_real_signature_under("none"),
    "alg missing with our valid signature": _ours_with_header(alg=None),
    "alg RS256 header over RS512 signature": _with_real_signature_under("RS256"),
    "alg RS256 signed by our key": _signed_by_us("RS256"),
    "alg PS512 signed by our key": _signed_by_us("PS512"),
    "alg ES256": _with_real_signature_under("ES256"),
    "alg as list": _ours_with_header(alg=["RS512"]),
    # foreign keys
    "attacker key under our kid": _attacker(),
    "attacker key under its own kid": _attacker(kid="<attacker-kid>"),
    "attacker jwk header, attacker kid": _attacker(kid="<attacker-kid>", jwk="<attacker-jwk>"),
    "attacker jwk header, our kid": _attacker(jwk="<attacker-jwk>"),
    "attacker jwk header, no kid": _attacker(kid=None, jwk="<attacker-jwk>"),
    "jku to attacker": _attacker(kid="<attacker-kid>", jku="http://127.0.0.1:9/jwks.json"),
    "jku to attacker, our kid": _attacker(jku="http://127.0.0.1:9/jwks.json"),
    "x5u to attacker": _attacker(kid="<attacker-kid>", x5u="http://127.0.0.1:9/cert.pem"),
    "x5c from attacker": _attacker(kid=None, x5c=["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
    # kid oddities (signed with our real key, so only the kid is wrong)
    "kid missing": _ours_with_header(kid=None),
    "kid empty": _ours_with_header(kid=""),
    "kid integer": _ours_with_header(kid=1),
    "kid null": lambda k: forge(
        {"alg": "RS512", "typ": "at+jwt", "kid": None}, good_claims(), rsa_signer(k.private_key)
    ),
    "kid list": lambda k: k.token(kid=[k.kid]),
    "kid object": lambda k: k.token(kid={"kid": k.kid}),
    "kid 10 KB": _ours_with_header(kid=MARKER * 800),
    "kid path traversal": _ours_with_header(kid="../../etc/passwd"),
    "kid with marker": _ours_with_header(kid=MARKER),
    "kid prefix of ours": lambda k: k.token(kid=k.kid[:-1]),
    "kid with trailing space": lambda k: k.token(kid=k.kid + " "),
    "kid upper-cased": lambda k: k.token(kid=k.kid.upper()),
    "kid with sql": _ours_with_header(kid="' OR '1'='1"),
    # typ
    "typ JWT": _ours_with_header(typ="JWT"),
    "typ jwt": _ours_with_header(typ="jwt"),
    "typ application/jwt": _ours_with_header(typ="application/jwt"),
    "typ empty": _ours_with_header(typ=""),
    "typ with space": _ours_with_header(typ="at+jwt "),
    "typ integer": _ours_with_header(typ=1),
    "typ list": _ours_with_header(typ=["at+jwt"]),
    "typ missing": _ours_with_header(typ=None),
    "typ marker": _ours_with_header(typ=MARKER),
    # crit (RFC 7515 §4.1.11)
    "crit unknown": _ours_with_header(crit=["exp"], exp=0),
    "crit b64": _ours_with_header(crit=["b64"], b64=False),
    "crit empty list": _ours_with_header(crit=[]),
    "crit marker": _ours_with_header(crit=[MARKER], **{MARKER: 1}),
    # tampering
    "tampered payload": _tamper_payload,
    "tampered header": _tamper_header,
    "signature of another token": _swap_signature,
    # encoding of the signature
    "signature padded =": _signature_edit(lambda s: s + "="),
    "signature padded ==": _signature_edit(lambda s: s + "=="),
    "signature truncated by 1": _signature_edit(lambda s: s[:-1]),
    "signature truncated by 4": _signature_edit(lambda s: s[:-4]),
    "signature truncated to 10": _signature_edit(lambda s: s[:10]),
    "signature with leading zero octet": _signature_edit(
        lambda s: b64url_encode(b"\x00" + b64url_decode(s))
    ),
    "signature empty": _signature_edit(lambda s: ""),
    "signature non-canonical base64url": _signature_edit(_non_canonical),
    "signature in standard base64": _signature_edit(
        lambda s: base64.b64encode(b64url_decode(s)).decode().rstrip("=")
    ),
    "header padded": lambda k: "=".join(k.token().split(".", 1)),
    "header padded before dot": lambda k: k.token().replace(".", "=.", 1),
    # shape
    "two segments": lambda k: ".".join(k.token().split(".")[:2]),
    "four segments": lambda k: k.token() + ".AAAA",
    "JWE shape": lambda k: ".".join(["eyJhbGciOiJSU0EtT0FFUCJ9"] + ["AAAA"] * 4),
    "leading space": lambda k: " " + k.token(),
    "newline inside": lambda k: k.token().replace(".", ".\n", 1),
    "non-ASCII": lambda k: k.token() + "é",
    "empty-ish": lambda k: "..",
    "marker": lambda k: MARKER,
    "header is a JSON array": _raw_json_header('["KID"]'),
    "header is not JSON": _raw_json_header("{alg: RS512"),
    "header duplicate alg": _raw_json_header(
        '{"alg":"none","typ":"at+jwt","kid":"KID","alg":"RS512"}'
    ),
    "header duplicate kid": _raw_json_header(
        '{"alg":"RS512","typ":"at+jwt","kid":"nope","kid":"KID"}'
    ),
    "header deeply nested": _raw_json_header(
        '{"alg":"RS512","typ":"at+jwt","kid":"KID","x":' + "[" * 2500 + "]" * 2500 + "}"
    ),
}


@pytest.mark.parametrize("build", ATTACKS.values(), ids=ATTACKS.keys())
async def test_attack_is_rejected(
    client: QuartClient, keys: Keys, build: Callable[[Keys], str]
) -> None:
    """Each forged or malformed token is 400 invalid_token, never 200 nor 500."""
    token = build(keys)
    await assert_rejected(await verify(client, token))
    await assert_rejected(await verify(client, token, as_json=True))


# -- valid signature, bad claims ---------------------------------------------------------


def _claims_case(**changes: Any) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        now = int(time.time())
        values = {
            name: now + value[1] if isinstance(value, tuple) and value[0] == "now" else value
            for name, value in changes.items()
        }
        return good_claims(**values)

    return build


def now_plus(offset: int) -> tuple[str, int]:
    return ("now", offset)


MISSING_CLAIM = "The token lacks a required claim."
TOO_LARGE = "The token is too large."
CLAIM_CASES: dict[str, tuple[Callable[[], dict[str, Any]], Reason]] = {
    "expired": (_claims_case(exp=now_plus(-3600)), ExpiredToken),
    "expired beyond leeway": (_claims_case(exp=now_plus(-45)), ExpiredToken),
    "exp equals iat long ago": (
        _claims_case(iat=now_plus(-7200), nbf=None, exp=now_plus(-7200)),
        ExpiredToken,
    ),
    "nbf in the future": (_claims_case(nbf=now_plus(3600)), ImmatureToken),
    "nbf beyond leeway": (_claims_case(nbf=now_plus(45)), ImmatureToken),
    "iat in the future": (_claims_case(iat=now_plus(3600), exp=now_plus(7200)), None),
    "wrong issuer": (_claims_case(iss="https://evil.test"), InvalidIssuer),
    "issuer with ours as prefix (host)": (_claims_case(iss=ISSUER + ".evil.test"), InvalidIssuer),
    "issuer with ours as prefix (path)": (_claims_case(iss=ISSUER + "/evil"), InvalidIssuer),
    "issuer with trailing slash": (_claims_case(iss=ISSUER + "/"), InvalidIssuer),
    "issuer upper-cased": (_claims_case(iss=ISSUER.upper()), InvalidIssuer),
    "issuer over http": (_claims_case(iss=ISSUER.replace("https", "http")), InvalidIssuer),
    "issuer with marker": (_claims_case(iss=f"https://{MARKER}.test"), InvalidIssuer),
    "issuer as list": (_claims_case(iss=[ISSUER]), InvalidClaims),
    "exp as string": (_claims_case(exp="9999999999"), InvalidClaims),
    "exp as boolean": (_claims_case(exp=True), InvalidClaims),
    # json.dumps writes these as Infinity / NaN, which Python's json reads back.
    "exp Infinity": (_claims_case(exp=float("inf")), InvalidClaims),
    "exp NaN": (_claims_case(exp=float("nan")), InvalidClaims),
    "nbf -Infinity": (_claims_case(nbf=float("-inf")), InvalidClaims),
    "exp of 400 digits": (_claims_case(exp=10**400), InvalidClaims),
    "iat as string": (_claims_case(iat="0"), InvalidClaims),
    "nbf as string": (_claims_case(nbf="0"), InvalidClaims),
    "aud as integer": (_claims_case(aud=5), InvalidClaims),
    "aud list with integer": (_claims_case(aud=[ISSUER, 5]), InvalidClaims),
    "sub as integer": (_claims_case(sub=1), InvalidClaims),
    "client_id as object": (_claims_case(client_id={"id": "svc"}), InvalidClaims),
    "jti as integer": (_claims_case(jti=1), InvalidClaims),
    "scope as list": (_claims_case(scope=["read"]), InvalidClaims),
    **{
        f"missing {name}": (_claims_case(**{name: None}), MISSING_CLAIM) for name in REQUIRED_CLAIMS
    },
}


@pytest.mark.parametrize(("build", "reason"), CLAIM_CASES.values(), ids=CLAIM_CASES.keys())
async def test_bad_claims_with_valid_signature(
    client: QuartClient,
    keys: Keys,
    build: Callable[[], dict[str, Any]],
    reason: Reason,
) -> None:
    """A token correctly signed by our real key is still refused for its claim, and for that
    reason (the claim checks run after the signature check)."""
    token = keys.token(build())
    description = await assert_rejected(await verify(client, token), reason)
    assert description not in (
        MalformedToken.description,
        "The token is signed by an unknown key.",
        "The token signature is invalid.",
    )


@pytest.mark.parametrize(
    "payload",
    [
        '{"iss":"%(iss)s","sub":"svc","client_id":"svc","aud":"%(iss)s","iat":%(now)d,'
        '"exp":%(exp)d,"jti":"j","sub":"root"}',
        '{"iss":"https://evil.test","sub":"svc","client_id":"svc","aud":"%(iss)s",'
        '"iat":%(now)d,"exp":%(exp)d,"jti":"j","iss":"%(iss)s"}',
        '{"iss":"%(iss)s","sub":"svc","client_id":"svc","aud":"%(iss)s","iat":%(now)d,'
        '"exp":1,"jti":"j","exp":%(exp)d}',
    ],
    ids=["sub twice", "iss twice, ours last", "exp twice, valid last"],
)
async def test_duplicate_claim_names(client: QuartClient, keys: Keys, payload: str) -> None:
    """RFC 7519 §4: a payload with a claim name twice is refused, even with ours signed last."""
    now = int(time.time())
    text = payload % {"iss": ISSUER, "now": now, "exp": now + 600}
    token = forge(keys.header(), text, rsa_signer(keys.private_key))
    await assert_rejected(await verify(client, token), MalformedToken)


async def test_payload_must_be_a_json_object(client: QuartClient, keys: Keys) -> None:
    """A signed payload that is a JSON array or not JSON at all is refused."""
    for payload in ('["iss"]', "not json", '"string"', "null"):
        token = forge(keys.header(), payload, rsa_signer(keys.private_key))
        await assert_rejected(await verify(client, token), MalformedToken)


# -- size --------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
async def test_huge_token_is_refused_fast(client: QuartClient, keys: Keys, as_json: bool) -> None:
    """A token just under the body limit is refused quickly for its size, before parsing."""
    real = keys.token()
    header, payload, signature = real.split(".")
    huge = f"{header}.{payload + 'A' * (60_000 - len(real))}.{signature}"
    started = time.perf_counter()
    response = await verify(client, huge, as_json=as_json)
    elapsed = time.perf_counter() - started
    await assert_rejected(response, TOO_LARGE)
    assert elapsed < 1.0


async def test_huge_kid_is_refused(client: QuartClient, keys: Keys) -> None:
    """A 40 KB kid (a size attack in the header) is refused for the token's size."""
    await assert_rejected(await verify(client, keys.token(kid="k" * 40_000)), TOO_LARGE)


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
async def test_one_megabyte_body(client: QuartClient, as_json: bool) -> None:
    """A 1 MB request body is refused with 413 (or 400), never 500, and quickly."""
    token = "A" * 1_000_000
    started = time.perf_counter()
    response = await verify(client, token, as_json=as_json)
    elapsed = time.perf_counter() - started
    assert response.status_code in (400, 413)
    body = await response.get_json()
    assert set(body) == {"error", "error_description"}
    assert elapsed < 1.0


async def test_one_megabyte_token_in_the_core(dealer: Dealer) -> None:
    """The verification core refuses a 1 MB token by its length, in well under a second."""
    token = "eyJ" + "A" * 1_000_000 + ".e30.AAAA"
    started = time.perf_counter()
    with pytest.raises(MalformedToken):
        await dealer.verify(token)
    assert time.perf_counter() - started < 0.1


# -- bad requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"", "application/x-www-form-urlencoded"),
        (b"audience=x", "application/x-www-form-urlencoded"),
        (b"access_token=a&access_token=b", "application/x-www-form-urlencoded"),
        (b"access_token=%FF", "application/x-www-form-urlencoded"),
        (b"access_token=\xff", "application/x-www-form-urlencoded"),
        (b"{}", "application/json"),
        (b'{"access_token": 5}', "application/json"),
        (b'{"access_token": null}', "application/json"),
        (b'{"access_token": ["x"]}', "application/json"),
        (b'{"access_token": "x", "audience": 5}', "application/json"),
        (b'["access_token"]', "application/json"),
        (b"not json " + MARKER.encode(), "application/json"),
        (b'{"access_token": "\xff"}', "application/json"),
        (b"[" * 100_00 + b"]" * 100_00, "application/json"),
        (b"access_token=" + MARKER.encode(), "text/plain"),
        (b"access_token=" + MARKER.encode(), None),
    ],
    ids=[
        "empty form",
        "form without token",
        "token twice",
        "%FF",
        "raw 0xFF",
        "empty JSON object",
        "token as number",
        "token null",
        "token as list",
        "audience as number",
        "JSON array",
        "not JSON",
        "JSON with invalid UTF-8",
        "deeply nested JSON",
        "text/plain",
        "no content type",
    ],
)
async def test_bad_request_body(client: QuartClient, data: bytes, content_type: str | None) -> None:
    """A body that carries no usable access_token is 400 invalid_request, never a 500."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await client.post(VERIFY_PATH, data=data, headers=headers)
    await assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("first_valid", [True, False])
async def test_a_json_member_named_twice_is_refused(
    client: QuartClient, register: Register, first_valid: bool
) -> None:
    """A JSON body that names ``access_token`` twice is 400 invalid_request, whichever of
    the two is the valid token: parsers disagree on which one counts (as with a repeated
    form parameter, RFC 6749 §3.2)."""
    token = await issue(client, register)
    values = [json.dumps(token), json.dumps("x")]
    if not first_valid:
        values.reverse()
    body = f'{{"access_token": {values[0]}, "access_token": {values[1]}}}'
    response = await client.post(
        VERIFY_PATH, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 400, "invalid_request")
    assert "repeated" in (await response.get_json())["error_description"]


async def test_get_is_not_allowed(client: QuartClient) -> None:
    """GET /verify_token is 405 with Allow: POST."""
    response = await client.get(VERIFY_PATH)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
