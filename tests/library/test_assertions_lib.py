"""tokendealer.library.assertions and TokenClient's private_key_jwt (RFC 7523 §2.2, §3).

The assertions are verified with PyJWT and, independently, with joserfc, against the
public key; the requests TokenClient sends go to a fake token endpoint on an
``httpx.MockTransport``, as in ``test_client_lib``, and one test gets a real token from
the dealer's app (skipped while the dealer does not accept ``private_key_jwt``). Keys are
generated once per module.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from quart import Quart

from tests.support.apps import add_client
from tests.support.environment import ISSUER, QuartClient
from tokendealer.library.assertions import (
    ASSERTION_LIFETIME,
    ASSERTION_TYPE,
    ClientAssertionSigner,
)
from tokendealer.library.client import TokenAuth, TokenClient
from tokendealer.service import authentication
from tokendealer.service.dealer import Dealer

TOKEN_URL = ISSUER + "/oauth/token"
CLIENT_ID = "worker"
NOW = 1_750_000_000

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    p256: ec.EllipticCurvePrivateKey
    p384: ec.EllipticCurvePrivateKey
    ed25519: ed25519.Ed25519PrivateKey


@pytest.fixture(name="keys", scope="module")
def _keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        p256=ec.generate_private_key(ec.SECP256R1()),
        p384=ec.generate_private_key(ec.SECP384R1()),
        ed25519=ed25519.Ed25519PrivateKey.generate(),
    )


def _pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return pem


def _public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_jwk(key: PrivateKey, **members: str) -> dict[str, Any]:
    writer: Callable[..., Any]
    if isinstance(key, rsa.RSAPrivateKey):
        writer = RSAAlgorithm.to_jwk
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        writer = ECAlgorithm.to_jwk
    else:
        writer = OKPAlgorithm.to_jwk
    jwk: dict[str, Any] = writer(key, as_dict=True)
    return {**jwk, **members}


def _decode(assertion: str, key: PrivateKey, alg: str, audience: str = ISSUER) -> dict[str, Any]:
    """The claims, after PyJWT checked signature, alg, aud, iss, exp and the required claims."""
    claims: dict[str, Any] = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=[alg],
        audience=audience,
        issuer=CLIENT_ID,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"], "verify_iat": False},
        leeway=10**10,  # signed at NOW, a fixed past instant
    )
    return claims


# -- the signer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "given", "alg"),
    [
        ("rsa", lambda k: _pem(k).decode(), "RS256"),
        ("rsa", lambda k: _pem(k), "RS256"),
        ("p256", _private_jwk, "ES256"),
        ("p384", lambda k: k, "ES384"),
        ("ed25519", _pem, "EdDSA"),
    ],
    ids=["rsa-pem-str", "rsa-pem-bytes", "p256-jwk", "p384-key-object", "ed25519-pem"],
)
def test_assertion_claims_and_header(
    keys: Keys, name: str, given: Callable[[Any], Any], alg: str
) -> None:
    """Each key type signs with its algorithm: the header and the RFC 7523 §3 claims."""
    key = getattr(keys, name)
    signer = ClientAssertionSigner(CLIENT_ID, given(key), kid="k1", audience=ISSUER)
    assertion = signer.sign(now=NOW)
    assert jwt.get_unverified_header(assertion) == {"alg": alg, "typ": "JWT", "kid": "k1"}
    claims = _decode(assertion, key, alg)
    assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "jti"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == ISSUER
    assert claims["iat"] == NOW and claims["exp"] == NOW + ASSERTION_LIFETIME == NOW + 60
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 22


# joserfc warns that RFC 9864 deprecates "EdDSA" for "Ed25519"; the dealer accepts EdDSA.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
@pytest.mark.parametrize(
    ("name", "alg", "importer"),
    [
        ("rsa", "PS256", RSAKey.import_key),
        ("p256", "ES256", ECKey.import_key),
        ("ed25519", "EdDSA", OKPKey.import_key),
    ],
)
def test_assertions_verify_with_joserfc(
    keys: Keys, name: str, alg: str, importer: Callable[[bytes], Any]
) -> None:
    """Another JOSE implementation verifies the signature (PS256's salt, ES256's raw r||s)."""
    key = getattr(keys, name)
    signer = ClientAssertionSigner(CLIENT_ID, key, alg=alg, audience=TOKEN_URL)
    token = jose_jwt.decode(signer.sign(), importer(_public_pem(key)), algorithms=[alg])
    assert token.header == {"alg": alg, "typ": "JWT"}
    assert token.claims["aud"] == TOKEN_URL and token.claims["sub"] == CLIENT_ID


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_every_rsa_algorithm_signs(keys: Keys, alg: str) -> None:
    """An RSA key signs with any of the dealer's six RSA algorithms."""
    signer = ClientAssertionSigner(CLIENT_ID, keys.rsa, alg=alg, audience=ISSUER)
    assert _decode(signer.sign(now=NOW), keys.rsa, alg)["sub"] == CLIENT_ID


def test_each_assertion_has_a_fresh_jti(keys: Keys) -> None:
    """Signed at the same instant, no two assertions share a jti."""
    signer = ClientAssertionSigner(CLIENT_ID, keys.p256, audience=ISSUER)
    jtis = {_decode(signer.sign(now=NOW), keys.p256, "ES256")["jti"] for _ in range(50)}
    assert len(jtis) == 50


def test_default_time_is_now(keys: Keys) -> None:
    """Without ``now`` the assertion is issued now and lives 60 s."""
    signer = ClientAssertionSigner(CLIENT_ID, keys.ed25519, audience=ISSUER)
    before = int(time.time())
    claims = jwt.decode(signer.sign(), keys.ed25519.public_key(), ["EdDSA"], audience=ISSUER)
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] == 60


def test_jwk_as_dict_or_json_text(keys: Keys) -> None:
    """A JWK's kid and alg are used unless a kid is given; dict and JSON text are alike."""
    jwk = _private_jwk(keys.p256, kid="from-jwk", alg="ES256")
    for given in (jwk, json.dumps(jwk), json.dumps(jwk).encode()):
        signer = ClientAssertionSigner(CLIENT_ID, given, audience=ISSUER)
        assert (signer.alg, signer.kid) == ("ES256", "from-jwk")
        assertion = signer.sign(now=NOW)
        assert jwt.get_unverified_header(assertion)["kid"] == "from-jwk"
        assert _decode(assertion, keys.p256, "ES256")["iss"] == CLIENT_ID
    override = ClientAssertionSigner(CLIENT_ID, jwk, kid="mine", audience=ISSUER)
    assert jwt.get_unverified_header(override.sign())["kid"] == "mine"
    plain = ClientAssertionSigner(CLIENT_ID, _private_jwk(keys.p256), audience=ISSUER)
    assert "kid" not in jwt.get_unverified_header(plain.sign())
    # An RSA JWK's alg picks among the six RSA algorithms.
    rsa_jwk = _private_jwk(keys.rsa, kid="rsa-1", alg="PS384")
    signer = ClientAssertionSigner(CLIENT_ID, rsa_jwk, audience=ISSUER)
    assert _decode(signer.sign(now=NOW), keys.rsa, "PS384")["sub"] == CLIENT_ID


def test_encrypted_pem_needs_its_password(keys: Keys) -> None:
    """An encrypted PEM is read with its password; without it or with another, refused."""
    pem = _pem(keys.p384, password=b"pass phrase")
    signer = ClientAssertionSigner(CLIENT_ID, pem, audience=ISSUER, password="pass phrase")
    assert _decode(signer.sign(now=NOW), keys.p384, "ES384")["aud"] == ISSUER
    for password in (None, "wrong"):
        with pytest.raises(ValueError, match="private key"):
            ClientAssertionSigner(CLIENT_ID, pem, audience=ISSUER, password=password)


@pytest.mark.parametrize(
    ("name", "alg"),
    [
        ("rsa", "ES256"),
        ("rsa", "EdDSA"),
        ("p256", "RS256"),
        ("p256", "PS256"),
        ("p256", "ES384"),
        ("p384", "ES256"),
        ("ed25519", "ES256"),
        ("ed25519", "RS256"),
    ],
)
def test_mismatched_algorithm_is_refused(keys: Keys, name: str, alg: str) -> None:
    """An algorithm of another key type or curve is refused when the signer is made."""
    with pytest.raises(ValueError, match="does not fit the key"):
        ClientAssertionSigner(CLIENT_ID, getattr(keys, name), alg=alg, audience=ISSUER)


@pytest.mark.parametrize(
    ("alg", "message"),
    [
        ("none", "'none' is refused"),
        ("None", "'none' is refused"),
        ("HS256", "shared-secret"),
        ("HS512", "shared-secret"),
        ("ES512", "unsupported alg"),
        ("RS1", "unsupported alg"),
    ],
)
def test_none_hmac_and_unknown_algorithms_are_refused(keys: Keys, alg: str, message: str) -> None:
    """``none`` and HS* never sign an assertion, whatever the key."""
    for key in (keys.rsa, keys.p256):
        with pytest.raises(ValueError, match=message):
            ClientAssertionSigner(CLIENT_ID, key, alg=alg, audience=ISSUER)


def test_jwk_alg_must_fit(keys: Keys) -> None:
    """A JWK's alg of another family, or an explicit alg differing from it, is refused."""
    with pytest.raises(ValueError, match="does not fit the key"):
        ClientAssertionSigner(CLIENT_ID, _private_jwk(keys.p256, alg="RS256"), audience=ISSUER)
    with pytest.raises(ValueError, match="differs from the JWK's alg"):
        ClientAssertionSigner(
            CLIENT_ID, _private_jwk(keys.rsa, alg="RS256"), alg="PS256", audience=ISSUER
        )
    with pytest.raises(ValueError, match="shared-secret"):
        ClientAssertionSigner(CLIENT_ID, _private_jwk(keys.rsa, alg="HS256"), audience=ISSUER)


def _refused_keys() -> list[tuple[str, Callable[[Keys], Any], str]]:
    def public_jwk(keys: Keys) -> dict[str, Any]:
        jwk = _private_jwk(keys.p256)
        del jwk["d"]
        return jwk

    return [
        ("public-pem", lambda k: _public_pem(k.rsa), "not a readable PEM private key"),
        ("public-jwk", public_jwk, "public key"),
        ("public-key-object", lambda k: k.p256.public_key(), "public key"),
        ("oct-jwk", lambda k: {"kty": "oct", "k": "c2VjcmV0"}, "shared secret"),
        ("jwk-set", lambda k: {"keys": [_private_jwk(k.p256)]}, "JWK Set"),
        ("jwk-enc", lambda k: _private_jwk(k.p256, use="enc"), "'use'"),
        ("jwk-key-ops", lambda k: {**_private_jwk(k.p256), "key_ops": ["verify"]}, "key_ops"),
        ("jwk-bad-d", lambda k: {**_private_jwk(k.p256), "d": "AAAA"}, "cannot be read"),
        ("json-list", lambda k: "[1, 2]", "not a JWK"),
        ("broken-json", lambda k: "{not json", "not valid JSON"),
        ("garbage", lambda k: "hello", "not a readable PEM private key"),
        # The weak key the signer must refuse.
        ("rsa-1024", lambda k: rsa.generate_private_key(65537, 1024), "at least 2048"),  # noqa: S505
        ("p521", lambda k: ec.generate_private_key(ec.SECP521R1()), "unsupported EC curve"),
        ("secp256k1", lambda k: ec.generate_private_key(ec.SECP256K1()), "unsupported EC"),
        ("ed448", lambda k: _pem(ed448.Ed448PrivateKey.generate()), "unsupported key"),
        ("hmac-secret", lambda k: 12345, "unsupported key"),
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [(make, message) for _, make, message in _refused_keys()],
    ids=[name for name, _, _ in _refused_keys()],
)
def test_unusable_keys_are_refused(keys: Keys, make: Callable[[Keys], Any], message: str) -> None:
    """Public keys, secrets, key sets, weak or foreign keys: a ValueError saying why."""
    with pytest.raises(ValueError, match=message):
        ClientAssertionSigner(CLIENT_ID, make(keys), audience=ISSUER)


def test_repr_and_errors_never_show_the_key(keys: Keys) -> None:
    """Neither the signer's repr nor a refusal quotes the key."""
    jwk = _private_jwk(keys.p256)
    signer = ClientAssertionSigner(CLIENT_ID, jwk, audience=ISSUER)
    assert jwk["d"] not in repr(signer) and "ES256" in repr(signer)
    with pytest.raises(ValueError) as excinfo:
        ClientAssertionSigner(CLIENT_ID, {**jwk, "use": "enc"}, audience=ISSUER)
    assert jwk["d"] not in str(excinfo.value)


# -- TokenClient with a private key --------------------------------------------------------


@dataclass
class FakeDealer:
    """A token endpoint on a MockTransport that records the requests and numbers tokens."""

    requests: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(
            200,
            json={
                "access_token": f"tok-{len(self.requests)}",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )

    def forms(self) -> list[dict[str, list[str]]]:
        return [parse_qs(request.content.decode()) for request in self.requests]


@pytest.fixture(name="fake")
def _fake() -> FakeDealer:
    return FakeDealer()


def _client(fake: FakeDealer, private_key: Any, **kwargs: Any) -> TokenClient:
    return TokenClient(
        TOKEN_URL,
        CLIENT_ID,
        private_key=private_key,
        audience="orders-api",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)),
        sync_http_client=httpx.Client(transport=httpx.MockTransport(fake.handler)),
        **kwargs,
    )


async def _close(tokens: TokenClient) -> None:
    assert tokens._http is not None and tokens._sync_http is not None
    await tokens._http.aclose()
    tokens._sync_http.close()


async def test_token_request_carries_a_fresh_assertion(keys: Keys, fake: FakeDealer) -> None:
    """RFC 7523 §2.2 in the form body, no Authorization header, a new assertion each time."""
    tokens = _client(fake, _pem(keys.rsa).decode(), kid="worker-1", issuer=ISSUER)
    try:
        assert await tokens.get_token() == "tok-1"
        assert tokens.get_token_sync(force=True) == "tok-2"
    finally:
        await _close(tokens)
    assertions = []
    for request, form in zip(fake.requests, fake.forms(), strict=True):
        assert request.method == "POST" and str(request.url) == TOKEN_URL
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert "authorization" not in request.headers
        assert set(form) == {
            "grant_type",
            "audience",
            "client_id",
            "client_assertion_type",
            "client_assertion",
        }
        assert form["grant_type"] == ["client_credentials"]
        assert form["client_id"] == [CLIENT_ID] and form["audience"] == ["orders-api"]
        assert form["client_assertion_type"] == [ASSERTION_TYPE]
        (assertion,) = form["client_assertion"]
        assert jwt.get_unverified_header(assertion) == {
            "alg": "RS256",
            "typ": "JWT",
            "kid": "worker-1",
        }
        claims = jwt.decode(assertion, keys.rsa.public_key(), ["RS256"], audience=ISSUER)
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["exp"] - claims["iat"] == 60
        assertions.append(claims)
    assert assertions[0]["jti"] != assertions[1]["jti"]
    assert "client_secret" not in fake.forms()[0]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, TOKEN_URL),
        ({"issuer": ISSUER}, ISSUER),
        ({"issuer": ISSUER, "assertion_audience": "https://other.test"}, "https://other.test"),
        ({"assertion_audience": TOKEN_URL}, TOKEN_URL),
    ],
)
def test_assertion_audience(
    keys: Keys, fake: FakeDealer, kwargs: dict[str, str], expected: str
) -> None:
    """aud: the explicit override, else the issuer when known, else the token endpoint URL."""
    tokens = _client(fake, _private_jwk(keys.p256, kid="ec-1"), **kwargs)
    try:
        assert tokens.assertion_audience == expected
        tokens.get_token_sync()
    finally:
        asyncio.run(_close(tokens))
    (assertion,) = fake.forms()[0]["client_assertion"]
    claims = jwt.decode(assertion, keys.p256.public_key(), ["ES256"], audience=expected)
    assert jwt.get_unverified_header(assertion)["kid"] == "ec-1"
    assert claims["aud"] == expected


async def test_token_auth_refetch_signs_a_new_assertion(keys: Keys, fake: FakeDealer) -> None:
    """TokenAuth over a private-key client: a 401 refetch authenticates with a new jti."""

    def target(request: httpx.Request) -> httpx.Response:
        accepted = request.headers.get("authorization") == "Bearer tok-2"
        return httpx.Response(201 if accepted else 401)

    tokens = _client(fake, _pem(keys.ed25519), kid="ed-1")
    try:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(target), auth=TokenAuth(tokens)
        ) as http:
            response = await http.post("https://data.test/items", json={"n": 1})
    finally:
        await _close(tokens)
    assert response.status_code == 201
    jtis = [
        jwt.decode(
            form["client_assertion"][0],
            keys.ed25519.public_key(),
            ["EdDSA"],
            audience=TOKEN_URL,
        )["jti"]
        for form in fake.forms()
    ]
    assert len(jtis) == 2 and jtis[0] != jtis[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"client_secret": "s3cret", "private_key": "KEY"}, "not both"),
        ({}, "client_secret or a private_key is required"),
        ({"client_secret": "s3cret", "auth_method": "private_key_jwt"}, "needs private_key"),
        ({"private_key": "KEY", "auth_method": "client_secret_post"}, "private_key_jwt"),
        ({"client_secret": "s3cret", "kid": "k1"}, "kid: only with private_key"),
        ({"client_secret": "s3cret", "alg": "RS256"}, "alg: only with private_key"),
        ({"private_key": "KEY", "auth_method": "tls_client_auth"}, "auth_method must be"),
    ],
)
def test_credentials_are_one_secret_or_one_key(
    keys: Keys, kwargs: dict[str, str], message: str
) -> None:
    """A secret and a key together, neither, or options of the other method: ValueError."""
    if kwargs.get("private_key") == "KEY":
        kwargs = {**kwargs, "private_key": _pem(keys.p256).decode()}
    with pytest.raises(ValueError, match=message):
        TokenClient(TOKEN_URL, CLIENT_ID, **kwargs)  # type: ignore[arg-type]


def test_secret_clients_are_unchanged() -> None:
    """The positional secret still means client_secret_basic; no assertion audience."""
    tokens = TokenClient(TOKEN_URL, CLIENT_ID, "s3cret", issuer=ISSUER)
    assert tokens.auth_method == "client_secret_basic" and tokens.assertion_audience is None


def test_private_key_client_repr_never_shows_the_key(keys: Keys) -> None:
    """The key (here a JWK's d) appears in no repr."""
    jwk = _private_jwk(keys.p256)
    tokens = TokenClient(TOKEN_URL, CLIENT_ID, private_key=jwk)
    assert tokens.auth_method == "private_key_jwt"
    assert jwk["d"] not in repr(tokens) and jwk["d"] not in repr(tokens._signer)


# -- against the dealer ----------------------------------------------------------------------


async def test_token_from_the_dealer_with_a_private_key(
    keys: Keys, app: Quart, client: QuartClient, dealer: Dealer
) -> None:
    """End to end: a client registered with its public JWK gets a token by private_key_jwt."""
    if "private_key_jwt" not in getattr(authentication, "METHOD_NAMES", ()):
        pytest.skip("the dealer does not accept private_key_jwt yet")
    public = {**RSAAlgorithm.to_jwk(keys.rsa.public_key(), as_dict=True), "kid": "worker-1"}
    await add_client(
        dealer,
        CLIENT_ID,
        auth_method="private_key_jwt",
        jwks=json.dumps({"keys": [public]}),
        scopes=("write",),
        audiences=("orders-api",),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http:
        for issuer in (ISSUER, None):  # aud: the issuer, then the token endpoint URL
            tokens = TokenClient(
                ISSUER + "/oauth/token",
                CLIENT_ID,
                private_key=_pem(keys.rsa),
                kid="worker-1",
                issuer=issuer,
                audience="orders-api",
                scope="write",
                http_client=http,
            )
            token = await tokens.get_token()
            assert await tokens.get_token(force=True) != token  # a second, fresh jti
            response = await client.post("/verify_token", form={"access_token": token})
            assert response.status_code == 200
            claims = await response.get_json()
            assert claims["client_id"] == CLIENT_ID and claims["aud"] == "orders-api"
