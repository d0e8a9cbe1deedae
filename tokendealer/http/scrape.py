"""``GET /metrics``: the Prometheus text format, every worker's values summed
(``tokendealer.observe.metrics``). Exempt from rate limits (a scraper must never see a
429) and off with ``TOKENDEALER_METRICS=false`` (then 404).

The page names registered client ids (their token counts): serve it to the monitoring
network only (see README.rst, "Metrics").
"""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response, current_app
from quart_rate_limiter import rate_exempt

from tokendealer.http.responses import NO_STORE
from tokendealer.observe import metrics
from tokendealer.protocol import paths
from tokendealer.service.dealer import Dealer

blueprint = Blueprint("metrics", __name__)


@blueprint.get(paths.METRICS)
@rate_exempt
async def scrape() -> Response:
    dealer: Dealer | None = current_app.extensions.get("tokendealer")
    keyset = dealer.keyset if dealer is not None else None
    # Reading every worker's file is file I/O: off the event loop.
    body = await asyncio.to_thread(metrics.render, keyset)
    return Response(body, content_type=metrics.CONTENT_TYPE, headers=NO_STORE)
