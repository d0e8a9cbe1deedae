"""``GET /.well-known/oauth-authorization-server`` (RFC 8414 §3).

For an issuer with a path component (``https://host/tenant``), §3.1 places the document
at ``/.well-known/oauth-authorization-server/tenant``; both forms are served.
"""

from __future__ import annotations

from quart import Blueprint, Response

from tokendealer.http.responses import dealer
from tokendealer.metadata import WELL_KNOWN

blueprint = Blueprint("metadata", __name__)


@blueprint.get(WELL_KNOWN)
@blueprint.get(WELL_KNOWN + "/<path:issuer_path>")
async def metadata(issuer_path: str | None = None) -> Response:
    d = dealer()
    return Response(
        d.metadata_bytes,
        content_type="application/json",
        headers={"Cache-Control": f"public, max-age={d.settings.jwks_max_age}"},
    )
