"""private_key_jwt (RFC 7523 §2.2, RFC 7521 §4.2): clients that sign an assertion with
their own private key instead of sending a secret, at every endpoint where clients
authenticate; and every assertion attack answered with the one ``invalid_client``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import warnings
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.warnings import InsecureKeyLengthWarning

from tests.support.apps import add_client, running
from tests.support.environment import ISSUER, QuartClient
from tests.support.keyserver import KeyServer, public_jwk
from tests.support.keyserver import key_set as jwks
from tests.support.tokens import basic, unverified
from tokendealer.protocol.assertions import ASSERTION_TYPE
from tokendealer.protocol.clients import PRIVATE_KEY_JWT
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings

TOKEN_URL = ISSUER + "/oauth/token"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def assertion(
    client_id: str = "svc",
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "k1",
    **claims: Any,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    headers = {"kid": kid} if kid else None
    if alg == "Ed25519":
        return ed25519_signed(body, key, headers or {})
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def ed25519_signed(claims: dict[str, Any], key: Any, header: dict[str, Any]) -> str:
    """A JWS with RFC 9864's ``Ed25519`` alg, which oauth4webapi (openid-client) sends
    and PyJWT cannot make: signed by hand."""
    parts = [
        jwt.utils.base64url_encode(json.dumps(part).encode())
        for part in ({"alg": "Ed25519", **header}, claims)
    ]
    signing_input = b".".join(parts)
    return (signing_input + b"." + jwt.utils.base64url_encode(key.sign(signing_input))).decode()


def form(signed: str, client_id: str | None = "svc", **extra: str) -> dict[str, str]:
    fields = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
        **extra,
    }
    if client_id is not None:
        fields["client_id"] = client_id
    return fields


async def register_keyed(dealer: Dealer, client_id: str = "svc", **fields: Any) -> None:
    fields.setdefault("jwks", jwks((RSA_KEY, "k1"), (EC_KEY, "k2"), (ED_KEY, "k3")))
    await add_client(
        dealer, client_id, secret="", auth_method=PRIVATE_KEY_JWT, scopes=("read",), **fields
    )


async def post(client: QuartClient, path: str, data: dict[str, str], **kwargs: Any) -> Any:
    response = await client.post(path, form=data, **kwargs)
    return response.status_code, await response.get_json(), response


@pytest.fixture(autouse=True)
async def _keyed_client(dealer: Dealer) -> None:
    await register_keyed(dealer)


# -- what works ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (RSA_KEY, "RS256", "k1"),
        (RSA_KEY, "PS512", "k1"),
        (EC_KEY, "ES256", "k2"),
        (ED_KEY, "EdDSA", "k3"),
        (ED_KEY, "Ed25519", "k3"),  # RFC 9864's name for the same signature
        (ED_KEY, "Ed25519", None),
        (EC_KEY, "ES256", None),  # no kid: the keys of the algorithm's type are tried
    ],
)
async def test_a_signed_assertion_gets_a_token(
    client: QuartClient, key: Any, alg: str, kid: str | None
) -> None:
    status, body, response = await post(
        client, "/oauth/token", form(assertion(key=key, alg=alg, kid=kid))
    )
    assert status == 200, body
    _, claims = unverified(body["access_token"])
    assert claims["client_id"] == "svc" and claims["scope"] == "read"
    assert response.headers["Cache-Control"] == "no-store"


async def test_the_audience_may_be_the_endpoint_and_client_id_may_be_left_out(
    client: QuartClient,
) -> None:
    """draft-ietf-oauth-rfc7523bis wants the issuer; RFC 7523-era clients (Authlib) send
    the URL of the endpoint they call. Without client_id, the assertion's sub names the
    client (RFC 7521 §4.2: client_id is optional)."""
    status, _, _ = await post(client, "/oauth/token", form(assertion(aud=TOKEN_URL), None))
    assert status == 200
    token = (await post(client, "/oauth/token", form(assertion(aud=[ISSUER, TOKEN_URL]))))[1][
        "access_token"
    ]
    introspect = {
        "token": token,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(aud=ISSUER + "/oauth/introspect"),
    }
    status, body, _ = await post(client, "/oauth/introspect", introspect)
    assert status == 200 and body["active"] is True
    revoke = {**introspect, "client_assertion": assertion()}
    status, _, _ = await post(client, "/oauth/revoke", revoke)
    assert status == 200


# -- what is refused -----------------------------------------------------------------------


def _hs256_with_the_public_key() -> str:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": "svc", "sub": "svc", "aud": ISSUER, "exp": now + 60, "jti": "x"}
    # PyJWT refuses a PEM as an HMAC secret: build the token by hand, as an attacker would.
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode())
    import hashlib
    import hmac

    signing_input = header + b"." + payload
    signature = hmac.new(pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


def _alg_none() -> str:
    now = int(time.time())
    claims = {"iss": "svc", "sub": "svc", "aud": ISSUER, "exp": now + 60, "jti": "y"}
    return jwt.encode(claims, None, algorithm="none")


ATTACKS = {
    "wrong iss": lambda: assertion(iss="other"),
    "wrong sub": lambda: assertion(sub="other"),
    "foreign aud": lambda: assertion(aud="https://elsewhere.test"),
    "aud array with a foreign value": lambda: assertion(aud=[ISSUER, "https://elsewhere.test"]),
    "no aud": lambda: assertion(aud=None),
    "expired": lambda: assertion(iat=int(time.time()) - 400, exp=int(time.time()) - 100),
    "too long-lived": lambda: assertion(exp=int(time.time()) + 3600),
    "no exp": lambda: assertion(exp=None),
    "no jti": lambda: assertion(jti=None),
    "not yet valid": lambda: assertion(nbf=int(time.time()) + 600),
    "alg none": _alg_none,
    "HS256 with the public key": _hs256_with_the_public_key,
    "another client's key": lambda: assertion(key=OTHER_RSA_KEY),
    "RS256 named with the EC key's kid": lambda: assertion(kid="k2"),
    "not a JWT": lambda: "not.a.jwt",
    "Ed25519 by another key": lambda: assertion(
        key=ed25519.Ed25519PrivateKey.generate(), alg="Ed25519", kid="k3"
    ),
    "Ed25519 named with the EC key's kid": lambda: assertion(key=ED_KEY, alg="Ed25519", kid="k2"),
    "Ed25519 expired": lambda: assertion(
        key=ED_KEY, alg="Ed25519", iat=int(time.time()) - 400, exp=int(time.time()) - 100
    ),
    "Ed25519 without jti": lambda: assertion(key=ED_KEY, alg="Ed25519", jti=None),
}


async def test_a_registered_key_may_name_its_alg_ed25519(
    client: QuartClient, dealer: Dealer
) -> None:
    """A JWK exported with RFC 9864's ``"alg": "Ed25519"`` is a usable key (PyJWK knows
    only ``EdDSA``), for assertions of either name."""
    named = {**public_jwk(ED_KEY, "ed"), "alg": "Ed25519"}
    await register_keyed(dealer, "named", jwks=json.dumps({"keys": [named]}))
    for alg in ("Ed25519", "EdDSA"):
        signed = assertion("named", key=ED_KEY, alg=alg, kid="ed")
        status, body, _ = await post(client, "/oauth/token", form(signed, "named"))
        assert status == 200, (alg, body)


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_each_assertion_attack_is_invalid_client(client: QuartClient, attack: str) -> None:
    with structlog.testing.capture_logs() as logs:
        status, body, response = await post(client, "/oauth/token", form(ATTACKS[attack]()))
    assert status == 401 and body["error"] == "invalid_client"
    assert body["error_description"] == "Client authentication failed."
    assert "WWW-Authenticate" in response.headers
    reasons = [entry for entry in logs if entry["event"] == "client_authentication_failed"]
    assert reasons and reasons[0]["client_id"] == "svc" and reasons[0]["reason"]


async def test_an_assertion_is_single_use(client: QuartClient) -> None:
    signed = assertion()
    assert (await post(client, "/oauth/token", form(signed)))[0] == 200
    status, body, _ = await post(client, "/oauth/token", form(signed))
    assert status == 401 and body["error"] == "invalid_client"


async def test_a_replay_is_refused_by_another_worker(
    client: QuartClient, settings: Settings
) -> None:
    """The used jti is in the database, shared by workers and replicas."""
    signed = assertion()
    assert (await post(client, "/oauth/token", form(signed)))[0] == 200
    async with running(settings) as other:
        assert (await post(other, "/oauth/token", form(signed)))[0] == 401


async def test_concurrent_assertions_never_count_as_failures(settings: Settings) -> None:
    """Fifty assertions of one client at once, from one address, under a limit of three
    failures: each is written to the store as used while the others wait, and every one
    is served (only failures count, never an attempt being checked)."""
    tight = dataclasses.replace(settings, auth_failure_limit=Rate(3, 60))
    async with running(tight) as client:
        answers = await asyncio.gather(
            *(post(client, "/oauth/token", form(assertion())) for _ in range(50))
        )
    assert [status for status, _, _ in answers] == [200] * 50


async def test_one_method_per_request(client: QuartClient, dealer: Dealer) -> None:
    secret = await add_client(dealer, "plain")
    with_basic = await post(
        client, "/oauth/token", form(assertion(), None), headers=basic("plain", secret)
    )
    with_secret = await post(client, "/oauth/token", form(assertion(), client_secret="anything"))
    for status, body, _ in (with_basic, with_secret):
        assert status == 400 and body["error"] == "invalid_request"


async def test_a_client_authenticates_only_as_registered(
    client: QuartClient, dealer: Dealer
) -> None:
    # A secret for a private_key_jwt client: even the empty one it has none of.
    for secret in ("", "guess"):
        response = await client.post(
            "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic("svc", secret)
        )
        assert response.status_code == 401
    # An assertion for a secret client, signed with a key it never registered.
    await add_client(dealer, "plain")
    status, _, _ = await post(client, "/oauth/token", form(assertion("plain"), "plain"))
    assert status == 401


async def test_client_id_must_match_the_assertion_and_the_type_must_be_jwt_bearer(
    client: QuartClient, dealer: Dealer
) -> None:
    await register_keyed(dealer, "svc2")
    assert (await post(client, "/oauth/token", form(assertion(), "svc2")))[0] == 401
    wrong_type = form(assertion(), client_assertion_type="urn:example:saml")
    assert (await post(client, "/oauth/token", wrong_type))[0] == 401


async def test_a_disabled_client_is_refused(client: QuartClient, dealer: Dealer) -> None:
    await dealer.store.set_disabled("svc", True)
    assert (await post(client, "/oauth/token", form(assertion())))[0] == 401


# -- keys published at a jwks_uri ------------------------------------------------------------


@pytest.fixture(name="key_server")
def _key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.document = jwks((RSA_KEY, "k1")).encode()
    yield server
    server.close()


async def test_keys_from_a_jwks_uri_are_fetched_and_cached(
    client: QuartClient, dealer: Dealer, key_server: KeyServer
) -> None:
    await register_keyed(dealer, "remote", jwks=None, jwks_uri=key_server.url)
    for _ in range(2):
        status, body, _ = await post(client, "/oauth/token", form(assertion("remote"), "remote"))
        assert status == 200, body
    assert key_server.requests == 1


@pytest.mark.parametrize("trouble", ["hang", "garbage", "no usable key"])
async def test_a_jwks_uri_in_trouble_is_401_never_500(
    settings: Settings, key_server: KeyServer, trouble: str
) -> None:
    if trouble == "hang":
        key_server.hang = True
    else:
        key_server.document = (
            b"<html>" if trouble == "garbage" else b'{"keys":[{"kty":"oct","k":"AA"}]}'
        )
    quick = dataclasses.replace(settings, client_jwks_timeout=0.3)
    async with running(quick) as client:
        await register_keyed(
            client.app.extensions["tokendealer"], "remote", jwks=None, jwks_uri=key_server.url
        )
        started = time.monotonic()
        status, body, _ = await post(client, "/oauth/token", form(assertion("remote"), "remote"))
        assert status == 401 and body["error"] == "invalid_client"
        assert time.monotonic() - started < 2


WEAK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


@pytest.mark.parametrize(
    ("members", "key", "kid"),
    [
        # RFC 7518 §3.3: RSA keys of 2048 bits or more.
        ({}, WEAK_RSA_KEY, "weak"),
        # RFC 7517 §4.2, §4.3: a key for encryption verifies nothing.
        ({"use": "enc"}, RSA_KEY, "enc"),
        ({"key_ops": ["encrypt"]}, RSA_KEY, "enc"),
    ],
)
async def test_keys_unfit_for_signatures_are_not_used(
    client: QuartClient, dealer: Dealer, members: dict[str, Any], key: Any, kid: str
) -> None:
    document = json.dumps({"keys": [{**public_jwk(key, kid), **members}]})
    await register_keyed(dealer, "unfit", jwks=document)
    with warnings.catch_warnings():  # PyJWT warns of signing with a short key: the point
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        signed = assertion("unfit", key=key, kid=kid)
    status, body, _ = await post(client, "/oauth/token", form(signed, "unfit"))
    assert status == 401 and body["error"] == "invalid_client"


async def test_a_kid_named_twice_is_neither_key(client: QuartClient, dealer: Dealer) -> None:
    document = json.dumps(
        {"keys": [public_jwk(RSA_KEY, "same"), public_jwk(OTHER_RSA_KEY, "same")]}
    )
    await register_keyed(dealer, "twice", jwks=document)
    status, _, _ = await post(client, "/oauth/token", form(assertion("twice", kid="same"), "twice"))
    assert status == 401


async def test_claims_stored_by_hand_that_are_not_an_object_cost_no_500(
    client: QuartClient, dealer: Dealer
) -> None:
    """The claims column is written only by the store; a hand-edited one that is not a
    JSON object is logged and taken as no claims, not a failure of every request."""
    store = dealer.store
    for text in ("{not json", "[1]"):
        async with store._engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(
                sa.text("UPDATE clients SET claims = :claims WHERE client_id = 'svc'"),
                {"claims": text},
            )
        with structlog.testing.capture_logs() as logs:
            status, body, _ = await post(client, "/oauth/token", form(assertion()))
        assert status == 200, body
        assert any(entry["event"] == "client_claims_unreadable" for entry in logs)
