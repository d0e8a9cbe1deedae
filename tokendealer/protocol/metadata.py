"""Authorization server metadata (RFC 8414 §2)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tokendealer.settings import Settings

AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
WELL_KNOWN = "/.well-known/oauth-authorization-server"


def endpoint(issuer: str, path: str) -> str:
    return issuer.rstrip("/") + path


def build_metadata(settings: Settings, algorithms: Iterable[str]) -> dict[str, Any]:
    issuer = settings.issuer
    return {
        # §2: "issuer ... REQUIRED"; §3.3: it MUST be identical to the issuer URL used.
        "issuer": issuer,
        "token_endpoint": endpoint(issuer, "/oauth/token"),
        "jwks_uri": endpoint(issuer, "/.well-known/jwks.json"),
        "introspection_endpoint": endpoint(issuer, "/oauth/introspect"),
        "revocation_endpoint": endpoint(issuer, "/oauth/revoke"),
        # "If omitted, the default value is ["authorization_code", "implicit"]": so say it.
        "grant_types_supported": ["client_credentials"],
        # REQUIRED; this server has no authorization endpoint, so no response types.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        # Extension (not in RFC 8414's registry): how access tokens are signed.
        "access_token_signing_alg_values_supported": sorted(set(algorithms)),
    }


def metadata_bytes(settings: Settings, algorithms: Iterable[str]) -> bytes:
    return json.dumps(build_metadata(settings, algorithms), separators=(",", ":")).encode()
