"""Other ecosystems use a real ``tokendealer serve`` from its issuer URL alone.

Authlib (Python) and Node's openid-client v6 each fetch the RFC 8414 document, take the
endpoints from it, get a token with the client-credentials grant (client_secret_basic and
client_secret_post), introspect it, revoke it, and see it inactive afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.support.nodejs import run_node
from tests.support.servers import ServerProcess, run_server

pytestmark = [
    pytest.mark.e2e,
    # Authlib >= 1.7 warns that its httpx integration will move to the httpx2 package; the
    # integration itself is what this module exercises, so the notice is not a failure.
    pytest.mark.filterwarnings(
        "ignore:The httpx module is deprecated:authlib.deprecate.AuthlibDeprecationWarning"
    ),
]

METHODS = ["basic", "post"]


@pytest.fixture(name="server", scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the module, with a client allowed the ``read`` scope."""
    with run_server(tmp_path_factory.mktemp("discovery")) as server:
        yield server


@pytest.fixture(name="credentials", scope="module")
def _credentials(server: ServerProcess) -> tuple[str, str]:
    return "svc", server.add_client("svc", "--scope", "read", "--scope", "write")


def well_known_url(issuer: str) -> str:
    """RFC 8414 §3.1: insert the well-known suffix between the host and the issuer's path."""
    parts = urlsplit(issuer)
    path = "/.well-known/oauth-authorization-server" + parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def discover(issuer: str) -> dict[str, Any]:
    """What an RFC 8414 client does with nothing but the issuer URL."""
    response = httpx.get(well_known_url(issuer), timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    metadata: dict[str, Any] = response.json()
    # §3.3: the issuer in the document MUST be identical to the one it was fetched for.
    assert metadata["issuer"] == issuer
    return metadata


def test_metadata_of_running_server(server: ServerProcess) -> None:
    """The running server's document names its own issuer URL and endpoints on it."""
    metadata = discover(server.url)
    assert metadata["token_endpoint"] == server.url + "/oauth/token"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    jwks = httpx.get(metadata["jwks_uri"], timeout=5)
    assert jwks.status_code == 200 and jwks.json()["keys"]


@pytest.mark.parametrize("method", METHODS)
def test_authlib_discovers_and_uses_the_service(
    server: ServerProcess, credentials: tuple[str, str], method: str
) -> None:
    """Authlib gets, introspects and revokes a token at the endpoints the metadata names."""
    from authlib.integrations.httpx_client import OAuth2Client

    metadata = discover(server.url)
    auth_method = f"client_secret_{method}"
    assert auth_method in metadata["token_endpoint_auth_methods_supported"]
    client_id, secret = credentials
    with OAuth2Client(
        client_id,
        secret,
        scope="read",
        token_endpoint_auth_method=auth_method,
        revocation_endpoint_auth_method=auth_method,
        timeout=5,
    ) as oauth:
        token = oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "read"
        assert token["expires_in"] > 0
        access_token = token["access_token"]

        introspected = oauth.introspect_token(
            metadata["introspection_endpoint"], token=access_token
        )
        assert introspected.status_code == 200
        body = introspected.json()
        assert body["active"] is True
        assert body["client_id"] == client_id and body["iss"] == server.url
        assert body["scope"] == "read"

        revoked = oauth.revoke_token(metadata["revocation_endpoint"], token=access_token)
        assert revoked.status_code == 200

        after = oauth.introspect_token(metadata["introspection_endpoint"], token=access_token)
        assert after.status_code == 200 and after.json() == {"active": False}

    verified = httpx.post(server.url + "/verify_token", data={"access_token": access_token})
    assert verified.status_code == 400
    assert verified.json()["error"] == "invalid_token"


def test_authlib_wrong_secret_is_invalid_client(
    server: ServerProcess, credentials: tuple[str, str]
) -> None:
    """Authlib surfaces the token endpoint's invalid_client as an OAuth error."""
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import OAuth2Client

    metadata = discover(server.url)
    with (
        OAuth2Client(credentials[0], "wrong-secret", timeout=5) as oauth,
        pytest.raises(OAuthError) as caught,
    ):
        oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert caught.value.error == "invalid_client"


@pytest.mark.parametrize("method", METHODS)
def test_openid_client_discovers_and_uses_the_service(
    server: ServerProcess, credentials: tuple[str, str], method: str
) -> None:
    """openid-client v6 discovers (algorithm oauth2), gets, introspects and revokes a token."""
    client_id, secret = credentials
    result = run_node("discovery.mjs", server.url, client_id, secret, method, "read")
    assert result["ok"] is True, result
    assert result["metadata"]["issuer"] == server.url
    assert result["metadata"]["token_endpoint"] == server.url + "/oauth/token"
    token = result["token"]
    # openid-client lower-cases token_type; the server sends "Bearer".
    assert token["token_type"].lower() == "bearer"
    assert token["scope"] == "read" and token["expires_in"] > 0
    introspection = result["introspection"]
    assert introspection["active"] is True
    assert introspection["client_id"] == client_id
    assert introspection["iss"] == server.url
    assert result["after"] == {"active": False}
    verified = httpx.post(
        server.url + "/verify_token", data={"access_token": token["access_token"]}
    )
    assert verified.status_code == 400


@pytest.mark.parametrize("method", METHODS)
def test_openid_client_reports_bad_credentials(
    server: ServerProcess, credentials: tuple[str, str], method: str
) -> None:
    """With a wrong secret openid-client fails at the grant on the server's 401 Basic challenge."""
    result = run_node("discovery.mjs", server.url, credentials[0], "wrong-secret", method)
    assert result["ok"] is False
    assert result["step"] == "clientCredentialsGrant"
    assert result["status"] == 401
    # oauth4webapi reports a 401 carrying WWW-Authenticate (RFC 6749 §5.2) as the challenge
    # rather than as the invalid_client body.
    assert result["name"] == "WWWAuthenticateChallengeError", result
    assert [challenge["scheme"] for challenge in result["cause"]] == ["basic"]
