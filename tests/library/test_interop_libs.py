"""Interop and attacks: dealer tokens verify with independent libraries; TokenVerifier refuses
the attack set of RFC 8725 and RFC 9068 §4.

One real ``tokendealer serve`` process for the module. PyJWT's ``PyJWKClient``, joserfc and
jwcrypto verify its tokens from its published JWKS (with ``typ``, ``iss``, ``aud`` checked).
The attack tokens are built by hand (PyJWT refuses to make most of them); the ones that
need a valid signature are signed with the dealer's own key, read from its keys directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import KeySet as JoserfcKeySet
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from tests.support.issuer import KEYS
from tests.support.servers import ServerProcess, run_server
from tests.support.tokens import b64url_decode, b64url_encode, segment, tamper
from tokendealer.library.client import TokenClient
from tokendealer.library.jwk import public_jwk, thumbprint
from tokendealer.library.verify import (
    ExpiredToken,
    ImmatureToken,
    InvalidAudience,
    InvalidIssuer,
    InvalidSignature,
    InvalidToken,
    MalformedToken,
    TokenVerifier,
    UnknownKey,
)

pytestmark = pytest.mark.e2e

AUDIENCE = "orders-api"
ATTACKER = KEYS[2]
_RSA_HASHES = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}
_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    """A compact JWS over any header, RSA or HMAC by the header's alg, none unsigned."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    alg = header.get("alg")
    if alg in _RSA_HASHES:
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), _RSA_HASHES[alg]())
    elif alg in _HMAC_HASHES:
        signature = hmac.new(key, signing_input.encode(), _HMAC_HASHES[alg]).digest()
    else:
        signature = b""
    return f"{signing_input}.{b64url_encode(signature)}"


@dataclass
class Dealer:
    server: ServerProcess
    key: rsa.RSAPrivateKey
    kid: str
    jwks: dict[str, Any]
    token: str

    @property
    def issuer(self) -> str:
        return self.server.url

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "worker",
            "client_id": "worker",
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "attack",
            "scope": "read",
        }
        claims.update(overrides)
        return claims

    def header(self, **overrides: Any) -> dict[str, Any]:
        header = {"alg": "RS512", "typ": "at+jwt", "kid": self.kid}
        header.update(overrides)
        return {k: v for k, v in header.items() if v is not None}

    def signed(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """Signed with the dealer's real key: only the named difference is wrong."""
        return sign(header or self.header(), self.claims(**claims), self.key)


@pytest.fixture(name="dealer", scope="module")
def _dealer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dealer]:
    workdir = tmp_path_factory.mktemp("dealer")
    with run_server(workdir) as server:
        secret = server.add_client("worker", "--scope", "read", "--audience", AUDIENCE)
        token = server.token("worker", secret)
        jwks = httpx.get(server.url + "/.well-known/jwks.json").json()
        kid = jwt.get_unverified_header(token)["kid"]
        pem = (workdir / "keys" / f"{kid}.pem").read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        yield Dealer(server, key, kid, jwks, token)


class Recorder:
    """Records every URL the verifier fetches."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        self.urls.append(str(request.url))


@pytest.fixture(name="recorder", scope="module")
def _recorder() -> Recorder:
    return Recorder()


@pytest.fixture(name="verifier", scope="module")
def _verifier(dealer: Dealer, recorder: Recorder) -> Iterator[TokenVerifier]:
    with httpx.Client(event_hooks={"request": [recorder]}, timeout=5) as http:
        yield TokenVerifier(dealer.issuer, AUDIENCE, sync_http_client=http)


# -- independent libraries verify the dealer's tokens ----------------------------------------------


def test_pyjwt_pyjwkclient_verifies(dealer: Dealer) -> None:
    """PyJWT's PyJWKClient, fetching the real JWKS, verifies a dealer token."""
    client = jwt.PyJWKClient(dealer.issuer + "/.well-known/jwks.json", cache_keys=True)
    key = client.get_signing_key_from_jwt(dealer.token)
    claims = jwt.decode(
        dealer.token,
        key.key,
        algorithms=["RS512"],
        audience=AUDIENCE,
        issuer=dealer.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    assert claims["client_id"] == "worker"
    assert jwt.get_unverified_header(dealer.token)["typ"] == "at+jwt"


def test_joserfc_verifies(dealer: Dealer) -> None:
    """joserfc verifies a dealer token from the JWKS and validates iss, aud and exp."""
    keyset = JoserfcKeySet.import_key_set(dealer.jwks)
    token = joserfc_jwt.decode(dealer.token, keyset, algorithms=["RS512"])
    assert token.header["typ"] == "at+jwt"
    joserfc_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": dealer.issuer},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        client_id={"essential": True, "value": "worker"},
    ).validate(token.claims)


def test_jwcrypto_verifies(dealer: Dealer) -> None:
    """jwcrypto verifies a dealer token from the JWKS and checks iss, aud and exp."""
    keyset = jwcrypto_jwk.JWKSet.from_json(json.dumps(dealer.jwks))
    verified = jwcrypto_jwt.JWT(
        jwt=dealer.token,
        key=keyset,
        algs=["RS512"],
        check_claims={"iss": dealer.issuer, "aud": AUDIENCE, "exp": None},
        expected_type="JWS",
    )
    assert json.loads(verified.header)["typ"] == "at+jwt"
    assert json.loads(verified.claims)["sub"] == "worker"


def test_token_verifier_verifies(dealer: Dealer, verifier: TokenVerifier) -> None:
    """TokenVerifier discovers the JWKS from the dealer's metadata and verifies its token."""
    assert verifier.verify_sync(dealer.token, scopes=["read"])["client_id"] == "worker"
    # The hand-made signer is right: a token it signs with the real key verifies too.
    assert verifier.verify_sync(dealer.signed())["jti"] == "attack"


def test_one_verifier_serves_several_event_loops_and_threads(dealer: Dealer) -> None:
    """A verifier with its own HTTP clients works across asyncio.run calls and verify_sync."""
    verifier = TokenVerifier(dealer.issuer, AUDIENCE, refetch_cooldown=0)

    async def burst(token: str) -> list[dict[str, Any]]:
        return await asyncio.gather(*(verifier.verify(token) for _ in range(10)))

    assert len(asyncio.run(burst(dealer.token))) == 10
    # A second loop: the cached keys are reused, an unknown kid makes a fresh fetch work.
    with pytest.raises(UnknownKey):
        asyncio.run(burst(dealer.signed(dealer.header(kid="rotated"))))
    assert verifier.verify_sync(dealer.token)["sub"] == "worker"
    assert verifier.fetches == 2


def test_one_token_client_serves_several_event_loops(dealer: Dealer) -> None:
    """A TokenClient with its own HTTP clients works across asyncio.run calls and threads."""
    secret = dealer.server.add_client("looper", "--audience", AUDIENCE)
    tokens = TokenClient(dealer.issuer + "/oauth/token", "looper", secret, audience=AUDIENCE)

    async def burst(force: bool) -> set[str]:
        return set(await asyncio.gather(*(tokens.get_token(force=force) for _ in range(10))))

    first = asyncio.run(burst(force=False))
    second = asyncio.run(burst(force=True))
    assert len(first) == len(second) == 1 and first != second
    assert tokens.get_token_sync() in second
    assert tokens.fetches == 2


# -- the attack set --------------------------------------------------------------------------------


def _public_key_forms(dealer: Dealer) -> dict[str, bytes]:
    public = dealer.key.public_key()
    return {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "pkcs1": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "ssh": public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
        "jwk": json.dumps(dealer.jwks["keys"][0]).encode(),
    }


def _attacker_jwk() -> dict[str, Any]:
    return public_jwk(ATTACKER.public_key(), "RS512", thumbprint(ATTACKER.public_key()))


def _resign_bytes(token: str, change: Callable[[bytes], bytes]) -> str:
    """The token with its decoded signature changed, re-encoded canonically."""
    head, _, signature = token.rpartition(".")
    return f"{head}.{b64url_encode(change(b64url_decode(signature)))}"


Attack = Callable[[Dealer], str]
ATTACKS: list[tuple[str, Attack, type[InvalidToken]]] = [
    ("none", lambda d: sign(d.header(alg="none"), d.claims(), None), MalformedToken),
    (
        "none-with-signature",
        lambda d: sign(d.header(alg="none"), d.claims(), None) + "AAAA",
        InvalidSignature,
    ),
    *(
        (
            f"{alg}-keyed-with-public-{form}",
            (
                lambda d, alg=alg, form=form: sign(
                    d.header(alg=alg), d.claims(), _public_key_forms(d)[form]
                )
            ),
            InvalidSignature,
        )
        for alg in ("HS256", "HS384", "HS512")
        for form in ("pem", "pkcs1", "der", "ssh", "jwk")
    ),
    ("RS256-with-our-RS512-key", lambda d: d.signed(d.header(alg="RS256")), InvalidSignature),
    (
        "foreign-key-under-our-kid",
        lambda d: sign(d.header(), d.claims(), ATTACKER),
        InvalidSignature,
    ),
    ("kid-empty", lambda d: d.signed(d.header(kid="")), UnknownKey),
    ("kid-integer", lambda d: d.signed(d.header(kid=123)), UnknownKey),
    ("kid-missing", lambda d: d.signed(d.header(kid=None)), UnknownKey),
    ("kid-list", lambda d: d.signed(d.header(kid=[d.kid])), UnknownKey),
    ("kid-10kb", lambda d: d.signed(d.header(kid="k" * 10240)), MalformedToken),
    ("kid-path", lambda d: d.signed(d.header(kid=f"../keys/{d.kid}.pem")), UnknownKey),
    ("kid-path-absolute", lambda d: d.signed(d.header(kid="/dev/null")), UnknownKey),
    (
        "embedded-jwk",
        lambda d: sign(
            d.header(kid=_attacker_jwk()["kid"], jwk=_attacker_jwk()), d.claims(), ATTACKER
        ),
        UnknownKey,
    ),
    (
        "embedded-jwk-under-our-kid",
        lambda d: sign(d.header(jwk=_attacker_jwk()), d.claims(), ATTACKER),
        InvalidSignature,
    ),
    (
        "jku",
        lambda d: sign(
            d.header(kid=_attacker_jwk()["kid"], jku="http://127.0.0.1:9/jwks.json"),
            d.claims(),
            ATTACKER,
        ),
        UnknownKey,
    ),
    (
        "x5u",
        lambda d: sign(
            d.header(kid=_attacker_jwk()["kid"], x5u="http://127.0.0.1:9/cert.pem"),
            d.claims(),
            ATTACKER,
        ),
        UnknownKey,
    ),
    ("tampered-payload", lambda d: tamper(d.token), InvalidSignature),
    ("expired", lambda d: d.signed(exp=int(time.time()) - 3600), ExpiredToken),
    ("not-yet-valid", lambda d: d.signed(nbf=int(time.time()) + 3600), ImmatureToken),
    ("issued-in-future", lambda d: d.signed(iat=int(time.time()) + 3600), ImmatureToken),
    ("wrong-issuer", lambda d: d.signed(iss="https://evil.test"), InvalidIssuer),
    ("issuer-prefix", lambda d: d.signed(iss=d.issuer[:-1]), InvalidIssuer),
    ("issuer-extended", lambda d: d.signed(iss=d.issuer + "0"), InvalidIssuer),
    ("issuer-trailing-slash", lambda d: d.signed(iss=d.issuer + "/"), InvalidIssuer),
    ("wrong-audience", lambda d: d.signed(aud="billing-api"), InvalidAudience),
    ("audience-list-without-ours", lambda d: d.signed(aud=["a", "b"]), InvalidAudience),
    ("audience-prefix", lambda d: d.signed(aud=AUDIENCE[:-1]), InvalidAudience),
    ("typ-JWT", lambda d: d.signed(d.header(typ="JWT")), MalformedToken),
    ("typ-missing", lambda d: d.signed(d.header(typ=None)), MalformedToken),
    ("typ-application-jwt", lambda d: d.signed(d.header(typ="application/jwt")), MalformedToken),
    (
        "crit-unknown",
        lambda d: d.signed(d.header(crit=["x-custom"], **{"x-custom": 1})),
        MalformedToken,
    ),
    ("crit-empty", lambda d: d.signed(d.header(crit=[])), MalformedToken),
    ("signature-padded", lambda d: d.token + "=", MalformedToken),
    ("signature-double-padded", lambda d: d.token + "==", MalformedToken),
    ("signature-truncated-char", lambda d: d.token[:-1], MalformedToken),
    (
        "signature-truncated-byte",
        lambda d: _resign_bytes(d.token, lambda s: s[:-1]),
        InvalidSignature,
    ),
    (
        "signature-extra-byte",
        lambda d: _resign_bytes(d.token, lambda s: s + b"\0"),
        InvalidSignature,
    ),
    ("signature-extended", lambda d: d.token + "AAAA", InvalidSignature),
    ("signature-empty", lambda d: d.token.rsplit(".", 1)[0] + ".", MalformedToken),
    ("1mb-token", lambda d: d.token + "A" * (1024 * 1024), MalformedToken),
    ("four-segments", lambda d: d.token + ".AAAA", MalformedToken),
]


@pytest.mark.parametrize(("name", "attack", "expected"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_token_verifier_rejects_attack(
    dealer: Dealer,
    verifier: TokenVerifier,
    recorder: Recorder,
    name: str,
    attack: Attack,
    expected: type[InvalidToken],
) -> None:
    """Each attack token is refused with the expected InvalidToken; no URL from it is fetched."""
    token = attack(dealer)
    started = time.perf_counter()
    with pytest.raises(expected):
        verifier.verify_sync(token)
    assert time.perf_counter() - started < 0.5
    assert all(url.startswith(dealer.issuer) for url in recorder.urls)


def test_attack_set_causes_no_refetch_storm(dealer: Dealer) -> None:
    """The whole attack set, twice, costs a fresh verifier at most one extra JWKS fetch."""
    recorder = Recorder()
    with httpx.Client(event_hooks={"request": [recorder]}, timeout=5) as http:
        verifier = TokenVerifier(dealer.issuer, AUDIENCE, sync_http_client=http)
        verifier.verify_sync(dealer.token)
        for _ in range(2):
            for _, attack, _ in ATTACKS:
                with pytest.raises(InvalidToken):
                    verifier.verify_sync(attack(dealer))
    jwks_fetches = [url for url in recorder.urls if url.endswith("/jwks.json")]
    assert len(jwks_fetches) == 2
    assert all(url.startswith(dealer.issuer) for url in recorder.urls)
