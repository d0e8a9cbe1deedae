"""Interop with Node.js: ``jose`` verifies dealer tokens, ``openid-client`` fetches them.

The scripts live in ``tests/node``; each prints one JSON object that the test asserts on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.nodejs import node_project, run_node
from tests.support.servers import ServerProcess, run_server
from tests.support.tokens import segment, tamper

pytestmark = pytest.mark.e2e

AUDIENCE = "https://api.node.test"
#: ':' and '@' in the id: openid-client must form-encode Basic credentials (RFC 6749 App. B).
CLIENT_ID = "svc:node@team.example"


@pytest.fixture(name="project", scope="module")
def _project() -> Path:
    return node_project()


@pytest.fixture(name="server", scope="module")
def _server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("node")) as server:
        yield server


@pytest.fixture(name="secret", scope="module")
def _secret(server: ServerProcess) -> str:
    return server.add_client(CLIENT_ID, "--scope", "read", "--audience", AUDIENCE)


@pytest.fixture(name="token", scope="module")
def _token(server: ServerProcess, secret: str) -> str:
    return server.token(CLIENT_ID, secret)


def _jose_verify(server: ServerProcess, token: str, **overrides: str) -> dict[str, object]:
    options = {"issuer": server.env["TOKENDEALER_ISSUER"], "audience": AUDIENCE, **overrides}
    return run_node(
        "verify.mjs",
        server.url + "/.well-known/jwks.json",
        token,
        options["issuer"],
        options["audience"],
    )


def test_jose_verifies_a_dealer_token(server: ServerProcess, token: str) -> None:
    """jose's jwtVerify with a remote JWKS, typ at+jwt and RS512 only accepts a dealer token."""
    result = _jose_verify(server, token)
    assert result["ok"] is True, result
    header = result["protectedHeader"]
    payload = result["payload"]
    assert isinstance(header, dict) and isinstance(payload, dict)
    assert header["alg"] == "RS512" and header["typ"] == "at+jwt"
    jwks = httpx.get(server.url + "/.well-known/jwks.json").json()
    assert header["kid"] in [key["kid"] for key in jwks["keys"]]
    assert payload["client_id"] == payload["sub"] == CLIENT_ID
    assert payload["aud"] == AUDIENCE
    assert payload["scope"] == "read"


def _tampered_payload(token: str) -> str:
    return tamper(token, scope="read admin")


def _tampered_header(token: str) -> str:
    _, payload, signature = token.split(".")
    return f"{segment({'alg': 'RS256', 'typ': 'at+jwt'})}.{payload}.{signature}"


def _unsigned(token: str) -> str:
    _, payload, _ = token.split(".")
    return f"{segment({'alg': 'none', 'typ': 'at+jwt'})}.{payload}."


@pytest.mark.parametrize(
    ("change", "expected_code"),
    [
        (_tampered_payload, "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        (_tampered_header, "ERR_JOSE_ALG_NOT_ALLOWED"),
        (_unsigned, "ERR_JOSE_ALG_NOT_ALLOWED"),
    ],
    ids=["payload", "header-alg", "alg-none"],
)
def test_jose_rejects_a_forged_token(
    server: ServerProcess,
    token: str,
    change: object,
    expected_code: str,
) -> None:
    """A dealer token with its payload or header altered fails jose's verification."""
    assert callable(change)
    result = _jose_verify(server, change(token))
    assert result["ok"] is False
    assert result["code"] == expected_code, result


@pytest.mark.parametrize(
    ("option", "value"),
    [("audience", "https://other.node.test"), ("issuer", "https://impostor.test")],
)
def test_jose_checks_issuer_and_audience(
    server: ServerProcess, token: str, option: str, value: str
) -> None:
    """jose refuses a dealer token for another audience or issuer than it carries."""
    result = _jose_verify(server, token, **{option: value})
    assert result["ok"] is False
    assert result["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED", result


@pytest.mark.parametrize("method", ["basic", "post"])
def test_openid_client_fetches_a_token_jose_verifies(
    server: ServerProcess, secret: str, method: str
) -> None:
    """openid-client's clientCredentialsGrant (Basic or post) gets a token that jose verifies."""
    result = run_node(
        "client_credentials.mjs", server.env["TOKENDEALER_ISSUER"], CLIENT_ID, secret, method
    )
    assert result["ok"] is True, result
    response = result["response"]
    assert isinstance(response, dict)
    assert response["token_type"].lower() == "bearer"
    assert response["scope"] == "read"
    assert _jose_verify(server, response["access_token"])["ok"] is True


def test_openid_client_sees_invalid_client(server: ServerProcess, secret: str) -> None:
    """openid-client surfaces the dealer's 401 invalid_client for a wrong secret."""
    result = run_node(
        "client_credentials.mjs",
        server.env["TOKENDEALER_ISSUER"],
        CLIENT_ID,
        secret[:-2] + "xx",
        "basic",
    )
    assert result["ok"] is False
    assert result["status"] == 401
    assert result["error"] == "invalid_client", result
    # The challenge RFC 6749 §5.2 asks for with a 401 after Basic authentication.
    assert result["challenges"] == [{"scheme": "basic", "parameters": {"realm": "tokendealer"}}]
