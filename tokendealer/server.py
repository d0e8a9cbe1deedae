"""Running the service on an ASGI server, one worker process per core.

The parent process prepares everything once (schema, first key, a check that every key
file loads) so that a bad key or an unreachable database stops ``serve`` with one line
before any worker starts; each worker then builds its app with ``app_from_env``.

Two servers are supported. Uvicorn (with uvloop and httptools) is the default because it
measured faster on the token endpoint (``bench/bench_service.py``); Hypercorn, Quart's own
server, is selectable with ``--server hypercorn``.
"""

from __future__ import annotations

import asyncio

from tokendealer.keys import ensure_key, load_keyset
from tokendealer.log import get_logger
from tokendealer.settings import Settings
from tokendealer.store import SQLStore

APP_FACTORY = "tokendealer.http.app:app_from_env"
SERVERS = ("uvicorn", "hypercorn")
#: Seconds an idle keep-alive connection is kept; slow clients do not hold workers.
KEEP_ALIVE = 5
#: Seconds a request head may take (uvicorn) or a connection may stay silent (Hypercorn)
#: before the connection is closed; equal to the app's BODY_TIMEOUT (requests are small
#: and answered in milliseconds).
READ_TIMEOUT = 10
#: Largest request head (request line + headers) accepted, in bytes; over it, 431.
MAX_HEADER_BYTES = 16 * 1024

log = get_logger("tokendealer.server")


def prepare(settings: Settings) -> None:
    """Create the store's schema and the first key; check every key loads."""
    kid = ensure_key(settings.keys_dir)
    if kid is not None:
        log.info("signing_key_created", kid=kid, keys_dir=str(settings.keys_dir))
    load_keyset(settings.keys_dir)

    async def _migrate() -> None:
        store = SQLStore(settings.sqlalchemy_url)
        try:
            await store.open()
        finally:
            await store.close()

    asyncio.run(_migrate())


def run(host: str, port: int, workers: int, server: str) -> None:
    if server == "hypercorn":
        _run_hypercorn(host, port, workers)
    else:
        _run_uvicorn(host, port, workers)


def _run_uvicorn(host: str, port: int, workers: int) -> None:
    import uvicorn

    from tokendealer.uvicorn_protocol import GuardedHttpToolsProtocol

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Our own access log records method, path and status, never the query string.
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE,
        # httptools with a request-head size cap and head timeout (uvicorn_protocol).
        http=GuardedHttpToolsProtocol,
        # uvicorn's default rewrites the client address from X-Forwarded-For when the
        # peer is 127.0.0.1; the app alone decides, through TOKENDEALER_TRUSTED_PROXIES,
        # which X-Forwarded-For entry to believe (a rotated header escaped rate limits).
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


def _run_hypercorn(host: str, port: int, workers: int) -> None:
    from hypercorn.config import Config
    from hypercorn.run import run as hypercorn_run

    config = Config()
    config.application_path = APP_FACTORY + "()"
    config.bind = [f"{host}:{port}"]
    config.workers = workers
    config.worker_class = "uvloop"
    config.keep_alive_timeout = KEEP_ALIVE
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    # A connection that sends nothing for this long is closed (slow or idle clients).
    config.read_timeout = READ_TIMEOUT
    config.include_server_header = False
    config.graceful_timeout = 10
    hypercorn_run(config)
