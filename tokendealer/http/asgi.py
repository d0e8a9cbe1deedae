"""Routes served as plain ASGI handlers, in front of the Quart app.

The token endpoint is the service's hot path. Each token costs one RSA signature, and
Quart's per-request machinery (request and app contexts, two tasks and an
``asyncio.wait`` per request, Werkzeug headers, signals) measured about half as much
again on top of it (``bench/bench_service.py``). So a ``Route`` here is a handler that
takes an ``Exchange`` and returns a ``Reply``; ``PlainRoutes`` wraps ``app.asgi_app``
(Quart's documented place for middleware, which its test client goes through too),
answers the paths of its routes and hands every other request to Quart.

Such a route shares everything but the framework with the Quart routes: form and
credential parsing, client authentication, the limiter and its markers, the error
mapping (``error_reply``), the request-head guard and the access log.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from quart import Quart
from werkzeug.exceptions import MethodNotAllowed

from tokendealer.http.errors import error_reply
from tokendealer.http.exchange import (
    ClientDisconnected,
    Exchange,
    Receive,
    Scope,
    Send,
    check_head,
    send_reply,
)
from tokendealer.http.ratelimit import EXTENSION, Limiter
from tokendealer.http.responses import Reply
from tokendealer.log import log_request
from tokendealer.service.dealer import Dealer

Handler = Callable[[Exchange, Dealer, Limiter], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    #: The endpoint name its rate-limit keys carry, as a Quart route's would.
    endpoint: str
    handler: Handler


class PlainRoutes:
    """ASGI middleware answering ``routes`` itself and everything else with ``app``."""

    def __init__(self, app: Quart, routes: Sequence[Route], access_log: bool) -> None:
        self.app = app
        self.downstream = app.asgi_app
        self.routes = {route.path: route for route in routes}
        self.access_log = access_log
        self.max_body: int = app.config["MAX_CONTENT_LENGTH"]
        self.body_timeout: float = app.config["BODY_TIMEOUT"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.downstream(scope, receive, send)  # type: ignore[arg-type]
            return
        started = time.perf_counter()
        exchange = Exchange(scope, receive, self.max_body, self.body_timeout)
        try:
            reply = await self._answer(route, exchange)
        except ClientDisconnected:
            return
        await send_reply(send, reply)
        if self.access_log:
            log_request(scope["method"], scope["path"], reply.status, started)

    async def _answer(self, route: Route, exchange: Exchange) -> Reply:
        scope = exchange.scope
        try:
            check_head(scope)
            if scope["method"] != route.method:
                raise MethodNotAllowed(valid_methods=[route.method])
            dealer: Dealer = self.app.extensions["tokendealer"]
            limiter: Limiter = self.app.extensions[EXTENSION]
            return await route.handler(exchange, dealer, limiter)
        except ClientDisconnected:
            raise
        except Exception as error:
            return error_reply(error, scope["path"])
