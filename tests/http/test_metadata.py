"""``GET /.well-known/oauth-authorization-server``: RFC 8414 metadata a client can rely on.

Every URL in the document is checked against the app itself: stripped of the issuer, it
must name a route the app really serves, so a renamed route cannot leave stale metadata.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.apps import running
from tests.support.environment import ISSUER, QuartClient
from tokendealer.settings import Settings

WELL_KNOWN = "/.well-known/oauth-authorization-server"
PATH_ISSUER = "https://dealer.test/tenant-a"
AUTH_METHODS = {"client_secret_basic", "client_secret_post", "private_key_jwt"}
#: RFC 7523 client assertions: asymmetric algorithms only, never none or an HMAC.
ASSERTION_ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
    "Ed25519",
]
#: RFC 8414 §2 members this server must publish (REQUIRED ones and those the issue asks for).
REQUIRED = (
    "issuer",
    "token_endpoint",
    "jwks_uri",
    "introspection_endpoint",
    "revocation_endpoint",
    "grant_types_supported",
    "response_types_supported",
    "token_endpoint_auth_methods_supported",
    "introspection_endpoint_auth_methods_supported",
    "revocation_endpoint_auth_methods_supported",
)
#: Where RFC 8414 §3.1 puts the document for each issuer this module tests.
DOCUMENT_PATHS = {ISSUER: WELL_KNOWN, PATH_ISSUER: WELL_KNOWN + "/tenant-a"}


@pytest.fixture(name="issuer_client", params=[ISSUER, PATH_ISSUER])
async def _issuer_client(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[tuple[str, QuartClient]]:
    """A test client of an app configured with each issuer: host only, and host plus path."""
    issuer: str = request.param
    async with running(dataclasses.replace(settings, issuer=issuer)) as client:
        yield issuer, client


async def fetch_metadata(client: QuartClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document: dict[str, Any] = json.loads(await response.get_data())
    return document


async def test_required_members(client: QuartClient) -> None:
    """The document has every required member with this server's exact values."""
    metadata = await fetch_metadata(client, WELL_KNOWN)
    for member in REQUIRED:
        assert member in metadata, member
    assert metadata["issuer"] == ISSUER
    assert metadata["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert metadata["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert metadata["introspection_endpoint"] == f"{ISSUER}/oauth/introspect"
    assert metadata["revocation_endpoint"] == f"{ISSUER}/oauth/revoke"
    # Omitting grant_types_supported would mean ["authorization_code", "implicit"].
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert metadata["response_types_supported"] == []
    for member in (
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ):
        assert set(metadata[member]) == AUTH_METHODS, member
        signing = member.replace("_methods_", "_signing_alg_values_")
        assert metadata[signing] == ASSERTION_ALGORITHMS, signing
    assert metadata["access_token_signing_alg_values_supported"] == ["RS512"]
    # Nothing that would advertise an authorization endpoint or another grant.
    assert "authorization_endpoint" not in metadata


async def test_issuer_identical_to_configured(issuer_client: tuple[str, QuartClient]) -> None:
    """At its RFC 8414 §3.1 location the document's issuer is the configured one, byte for byte."""
    issuer, client = issuer_client
    metadata = await fetch_metadata(client, DOCUMENT_PATHS[issuer])
    assert metadata["issuer"] == issuer
    for member in ("token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint"):
        assert metadata[member].startswith(issuer + "/"), member


async def test_path_issuer_document_at_inserted_location(settings: Settings) -> None:
    """An issuer with a path serves its document at the suffixed URL and not at other suffixes."""
    async with running(dataclasses.replace(settings, issuer=PATH_ISSUER)) as client:
        metadata = await fetch_metadata(client, WELL_KNOWN + "/tenant-a")
        assert metadata["issuer"] == PATH_ISSUER
        assert metadata["token_endpoint"] == f"{PATH_ISSUER}/oauth/token"
        # Another tenant's URL would serve a document whose issuer it does not name.
        assert (await client.get(WELL_KNOWN + "/tenant-b")).status_code == 404


async def test_host_issuer_has_no_suffixed_document(client: QuartClient) -> None:
    """An issuer without a path has no document under a path suffix (§3.3 would reject it)."""
    assert (await client.get(WELL_KNOWN + "/tenant-a")).status_code == 404


@pytest.mark.parametrize(
    "member", ["token_endpoint", "introspection_endpoint", "revocation_endpoint"]
)
async def test_post_endpoints_are_routes(
    issuer_client: tuple[str, QuartClient], member: str
) -> None:
    """Each POST endpoint the document names is a route of the app (not 404 or 405)."""
    issuer, client = issuer_client
    metadata = await fetch_metadata(client, DOCUMENT_PATHS[issuer])
    path = metadata[member].removeprefix(issuer)
    assert path.startswith("/")
    response = await client.post(path, form={"token": "x", "grant_type": "client_credentials"})
    assert response.status_code not in (404, 405), (member, response.status_code)
    # Unauthenticated: every one of them demands client authentication.
    assert response.status_code == 401
    assert (await response.get_json())["error"] == "invalid_client"


async def test_jwks_uri_is_a_route(issuer_client: tuple[str, QuartClient]) -> None:
    """The jwks_uri names the app's JWK Set, which holds the signing key."""
    issuer, client = issuer_client
    metadata = await fetch_metadata(client, DOCUMENT_PATHS[issuer])
    response = await client.get(metadata["jwks_uri"].removeprefix(issuer))
    assert response.status_code == 200
    keys = json.loads(await response.get_data())["keys"]
    assert [key["alg"] for key in keys] == metadata["access_token_signing_alg_values_supported"]


async def test_document_is_stable_and_cacheable(client: QuartClient) -> None:
    """The document is the same bytes on every request and may be cached publicly."""
    first = await client.get(WELL_KNOWN)
    second = await client.get(WELL_KNOWN)
    assert await first.get_data() == await second.get_data()
    cache_control = first.headers["Cache-Control"]
    assert "public" in cache_control and "max-age=" in cache_control
    assert "no-store" not in cache_control
