"""``GET /.well-known/jwks.json``: the public keys as a JWK Set (RFC 7517 §5)."""

from __future__ import annotations

from quart import Blueprint, Response

from tokendealer.http.ratelimit import rate_exempt
from tokendealer.http.responses import dealer

blueprint = Blueprint("jwks", __name__)

JWKS_TYPE = "application/jwk-set+json"


@blueprint.get("/.well-known/jwks.json")
# Exempt on purpose: served from bytes computed once (cheaper than a limiter round trip),
# cacheable, and every resource server depends on it.
@rate_exempt
async def jwks() -> Response:
    # Bytes computed once per key set, when the keys were loaded.
    d = dealer()
    return Response(
        d.keyset.jwks_bytes,
        content_type=JWKS_TYPE,
        headers={"Cache-Control": f"public, max-age={d.settings.jwks_max_age}"},
    )
