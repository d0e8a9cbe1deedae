"""Liveness and readiness probes."""

from __future__ import annotations

from quart import Blueprint, Response

from tokendealer.http.ratelimit import rate_exempt
from tokendealer.http.responses import NO_STORE, dealer, json_response
from tokendealer.protocol.errors import TemporarilyUnavailable

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
# Probes are exempt on purpose: an orchestrator must never see a 429 from them.
@rate_exempt
async def healthz() -> Response:
    """The process serves requests; it asks no backend."""
    return json_response({"status": "ok"})


@blueprint.get("/readyz")
@rate_exempt
async def readyz() -> Response:
    """The store answers and a key signs: ready for traffic. Otherwise 503, naming the
    check that failed: ``{"status": "unavailable", "checks": {"store": "unavailable",
    "keys": "ok"}}``. The answer is reused for a second (``Dealer.readiness``), so a flood
    of probes, which are exempt from limits, cannot load the database."""
    checks = await dealer().readiness()
    if all(state == "ok" for state in checks.values()):
        return json_response({"status": "ok", "checks": checks}, headers=NO_STORE)
    headers = {**NO_STORE, **TemporarilyUnavailable().headers}
    return json_response({"status": "unavailable", "checks": checks}, 503, headers)
