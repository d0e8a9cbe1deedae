"""Liveness and readiness probes."""

from __future__ import annotations

from quart import Blueprint, Response

from tokendealer.http.ratelimit import rate_exempt
from tokendealer.http.responses import dealer, json_response

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
# Probes are exempt on purpose: an orchestrator must never see a 429 from them.
@rate_exempt
async def healthz() -> Response:
    """The process serves requests."""
    return json_response({"status": "ok"})


@blueprint.get("/readyz")
@rate_exempt
async def readyz() -> Response:
    """The store answers and a key signs: ready for traffic (a StoreUnavailable is a 503)."""
    d = dealer()
    await d.store.is_revoked("readiness-probe")
    if d.keyset.active() is None:
        return json_response({"status": "no active signing key"}, 503)
    return json_response({"status": "ok"})
