"""The app factory: ``create_app(settings)`` wires store, keys and routes.

The routes are Quart's (blueprints) and, for the token endpoint, a plain ASGI route in
front of Quart (``tokendealer.http.asgi``); ``routes(app)`` lists both kinds. Nothing is
built at import time. The store is opened (and its schema migrated) and the
keys are loaded in ``before_serving``, so ``async with app.test_app()`` runs the real
startup; the store is closed in ``after_serving``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from quart import Quart, Response, g, request

from tokendealer.http import health, introspect, jwks, metadata, revoke, token, verify
from tokendealer.http.asgi import PlainRoutes, Route
from tokendealer.http.errors import register_error_handlers
from tokendealer.http.exchange import check_head
from tokendealer.http.ratelimit import Limiter
from tokendealer.keys.keyset import ensure_key
from tokendealer.keys.watch import watch_keys
from tokendealer.log import configure, get_logger, log_request
from tokendealer.ratelimit.gcra import LimitStore, MemoryStore
from tokendealer.service.dealer import Dealer
from tokendealer.settings import ConfigError, Settings
from tokendealer.store import Store, StoreUnavailable

log = get_logger("tokendealer")

#: Request bodies above this are answered 413 before they are read in full.
MAX_BODY_BYTES = 64 * 1024
#: Routes answered without Quart, in front of it (see ``tokendealer.http.asgi``).
PLAIN_ROUTES: tuple[Route, ...] = (token.ROUTE,)


def create_app(settings: Settings, store: Store | None = None) -> Quart:
    # No static files: without static_folder=None Quart adds /static/<path:filename>.
    app = Quart("tokendealer", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = 10
    # No timeout on sending a response: every response here is a few hundred bytes, so
    # it never waits on the client, and the timeout costs a task per request.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for module in (introspect, revoke, metadata, jwks, verify, health):
        app.register_blueprint(module.blueprint)
    register_error_handlers(app)
    app.before_request(_check_head)
    # Opens and closes its store in before_serving / after_serving.
    Limiter(app, settings, _limit_store(settings))

    @app.before_serving
    async def _start() -> None:
        kid = ensure_key(settings.keys_dir)
        if kid is not None:
            log.info("signing_key_created", kid=kid, keys_dir=str(settings.keys_dir))
        dealer = Dealer.from_settings(settings, store)
        # The database may be down as this worker starts (one restarted during an outage,
        # say): serve all the same, 503 until it answers, rather than fail startup and
        # have the server stop every worker. ``serve`` migrated the schema before any
        # worker started; the store has logged the outage.
        with contextlib.suppress(StoreUnavailable):
            await dealer.store.open(seconds=settings.database_timeout)
        app.extensions["tokendealer"] = dealer
        watcher = asyncio.create_task(watch_keys(dealer.refresh_keys))
        app.extensions["tokendealer.keywatch"] = watcher

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
    app.asgi_app = PlainRoutes(app, PLAIN_ROUTES, settings.access_log)  # type: ignore[assignment, method-assign]
    return app


def routes(app: Quart) -> Iterator[tuple[str, frozenset[str], Callable[..., Any]]]:
    """Every route ``app`` answers, Quart's and the plain ASGI ones: (path, methods, view).

    Quart's implicit HEAD and OPTIONS methods are left out.
    """
    for rule in app.url_map.iter_rules():
        methods = frozenset(rule.methods or ()) - {"HEAD", "OPTIONS"}
        yield rule.rule, methods, app.view_functions[rule.endpoint]
    for route in PLAIN_ROUTES:
        yield route.path, frozenset({route.method}), route.handler


async def _check_head() -> None:
    check_head(request.scope)


def _limit_store(settings: Settings) -> LimitStore:
    if settings.redis_url is None:
        return MemoryStore()
    try:
        from tokendealer.ratelimit.redis_store import RedisStore  # redis is an optional extra
    except ImportError as exc:
        raise ConfigError(
            "TOKENDEALER_REDIS_URL needs the redis package: pip install 'tokendealer[redis]'"
        ) from exc
    return RedisStore(settings.redis_url, settings.redis_key_prefix)


def _install_access_log(app: Quart) -> None:
    @app.before_request
    async def _mark() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def _log(response: Response) -> Response:
        started = g.get("started", time.perf_counter())
        log_request(request.method, request.path, response.status_code, started)
        return response


#: Exit status of a worker whose app cannot be built: uvicorn's ``STARTUP_FAILURE``, on
#: which its supervisor stops instead of starting the worker again and again (the same
#: environment would fail the same way). Hypercorn stops on any non-zero exit.
STARTUP_FAILURE = 3


def app_from_env() -> Quart:
    """Entry point for ASGI servers (``uvicorn --factory``): settings from the environment.

    A configuration error is one log line and exit ``STARTUP_FAILURE``, never a restart
    loop; ``tokendealer serve`` finds such errors earlier, before any worker starts.
    """
    configure()
    try:
        return create_app(Settings.from_env())
    except ConfigError as exc:
        log.error("configuration_error", error=str(exc))
    except Exception:
        log.exception("app_factory_failed")
    raise SystemExit(STARTUP_FAILURE)
