"""The app factory: ``create_app(settings)`` wires store, keys, limits and routes.

Quart is the service's shell: configuration, lifecycle (``before_serving`` opens the store
and loads the keys, ``after_serving`` closes it, so ``async with app.test_app()`` runs
the real startup), the test client, the documents (``tokendealer.http.documents``) and
quart-rate-limiter on its routes. The OAuth endpoints are answered by the pipeline
(``tokendealer.http.pipeline``), mounted in Quart's ASGI chain (``app.asgi_app``, Quart's
documented place for middleware, which its test client goes through too), inside the
layer that gives every request its id, access line and metrics
(``tokendealer.http.observed``). Nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from quart import Quart, request

from tokendealer.http import observed
from tokendealer.http.documents import blueprint as documents
from tokendealer.http.endpoints import ENDPOINTS
from tokendealer.http.errors import register_error_handlers
from tokendealer.http.exchange import check_head
from tokendealer.http.limits import Limiter, install_route_limits
from tokendealer.http.observed import Observed
from tokendealer.http.pipeline import Pipeline
from tokendealer.http.scrape import blueprint as scrape
from tokendealer.keys.keyset import ensure_key
from tokendealer.keys.watch import watch_keys
from tokendealer.log import configure, get_logger
from tokendealer.observe import metrics
from tokendealer.observe.tracing import configure as configure_tracing
from tokendealer.outage import Outage
from tokendealer.ratelimit.stores import store_for as limit_store_for
from tokendealer.service.dealer import Dealer
from tokendealer.settings import ConfigError, Settings
from tokendealer.store import Store, StoreError, StoreUnavailable

log = get_logger("tokendealer")

#: Exit status of a worker whose app cannot be built: uvicorn's ``STARTUP_FAILURE``, on
#: which its supervisor stops instead of starting the worker again and again (the same
#: environment would fail the same way). Hypercorn stops on any non-zero exit.
STARTUP_FAILURE = 3


def create_app(settings: Settings, store: Store | None = None) -> Quart:
    # No static files: without static_folder=None Quart adds /static/<path:filename>.
    app = Quart("tokendealer", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        BODY_TIMEOUT=settings.body_timeout,
        # No timeout on sending a response: every response here is a few hundred bytes,
        # so it never waits on the client, and the timeout costs a task per request.
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
        TOKENDEALER_TRUSTED_PROXIES=settings.trusted_proxies,
    )
    app.register_blueprint(documents)
    if settings.metrics:
        app.register_blueprint(scrape)
    if settings.admin:
        # Imported here: with the admin API and console off (TOKENDEALER_ADMIN=false), a
        # worker never loads them, nor what they need (argon2, quart-auth, the admin layer).
        from tokendealer.http.admin.api import admin_api
        from tokendealer.http.console import install as install_console

        app.register_blueprint(admin_api(settings))
        install_console(app, settings)
    register_error_handlers(app)
    configure_tracing(app)  # on with OTEL_EXPORTER_OTLP_ENDPOINT (observe.tracing)

    @app.before_request
    async def _check_head() -> None:
        record = observed.current()
        if record is not None:
            record.endpoint = request.endpoint or observed.UNMATCHED
        check_head(request.scope, settings.max_head_bytes)

    # One limit store for both limiters; quart-rate-limiter opens and closes it.
    limit_store = limit_store_for(settings)
    install_route_limits(app, limit_store)
    limiter = Limiter(settings, limit_store, lambda: app.extensions.get("tokendealer"))
    app.extensions["tokendealer.limiter"] = limiter

    @app.before_serving
    async def _start() -> None:
        if settings.key_store == "directory":
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
        if settings.key_store == "database":
            # Keys from the database (a first one if it has none: serve made it already,
            # unless this app runs under another server); the watcher retries a failure.
            with contextlib.suppress(StoreError):
                kid = await dealer.key_source.ensure_key()
                if kid is not None:
                    log.info("signing_key_created", kid=kid, key_store="database")
            await dealer.refresh_keys()
        app.extensions["tokendealer"] = dealer
        metrics.serving()
        for name, backend in (("store", dealer.store), ("rate_limit_store", limit_store)):
            outage: Outage | None = getattr(backend, "outage", None)  # tracked by some only
            if outage is None or not outage.down:
                metrics.backend_up(name)
        watcher = asyncio.create_task(
            watch_keys(dealer.refresh_keys, interval=settings.key_watch_interval)
        )
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
            await dealer.activity.drain()
            dealer.close()
            await dealer.store.close()
        metrics.worker_stopped()

    pipeline = Pipeline(app, ENDPOINTS, settings, limiter)
    app.asgi_app = Observed(pipeline, settings)  # type: ignore[assignment, method-assign]
    return app


def routes(app: Quart) -> Iterator[tuple[str, frozenset[str]]]:
    """Every route ``app`` answers, the pipeline's and Quart's: (path, methods).

    Quart's implicit HEAD and OPTIONS methods are left out.
    """
    for endpoint in ENDPOINTS:
        yield endpoint.path, frozenset({endpoint.method})
    for rule in app.url_map.iter_rules():
        yield rule.rule, frozenset(rule.methods or ()) - {"HEAD", "OPTIONS"}


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
