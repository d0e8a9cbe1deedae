"""``GET /.well-known/oauth-authorization-server`` (RFC 8414 §3).

For an issuer with a path component (``https://host/tenant``), §3.1 places the document
at ``/.well-known/oauth-authorization-server/tenant``; both forms are served. A suffix
naming any other path is answered 404: that URL would belong to another issuer, and
§3.3 has clients reject a document whose ``issuer`` differs from the one they asked for.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from quart import Blueprint, Response
from werkzeug.exceptions import NotFound

from tokendealer.http.ratelimit import rate_exempt
from tokendealer.http.responses import dealer
from tokendealer.protocol.metadata import WELL_KNOWN

blueprint = Blueprint("metadata", __name__)


@blueprint.get(WELL_KNOWN)
@blueprint.get(WELL_KNOWN + "/<path:issuer_path>")
# Exempt on purpose: static bytes computed once, like the JWKS.
@rate_exempt
async def metadata(issuer_path: str | None = None) -> Response:
    d = dealer()
    # §3.1: "any terminating "/" MUST be removed" from the issuer before inserting.
    if issuer_path is not None and issuer_path != urlsplit(d.settings.issuer).path.strip("/"):
        raise NotFound()
    return Response(
        d.metadata_bytes,
        content_type="application/json",
        headers={"Cache-Control": f"public, max-age={d.settings.jwks_max_age}"},
    )
