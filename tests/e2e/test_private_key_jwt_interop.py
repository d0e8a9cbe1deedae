"""private_key_jwt (RFC 7523 §2.2) through a real ``tokendealer serve``: third-party clients
(Authlib, openid-client v6 on Node.js) and the dealer's own ``TokenClient`` sign their client
assertions their own way, and each gets a real token.

One server serves the whole module, with the default settings that bound assertions (at
most ``ASSERTION_MAX_AGE`` = 300 s from ``iat`` to ``exp``). The CLI cannot register keyed
clients yet, so they are written into the server's database with the store API; the
server reads a new client from the database on its first request.

What each client sends as the assertion's ``aud`` (the server accepts the issuer
identifier or the URL of the endpoint called, nothing else):

- Authlib's ``PrivateKeyJWT``: the token endpoint URL (RFC 7523 §3), with ``exp`` one hour
  after ``iat``, which the default ``ASSERTION_MAX_AGE`` refuses;
- openid-client v6's ``PrivateKeyJwt``: the issuer identifier, ``exp`` 60 s after ``iat``;
- ``TokenClient``: the issuer when given one, else the token endpoint URL.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import RSAKey
from jwt import PyJWKClient
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from tests.support.keyserver import KeyServer, key_set
from tests.support.nodejs import run_node
from tests.support.servers import ServerProcess, run_server, wait_until
from tokendealer.library.client import TokenClient, TokenError
from tokendealer.protocol.assertions import ASSERTION_TYPE
from tokendealer.protocol.clients import PRIVATE_KEY_JWT, Client
from tokendealer.settings import Settings
from tokendealer.store import store_for

with warnings.catch_warnings():
    # Authlib warns at import that it falls back to httpx when httpx2 is not installed;
    # the fallback is the httpx-based client these tests mean to exercise.
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

pytestmark = pytest.mark.e2e

AUDIENCE = "https://api.pkjwt.e2e.test"
TOKEN_PATH = "/oauth/token"
#: The default ``ASSERTION_MAX_AGE``: the longest an accepted assertion may live.
MAX_AGE = 300

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WRONG_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OLD_KEY = ec.generate_private_key(ec.SECP256R1())
NEW_KEY = ec.generate_private_key(ec.SECP256R1())


# -- keys and clients ---------------------------------------------------------------------------


def private_jwk(key: Any, kid: str) -> dict[str, Any]:
    """The private JWK of an EC or Ed25519 key, named ``kid``."""
    kind = OKPAlgorithm if isinstance(key, ed25519.Ed25519PrivateKey) else ECAlgorithm
    return {**kind.to_jwk(key, as_dict=True), "kid": kid}


def pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def register(
    server: ServerProcess, client_id: str, *, jwks: str | None = None, jwks_uri: str | None = None
) -> None:
    """Write a private_key_jwt client with scope ``read`` and AUDIENCE into the server's
    database (what ``clients add --auth-method private_key_jwt`` will do)."""
    client = Client(
        client_id=client_id,
        secret_digest="",
        scopes=("read",),
        audiences=(AUDIENCE,),
        created_at=time.time(),
        auth_method=PRIVATE_KEY_JWT,
        jwks=jwks,
        jwks_uri=jwks_uri,
    )

    async def add() -> None:
        store = store_for(Settings.from_env(server.env), log_outages=False)
        await store.open(create=False)
        try:
            await store.add_client(client)
        finally:
            await store.close()

    asyncio.run(add())


def sent_assertion(request: httpx.Request) -> dict[str, Any]:
    """The claims of the client assertion in a token request's form body."""
    form = parse_qs(request.content.decode("ascii"))
    assert form["client_assertion_type"] == [ASSERTION_TYPE]
    claims: dict[str, Any] = jwt.decode(
        form["client_assertion"][0], options={"verify_signature": False}
    )
    return claims


class Recorder:
    """httpx event hook keeping the claims of each client assertion sent."""

    def __init__(self) -> None:
        self.claims: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> None:
        self.claims.append(sent_assertion(request))


def verify_token(server: ServerProcess, token: str) -> dict[str, Any]:
    """The token's claims, its signature checked with PyJWT against the server's JWKS."""
    signing_key = PyJWKClient(
        server.url + "/.well-known/jwks.json", cache_keys=False
    ).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        signing_key,
        algorithms=[jwt.get_unverified_header(token)["alg"]],
        audience=AUDIENCE,
        issuer=server.env["TOKENDEALER_ISSUER"],
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    return claims


def logged_rejection(server: ServerProcess, client_id: str, reason: str) -> None:
    """Wait until the server has logged why it rejected CLIENT_ID's assertion."""

    def found() -> bool:
        return any(
            '"client_authentication_failed"' in line and f'"{client_id}"' in line and reason in line
            for line in server.log().splitlines()
        )

    wait_until(found, timeout=5, what=f"the server logging {reason!r} for {client_id}")


# -- the server and a client's key server -------------------------------------------------------


@pytest.fixture(name="server", scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Failed authentications on purpose, all from 127.0.0.1: no 429 for them.
    env = {"TOKENDEALER_AUTH_FAILURE_LIMIT": "10000/minute"}
    with run_server(tmp_path_factory.mktemp("pkjwt"), env=env) as server:
        yield server


@pytest.fixture(name="key_server")
def _key_server() -> Iterator[KeyServer]:
    keys = KeyServer()
    yield keys
    keys.close()


# -- Authlib ---------------------------------------------------------------------------------


class ShortPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's ``PrivateKeyJWT``, its assertions living 60 s instead of Authlib's hour.

    ``PrivateKeyJWT.sign`` gives ``private_key_jwt_sign`` no ``expires_in``, so every
    assertion lives 3600 s; its ``claims`` cannot shorten that either (fixed claims, and
    the ``jti`` Authlib adds to that dict is then reused by every later assertion).
    """

    def sign(self, auth: Any, token_endpoint: str) -> str:
        signed: str = private_key_jwt_sign(
            RSAKey.import_key(auth.client_secret),
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            expires_in=60,
        )
        return signed


def authlib_client(
    client_id: str, key: Any, method: PrivateKeyJWT, recorder: Recorder
) -> OAuth2Client:
    return OAuth2Client(
        client_id,
        pem(key).decode(),
        token_endpoint_auth_method=method,
        event_hooks={"request": [recorder]},
        timeout=10,
    )


@pytest.fixture(name="authlib_id", scope="module")
def _authlib_id(server: ServerProcess) -> str:
    register(server, "authlib-svc", jwks=key_set((RSA_KEY, "authlib-1")))
    return "authlib-svc"


def test_authlib_private_key_jwt_gets_a_token(server: ServerProcess, authlib_id: str) -> None:
    token_url = server.url + TOKEN_PATH
    recorder = Recorder()
    # PrivateKeyJWT(None) signs for the URL the request goes to: the token endpoint.
    with authlib_client(authlib_id, RSA_KEY, ShortPrivateKeyJWT(), recorder) as oauth:
        token = oauth.fetch_token(token_url, grant_type="client_credentials", scope="read")
    assert token["token_type"] == "Bearer"
    claims = verify_token(server, token["access_token"])
    assert claims["client_id"] == authlib_id and claims["sub"] == authlib_id
    assert claims["scope"] == "read"
    (sent,) = recorder.claims
    assert sent["aud"] == token_url
    assert sent["iss"] == sent["sub"] == authlib_id
    assert sent["exp"] - sent["iat"] == 60


def test_authlib_default_hour_long_assertion_is_refused(
    server: ServerProcess, authlib_id: str
) -> None:
    """Stock ``PrivateKeyJWT`` asserts for an hour: more than the default ASSERTION_MAX_AGE
    (300 s) allows, so it is ``invalid_client`` unless the operator raises that to 3600."""
    token_url = server.url + TOKEN_PATH
    recorder = Recorder()
    with (
        authlib_client(authlib_id, RSA_KEY, PrivateKeyJWT(token_url), recorder) as oauth,
        pytest.raises(OAuthError) as refused,
    ):
        oauth.fetch_token(token_url, grant_type="client_credentials", scope="read")
    assert refused.value.error == "invalid_client"
    (sent,) = recorder.claims
    assert sent["aud"] == token_url and sent["exp"] - sent["iat"] == 3600
    logged_rejection(server, authlib_id, f"lives longer than {MAX_AGE} s")


def test_authlib_with_the_wrong_key_is_invalid_client(
    server: ServerProcess, authlib_id: str
) -> None:
    statuses: list[int] = []
    token_url = server.url + TOKEN_PATH
    with authlib_client(authlib_id, WRONG_RSA_KEY, ShortPrivateKeyJWT(), Recorder()) as oauth:
        oauth.event_hooks["response"] = [lambda response: statuses.append(response.status_code)]
        with pytest.raises(OAuthError) as refused:
            oauth.fetch_token(token_url, grant_type="client_credentials", scope="read")
    assert refused.value.error == "invalid_client"
    assert statuses == [401]
    logged_rejection(server, authlib_id, "bad signature")


# -- openid-client (Node.js) -----------------------------------------------------------------


@pytest.mark.parametrize(("key", "alg"), [(EC_KEY, "ES256"), (ED_KEY, "Ed25519")])
def test_openid_client_private_key_jwt_gets_a_token(
    server: ServerProcess, key: Any, alg: str
) -> None:
    """openid-client v6 discovers the dealer from its issuer URL (RFC 8414 metadata) and
    signs an assertion for the issuer identifier: ES256 with a P-256 key, and with an
    Ed25519 key RFC 9864's ``Ed25519`` (never the older ``EdDSA``)."""
    client_id = f"node-svc-{alg.lower()}"
    register(server, client_id, jwks=key_set((key, "node-1")))
    issuer = server.env["TOKENDEALER_ISSUER"]
    result = run_node(
        "private_key_jwt.mjs", issuer, client_id, json.dumps(private_jwk(key, "node-1")), "read"
    )
    assert result["ok"], result
    assert result["response"]["token_type"].lower() == "bearer"
    claims = verify_token(server, result["response"]["access_token"])
    assert claims["client_id"] == client_id and claims["scope"] == "read"
    assertion = result["assertion"]
    assert assertion["header"] == {"alg": alg, "kid": "node-1"}
    assert assertion["claims"]["aud"] == issuer
    assert assertion["claims"]["iss"] == assertion["claims"]["sub"] == client_id


# -- the dealer's own TokenClient -------------------------------------------------------------


@pytest.mark.parametrize("audience", ["issuer", "token endpoint"])
def test_token_client_private_key_gets_a_token(server: ServerProcess, audience: str) -> None:
    client_id = "library-svc-" + audience.replace(" ", "-")
    register(server, client_id, jwks=key_set((ED_KEY, "lib-1")))
    token_url = server.url + TOKEN_PATH
    issuer = server.env["TOKENDEALER_ISSUER"] if audience == "issuer" else None
    recorder = Recorder()
    with httpx.Client(timeout=10, event_hooks={"request": [recorder]}) as http:
        tokens = TokenClient(
            token_url,
            client_id,
            private_key=pem(ED_KEY),
            kid="lib-1",
            issuer=issuer,
            scope="read",
            sync_http_client=http,
        )
        token = tokens.get_token_sync()
    claims = verify_token(server, token)
    assert claims["client_id"] == client_id and claims["scope"] == "read"
    (sent,) = recorder.claims
    assert sent["aud"] == (issuer or token_url)


# -- keys published at a jwks_uri --------------------------------------------------------------


def library_token(server: ServerProcess, client_id: str, key: Any, kid: str) -> Callable[[], str]:
    """A fetch of a fresh token with a fresh assertion signed by KEY under KID."""

    def fetch() -> str:
        tokens = TokenClient(
            server.url + TOKEN_PATH,
            client_id,
            private_key=pem(key),
            kid=kid,
            issuer=server.env["TOKENDEALER_ISSUER"],
            scope="read",
        )
        return tokens.get_token_sync()

    return fetch


def test_keys_from_a_jwks_uri(server: ServerProcess, key_server: KeyServer) -> None:
    key_server.publish((OLD_KEY, "old"))
    register(server, "remote-svc", jwks_uri=key_server.url)
    fetch = library_token(server, "remote-svc", OLD_KEY, "old")
    assert verify_token(server, fetch())["client_id"] == "remote-svc"
    assert verify_token(server, fetch())["client_id"] == "remote-svc"
    assert key_server.requests == 1  # cached: one fetch for both


def test_a_client_key_rotation_is_seen_at_once(
    server: ServerProcess, key_server: KeyServer
) -> None:
    """The client publishes a new kid and drops the old one, right after the server fetched
    its set: the new kid is unknown, so the server fetches the set again at once (an unknown kid
    fetches at most once per cooldown), and the dropped key is refused."""
    key_server.publish((OLD_KEY, "old"))
    register(server, "rotating-svc", jwks_uri=key_server.url)
    library_token(server, "rotating-svc", OLD_KEY, "old")()
    assert key_server.requests == 1

    key_server.publish((NEW_KEY, "new"))
    new = library_token(server, "rotating-svc", NEW_KEY, "new")
    assert verify_token(server, new())["client_id"] == "rotating-svc"
    assert key_server.requests == 2
    with pytest.raises(TokenError) as refused:  # the refetched set no longer has it
        library_token(server, "rotating-svc", OLD_KEY, "old")()
    assert (refused.value.error, refused.value.status_code) == ("invalid_client", 401)
    logged_rejection(server, "rotating-svc", "no key of the client fits")
