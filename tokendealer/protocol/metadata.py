"""Authorization server metadata (RFC 8414 §2)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from tokendealer.protocol import paths
from tokendealer.protocol.assertions import ALGORITHMS as ASSERTION_ALGORITHMS
from tokendealer.settings import Settings


def endpoint(issuer: str, path: str) -> str:
    return issuer.rstrip("/") + path


def build_metadata(
    settings: Settings, algorithms: Iterable[str], auth_methods: Sequence[str]
) -> dict[str, Any]:
    """``auth_methods``: the client authentication methods every authenticating endpoint
    accepts (``tokendealer.service.authentication.METHOD_NAMES``)."""
    issuer = settings.issuer
    methods = list(auth_methods)
    signed = {}
    if "private_key_jwt" in methods:
        # RFC 8414 §2: the JWS algorithms of private_key_jwt, for each endpoint.
        for name in ("token", "introspection", "revocation"):
            signed[f"{name}_endpoint_auth_signing_alg_values_supported"] = list(
                ASSERTION_ALGORITHMS
            )
    return {
        # §2: "issuer ... REQUIRED"; §3.3: it MUST be identical to the issuer URL used.
        "issuer": issuer,
        "token_endpoint": endpoint(issuer, paths.TOKEN),
        "jwks_uri": endpoint(issuer, paths.JWKS),
        "introspection_endpoint": endpoint(issuer, paths.INTROSPECTION),
        "revocation_endpoint": endpoint(issuer, paths.REVOCATION),
        # "If omitted, the default value is ["authorization_code", "implicit"]": so say it.
        "grant_types_supported": ["client_credentials"],
        # REQUIRED; this server has no authorization endpoint, so no response types.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        **signed,
        # Extension (not in RFC 8414's registry): how access tokens are signed.
        "access_token_signing_alg_values_supported": sorted(set(algorithms)),
    }


def metadata_bytes(
    settings: Settings, algorithms: Iterable[str], auth_methods: Sequence[str]
) -> bytes:
    document = build_metadata(settings, algorithms, auth_methods)
    return json.dumps(document, separators=(",", ":")).encode()
