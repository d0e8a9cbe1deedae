"""More independent clients against a real ``tokendealer serve``, in Python and Node.js.

Python: requests-oauthlib (``BackendApplicationClient`` with ``OAuth2Session``) gets tokens
by client_secret_basic and client_secret_post; python-jose verifies a dealer token with the
key its JWKS publishes. Node.js (scripts in ``tests/node``): ``jsonwebtoken`` with the key
``jwks-rsa`` finds by ``kid``, and simple-oauth2's ``ClientCredentials`` grant.

One real server serves the module. Some tests fail authentication on purpose, so its
failed-authentication limit is raised, as in ``tests/e2e/test_e2e.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from jose import jwt as jose_jwt
from jose.exceptions import JWTError
from oauthlib.oauth2 import BackendApplicationClient, InvalidClientError
from requests_oauthlib import OAuth2Session

from tests.support.nodejs import run_node
from tests.support.servers import ServerProcess, run_server
from tests.support.tokens import tamper

pytestmark = pytest.mark.e2e

AUDIENCE = "https://api.more.test"
#: For requests-oauthlib: ``requests``' Basic auth does not form-encode the id (RFC 6749
#: App. B), so this id has only characters that the encoding leaves alone.
PY_CLIENT = "platform.py"
#: For simple-oauth2, which form-encodes Basic credentials by default: ':' and '@' in the
#: id prove that the server decodes them.
NODE_CLIENT = "platform:node@team.example"


@pytest.fixture(name="server", scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"TOKENDEALER_AUTH_FAILURE_LIMIT": "10000/minute"}
    with run_server(tmp_path_factory.mktemp("more"), env=env) as server:
        yield server


@pytest.fixture(name="secrets", scope="module")
def _secrets(server: ServerProcess) -> dict[str, str]:
    """Both clients, each allowed ``read`` and ``write`` for AUDIENCE; id -> secret."""
    scopes = ("--scope", "read", "--scope", "write", "--audience", AUDIENCE)
    return {client: server.add_client(client, *scopes) for client in (PY_CLIENT, NODE_CLIENT)}


@pytest.fixture(name="token", scope="module")
def _token(server: ServerProcess, secrets: dict[str, str]) -> str:
    """A dealer token for PY_CLIENT with scope ``read``."""
    return server.token(PY_CLIENT, secrets[PY_CLIENT], scope="read")


def verify_at_dealer(server: ServerProcess, access_token: str) -> dict[str, Any]:
    """The claims ``POST /verify_token`` answers for a token it accepts for AUDIENCE."""
    response = httpx.post(
        server.url + "/verify_token", data={"access_token": access_token, "audience": AUDIENCE}
    )
    assert response.status_code == 200, response.text
    claims: dict[str, Any] = response.json()
    return claims


# -- requests-oauthlib -----------------------------------------------------------------------------


def fetch_with_requests_oauthlib(
    server: ServerProcess, secret: str, scope: str | None, seen: list[Any], **options: Any
) -> dict[str, Any]:
    """``OAuth2Session.fetch_token`` with a ``BackendApplicationClient`` for PY_CLIENT.

    The scope goes on the oauthlib client: that is what puts it in the request (a scope
    given only to the session is what the answer is checked against). Every response
    (with its request) is appended to ``seen``.
    """
    client = BackendApplicationClient(client_id=PY_CLIENT, scope=scope and [scope])
    with OAuth2Session(client=client) as session:
        session.hooks["response"].append(lambda response, **_: seen.append(response))
        token: dict[str, Any] = session.fetch_token(
            server.url + "/oauth/token", client_id=PY_CLIENT, client_secret=secret, **options
        )
    return token


def sent_form(response: Any) -> dict[str, list[str]]:
    """The form body of the request that produced a ``requests`` response."""
    return parse_qs(response.request.body)


@pytest.fixture(name="insecure_loopback")
def _insecure_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # oauthlib refuses http:// token URLs unless told; the test server is plain-HTTP loopback.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.mark.usefixtures("insecure_loopback")
@pytest.mark.parametrize(
    ("options", "scope", "granted"),
    [
        ({}, None, "read write"),
        ({}, "write", "write"),
        ({"include_client_id": True}, "read", "read"),
    ],
    ids=["basic-no-scope", "basic-scope", "post-include_client_id"],
)
def test_requests_oauthlib_gets_a_usable_token(
    server: ServerProcess,
    secrets: dict[str, str],
    options: dict[str, Any],
    scope: str | None,
    granted: str,
) -> None:
    """requests-oauthlib gets a token (Basic by default, or in the body with
    include_client_id) that the dealer then verifies for the requesting client, with the
    scope asked for, or all of the client's scopes when none was asked for."""
    seen: list[Any] = []
    token = fetch_with_requests_oauthlib(server, secrets[PY_CLIENT], scope, seen, **options)
    (response,) = seen
    if options.get("include_client_id"):
        assert "Authorization" not in response.request.headers
        assert sent_form(response)["client_id"] == [PY_CLIENT]
        assert sent_form(response)["client_secret"] == [secrets[PY_CLIENT]]
    else:
        assert response.request.headers["Authorization"].startswith("Basic ")
        assert "client_secret" not in sent_form(response)
    assert token["token_type"] == "Bearer"
    assert token["scope"] == granted.split()
    assert 3590 <= token["expires_in"] <= 3600
    claims = verify_at_dealer(server, token["access_token"])
    assert claims["client_id"] == claims["sub"] == PY_CLIENT
    assert claims["scope"] == granted
    assert claims["aud"] == AUDIENCE


@pytest.mark.usefixtures("insecure_loopback")
@pytest.mark.parametrize("options", [{}, {"include_client_id": True}], ids=["basic", "post"])
def test_requests_oauthlib_sees_invalid_client(
    server: ServerProcess, secrets: dict[str, str], options: dict[str, Any]
) -> None:
    """A wrong secret makes requests-oauthlib raise oauthlib's InvalidClientError, parsed
    from the dealer's RFC 6749 §5.2 error body."""
    wrong = secrets[PY_CLIENT][:-2] + "xx"
    seen: list[Any] = []
    with pytest.raises(InvalidClientError) as raised:
        fetch_with_requests_oauthlib(server, wrong, "read", seen, **options)
    assert raised.value.error == "invalid_client"
    (response,) = seen
    assert response.status_code == 401


# -- python-jose -----------------------------------------------------------------------------------


def jose_decode(server: ServerProcess, token: str) -> dict[str, Any]:
    """python-jose's ``jwt.decode`` with the JWKS key named by the token's ``kid``."""
    kid = jose_jwt.get_unverified_header(token)["kid"]
    jwks = httpx.get(server.url + "/.well-known/jwks.json").json()
    (key,) = [key for key in jwks["keys"] if key["kid"] == kid]
    claims: dict[str, Any] = jose_jwt.decode(
        token,
        key,
        algorithms=["RS512"],
        audience=AUDIENCE,
        issuer=server.env["TOKENDEALER_ISSUER"],
    )
    return claims


def test_python_jose_verifies_a_dealer_token(server: ServerProcess, token: str) -> None:
    """python-jose verifies a dealer token's RS512 signature, issuer and audience."""
    assert jose_jwt.get_unverified_header(token)["alg"] == "RS512"
    claims = jose_decode(server, token)
    assert claims["client_id"] == claims["sub"] == PY_CLIENT
    assert claims["scope"] == "read"
    assert claims["iat"] <= claims["nbf"] < claims["exp"]


def test_python_jose_refuses_an_altered_payload(server: ServerProcess, token: str) -> None:
    """python-jose refuses a dealer token whose payload was changed to claim more scopes."""
    with pytest.raises(JWTError, match="Signature verification failed"):
        jose_decode(server, tamper(token))


# -- Node: jsonwebtoken + jwks-rsa -----------------------------------------------------------------


def jsonwebtoken_verify(server: ServerProcess, token: str, *mode: str) -> dict[str, Any]:
    return run_node(
        "jsonwebtoken_verify.mjs",
        server.url + "/.well-known/jwks.json",
        token,
        server.env["TOKENDEALER_ISSUER"],
        AUDIENCE,
        *mode,
    )


def test_jsonwebtoken_verifies_with_jwks_rsa(server: ServerProcess, token: str) -> None:
    """jsonwebtoken, with the key jwks-rsa fetched by kid, verifies a dealer token
    (RS512 only, issuer and audience checked)."""
    result = jsonwebtoken_verify(server, token)
    assert result["ok"] is True, result
    assert result["header"]["alg"] == "RS512"
    assert result["header"]["typ"] == "at+jwt"
    assert result["payload"]["client_id"] == PY_CLIENT
    assert result["payload"]["scope"] == "read"


def test_jsonwebtoken_refuses_an_altered_payload(server: ServerProcess, token: str) -> None:
    """jsonwebtoken refuses a dealer token whose payload was changed."""
    result = jsonwebtoken_verify(server, tamper(token))
    assert result["ok"] is False
    assert (result["name"], result["message"]) == ("JsonWebTokenError", "invalid signature")


def test_jsonwebtoken_refuses_hs256_keyed_with_the_public_key(
    server: ServerProcess, token: str
) -> None:
    """With algorithms ['HS256'] and the dealer's public key, jsonwebtoken refuses a token
    HMAC-signed with that key's PEM (algorithm confusion, RFC 8725 §2.1)."""
    result = jsonwebtoken_verify(server, token, "hs256-confusion")
    assert result["ok"] is False
    assert result["name"] == "JsonWebTokenError"
    assert "symmetric key" in result["message"], result


# -- Node: simple-oauth2 ---------------------------------------------------------------------------


def simple_oauth2_token(server: ServerProcess, secret: str, method: str) -> dict[str, Any]:
    return run_node(
        "simple_oauth2_token.mjs", server.url + "/oauth/token", NODE_CLIENT, secret, method, "read"
    )


@pytest.mark.parametrize("method", ["header", "body"])
def test_simple_oauth2_gets_a_usable_token(
    server: ServerProcess, secrets: dict[str, str], method: str
) -> None:
    """simple-oauth2's ClientCredentials.getToken({scope}) gets a token by Basic (its
    default, form-encoded id) or in the body; the dealer verifies it with that scope."""
    result = simple_oauth2_token(server, secrets[NODE_CLIENT], method)
    assert result["ok"] is True, result
    assert result["token"]["token_type"] == "Bearer"
    assert result["token"]["scope"] == "read"
    claims = verify_at_dealer(server, result["token"]["access_token"])
    assert claims["client_id"] == NODE_CLIENT
    assert claims["scope"] == "read"


@pytest.mark.parametrize("method", ["header", "body"])
def test_simple_oauth2_sees_401_for_a_wrong_secret(
    server: ServerProcess, secrets: dict[str, str], method: str
) -> None:
    """A wrong secret fails simple-oauth2's getToken with status 401 and invalid_client."""
    result = simple_oauth2_token(server, secrets[NODE_CLIENT][:-2] + "xx", method)
    assert result["ok"] is False
    assert result["status"] == 401, result
    assert result["payload"]["error"] == "invalid_client"
