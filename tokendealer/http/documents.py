"""The documents, served by Quart: the key set (RFC 7517 §5), the server metadata
(RFC 8414 §3) and the liveness and readiness probes.

Exempt from rate limits on purpose: the key set and the metadata are bytes computed once
per key set (cheaper to serve than to count; every resource server depends on them), and
an orchestrator must never see a 429 from a probe.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, Response
from quart_rate_limiter import rate_exempt
from werkzeug.exceptions import NotFound

from tokendealer import draining
from tokendealer.http.current import dealer
from tokendealer.http.responses import NO_STORE
from tokendealer.protocol import paths
from tokendealer.protocol.errors import TemporarilyUnavailable
from tokendealer.service.dealer import Dealer

blueprint = Blueprint("documents", __name__)

JWKS_TYPE = "application/jwk-set+json"


def _cached(body: bytes, content_type: str, dealer: Dealer) -> Response:
    max_age = dealer.settings.jwks_max_age
    headers = {"Cache-Control": f"public, max-age={max_age}"}
    return Response(body, content_type=content_type, headers=headers)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":"))
    return Response(data, status=status, content_type="application/json", headers=headers)


@blueprint.get(paths.JWKS)
@rate_exempt
async def jwks() -> Response:
    d = dealer()
    if not d.keys_loaded:
        # The database holds the keys and has not answered since this worker started:
        # an empty set cached for max-age would fail every valid token downstream.
        raise TemporarilyUnavailable()
    return _cached(d.keyset.jwks_bytes, JWKS_TYPE, d)


@blueprint.get(paths.METADATA)
@blueprint.get(paths.METADATA + "/<path:issuer_path>")
@rate_exempt
async def metadata(issuer_path: str | None = None) -> Response:
    """For an issuer with a path (``https://host/tenant``), §3.1 places the document at
    ``/.well-known/oauth-authorization-server/tenant``; both forms are served. A suffix
    naming any other path is answered 404: that URL would belong to another issuer, and
    §3.3 has clients reject a document whose ``issuer`` differs from the one they asked
    for."""
    d = dealer()
    # §3.1: "any terminating "/" MUST be removed" from the issuer before inserting.
    wanted = urlsplit(d.settings.issuer).path.strip("/")
    if issuer_path is not None and issuer_path != wanted:
        raise NotFound()
    if not d.keys_loaded:  # its signing algorithms come from the keys: not known yet
        raise TemporarilyUnavailable()
    return _cached(d.metadata_bytes, "application/json", d)


@blueprint.get("/healthz")
@rate_exempt
async def healthz() -> Response:
    """The process serves requests; it asks no backend."""
    return _json({"status": "ok"})


@blueprint.get("/readyz")
@rate_exempt
async def readyz() -> Response:
    """The store answers and a key signs: ready for traffic. Otherwise 503, naming the
    check that failed: ``{"status": "unavailable", "checks": {"store": "unavailable",
    "keys": "ok"}}``. The answer is reused for a second (``Dealer.readiness``), so a flood
    of probes cannot load the database.

    From a stop signal on, 503 with ``"shutdown": "stopping"`` among the checks: the
    worker goes on serving for ``TOKENDEALER_SHUTDOWN_DELAY`` while load balancers take
    it out of rotation (``tokendealer.draining``)."""
    checks: dict[str, str] = dict(await dealer().readiness())
    if draining.stopping():
        checks["shutdown"] = "stopping"
    if all(state == "ok" for state in checks.values()):
        return _json({"status": "ok", "checks": checks}, headers=NO_STORE)
    headers = {**NO_STORE, **TemporarilyUnavailable().headers}
    return _json({"status": "unavailable", "checks": checks}, 503, headers)
