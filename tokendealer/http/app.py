"""The app factory: ``create_app(settings)`` wires store, keys and routes.

Nothing is built at import time. The store is opened (and its schema migrated) and the
keys are loaded in ``before_serving``, so ``async with app.test_app()`` runs the real
startup; the store is closed in ``after_serving``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from quart import Quart, Response, g, request
from werkzeug.exceptions import RequestHeaderFieldsTooLarge

from tokendealer.dealer import Dealer
from tokendealer.http import health, introspect, jwks, metadata, revoke, token, verify
from tokendealer.http.errors import register_error_handlers
from tokendealer.http.ratelimit import Limiter
from tokendealer.keys import ensure_key
from tokendealer.keywatch import watch_keys
from tokendealer.log import configure, get_logger
from tokendealer.ratelimit import LimitStore, MemoryStore
from tokendealer.server import MAX_HEADER_BYTES
from tokendealer.settings import ConfigError, Settings
from tokendealer.store import Store

log = get_logger("tokendealer")

#: Request bodies above this are answered 413 before they are read in full.
MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings, store: Store | None = None) -> Quart:
    # No static files: without static_folder=None Quart adds /static/<path:filename>.
    app = Quart("tokendealer", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = 10
    # No timeout on sending a response: every response here is a few hundred bytes, so
    # it never waits on the client, and the timeout costs a task per request.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for module in (token, introspect, revoke, metadata, jwks, verify, health):
        app.register_blueprint(module.blueprint)
    register_error_handlers(app)
    app.before_request(_limit_request_head)
    # Opens and closes its store in before_serving / after_serving.
    Limiter(app, settings, _limit_store(settings))

    @app.before_serving
    async def _start() -> None:
        kid = ensure_key(settings.keys_dir)
        if kid is not None:
            log.info("signing_key_created", kid=kid, keys_dir=str(settings.keys_dir))
        dealer = Dealer.from_settings(settings, store)
        await dealer.store.open()
        app.extensions["tokendealer"] = dealer
        app.extensions["tokendealer.keywatch"] = asyncio.create_task(watch_keys(dealer))

    @app.after_serving
    async def _stop() -> None:
        watcher: asyncio.Task[None] | None = app.extensions.pop("tokendealer.keywatch", None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        dealer: Dealer | None = app.extensions.pop("tokendealer", None)
        if dealer is not None:
            await dealer.store.close()

    if settings.access_log:
        _install_access_log(app)
    return app


async def _limit_request_head() -> None:
    """431 for a request head over MAX_HEADER_BYTES, whichever server parsed it.

    The uvicorn protocol refuses such heads itself; Hypercorn's h11 cap only bounds an
    incomplete head, so a large head arriving in one piece would pass without this.
    """
    size = len(request.scope.get("raw_path") or b"") + len(request.scope.get("query_string", b""))
    for name, value in request.scope["headers"]:
        size += len(name) + len(value) + 4
    if size > MAX_HEADER_BYTES:
        raise RequestHeaderFieldsTooLarge()


def _limit_store(settings: Settings) -> LimitStore:
    if settings.redis_url is None:
        return MemoryStore()
    try:
        from tokendealer.ratelimit_redis import RedisStore  # redis is an optional extra
    except ImportError as exc:
        raise ConfigError(
            "TOKENDEALER_REDIS_URL needs the redis package: pip install 'tokendealer[redis]'"
        ) from exc
    return RedisStore(settings.redis_url, settings.redis_key_prefix)


def _install_access_log(app: Quart) -> None:
    access = get_logger("tokendealer.access")

    @app.before_request
    async def _mark() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def _log(response: Response) -> Response:
        # Path only: never the query string, headers or body (they may carry secrets).
        access.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            ms=round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
        )
        return response


def app_from_env() -> Quart:
    """Entry point for ASGI servers (``uvicorn --factory``): settings from the environment."""
    configure()
    return create_app(Settings.from_env())
