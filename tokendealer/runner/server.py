"""Running the service on an ASGI server, one worker process per core.

``tokendealer serve`` runs these steps in the parent process, in this order:

1. ``bind(host, port)`` takes the address; a port in use is one line and nothing else
   has been touched.
2. ``prepare(settings)`` does once what every worker would do at startup: build the app
   (``create_app``: the rate-limit store's backend must import), open and close its
   rate-limit store (a Redis URL must parse), create the first key and load every key,
   open the store (migrating its schema). Any configuration error thus stops ``serve``
   with one line before any worker starts, whatever the worker count.
3. ``listen(sock, listeners_for(workers, server))`` starts accepting connections: on
   that socket, or for uvicorn's workers on one ``SO_REUSEPORT`` socket per worker, so
   that the kernel spreads connections evenly; ``log_start`` logs the one startup line
   (address, store without password, keys directory).
4. ``run(sockets, workers, server)`` hands those sockets to the server, whose workers
   each build their app with ``app_from_env``. The address is bound by us: no window
   between a check and the server's own bind, and both servers fail the same way.

Should a worker still fail while starting (the database went away between the two),
``app_from_env`` and uvicorn's lifespan exit with ``STARTUP_FAILURE``, which makes the
uvicorn supervisor stop rather than restart the worker forever (``serve`` then exits 3);
Hypercorn stops on any worker exiting non-zero. ``run`` returns the exit status.

Two servers are supported. Uvicorn (with httptools) is the default because it measured
faster on the token endpoint (``bench/bench_service.py``); Hypercorn, Quart's own server,
is selectable with ``--server hypercorn``. Both run the event loop of
``Settings.event_loop``: asyncio's by default, or uvloop.

Both stop gracefully on SIGTERM or SIGINT (``tokendealer.draining``: ``/readyz``
503, ``shutdown_delay``, stop accepting, ``shutdown_timeout`` for the requests in flight,
the store closed, exit status 0), through ``tokendealer.runner.uvicorn_server`` and
``tokendealer.runner.hypercorn_server``.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import re
import socket
import sys
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from tokendealer.keys.keyset import ensure_key
from tokendealer.log import get_logger
from tokendealer.settings import PREFIX, ConfigError, Settings

if TYPE_CHECKING:  # the app is imported only by ``serve``: other commands stay quick
    from quart import Quart

APP_FACTORY = "tokendealer.http.app:app_from_env"
SERVERS = ("uvicorn", "hypercorn")
#: Connections the kernel queues before a worker accepts them (both servers' default).
BACKLOG = 2048

log = get_logger("tokendealer.server")


class ListenError(RuntimeError):
    """The address cannot be listened on; the message says which and why."""


def prepare(settings: Settings) -> None:
    """Check, once, everything a worker needs at startup; create the schema and first key.

    Raises ConfigError, KeyFileError or StoreError (one line each) on the first problem.
    """
    from tokendealer.http.app import create_app

    # What each worker's factory builds; a missing optional package fails here.
    app = create_app(settings)
    asyncio.run(_open_and_close(app, settings))


async def _open_and_close(app: Quart, settings: Settings) -> None:
    """The steps of the app's own startup (``_start`` in tokendealer.http.app), the store
    before the keys so that a bad database URL leaves no new key behind."""
    from tokendealer.keys.secret import session_secret
    from tokendealer.service.dealer import Dealer
    from tokendealer.service.key_sources import key_source
    from tokendealer.store import store_for

    limit_store = app.extensions["tokendealer.limiter"].store
    try:
        await limit_store.before_serving()
    except ValueError:  # redis-py parses the URL here; Redis down is no error
        # Not redis-py's message: it may quote a part of the password.
        raise ConfigError(
            f"{PREFIX}REDIS_URL is not a usable Redis URL (check its host, port and database "
            "number; percent-encode special characters in the password)"
        ) from None
    try:
        store = store_for(settings, log_outages=False)
        try:
            await store.open()  # imports the driver, connects, migrates the schema
            if settings.key_store == "database":
                # The first key, and every key opened: a wrong key-encryption key stops
                # serve here, with one line, before any worker starts.
                source = key_source(settings, store)
                kid = await source.ensure_key()
                if kid is not None:
                    log.info("signing_key_created", kid=kid, key_store="database")
                await source.load()
        except ModuleNotFoundError as exc:  # asyncpg for postgresql:// is an extra
            raise needs_package(f"{PREFIX}DATABASE_URL", exc) from None
        finally:
            await store.close()
        if settings.key_store == "directory":
            kid = ensure_key(settings.keys_dir)
            if kid is not None:
                log.info("signing_key_created", kid=kid, keys_dir=str(settings.keys_dir))
            Dealer.from_settings(settings, store)  # loads (and parses) every key
        if settings.admin:
            session_secret(settings)  # the console's: read, or made, once for all workers
    finally:
        await limit_store.after_serving()


def log_start(sock: socket.socket, settings: Settings, workers: int, server: str) -> None:
    """The one startup line, once ``listen`` succeeded: where the service listens, its
    store (never a password) and its keys directory, so an operator sees at a glance
    which database and keys a server runs on."""
    host, port = sock.getsockname()[:2]
    log.info(
        "serving",
        address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        store=shown_database_url(settings.database_url),
        keys_dir=str(settings.keys_dir.resolve()),
        key_store=settings.key_store,
        workers=workers,
        server=server,
    )


def shown_database_url(url: str) -> str:
    """The database URL fit for a log line or a message: without any password (in the
    user part or a ``password`` query parameter), a SQLite path made absolute."""
    if url.startswith("sqlite"):  # no credentials; the path as written, not URL-encoded
        scheme, _, rest = url.partition(":///")
        path, mark, query = rest.partition("?")
        shown = path if path in ("", ":memory:") else os.path.abspath(path)
        return f"{scheme}:///{shown}{mark}{query}"
    parsed = make_url(url)
    # A host holding an '@' is what follows an unencoded '@' in the password.
    host = parsed.host.rpartition("@")[2] if parsed.host else parsed.host
    kept = {k: v for k, v in parsed.query.items() if k.lower() != "password"}
    return parsed.set(host=host, query=kept).render_as_string(hide_password=True)


def needs_package(variable: str, exc: ModuleNotFoundError) -> ConfigError:
    """``VARIABLE needs the X package: pip install 'tokendealer[EXTRA]'``, the extra found
    in the installed package's metadata (pyproject ``optional-dependencies``)."""
    missing = exc.name or "a missing"
    message = f"{variable} needs the {missing} package"
    extras = _extras_requiring(missing)
    return ConfigError(f"{message}: pip install 'tokendealer[{extras[0]}]'" if extras else message)


def _extras_requiring(module: str) -> list[str]:
    """The extras of tokendealer whose requirements include the distribution ``module``."""
    from importlib import metadata

    try:
        requirements = metadata.requires("tokendealer") or []
    except metadata.PackageNotFoundError:  # running from a source tree, not installed
        return []
    wanted = module.replace("_", "-").lower()
    found = []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", requirement)
        if name and extra and re.sub(r"[._]", "-", name.group()).lower() == wanted:
            found.append(extra.group(1))
    return found


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, for ``listen`` and then ``run``.

    Bound like both servers bind: SO_REUSEADDR, so a restart does not wait for old
    connections in TIME_WAIT; no SO_REUSEPORT, so no later socket can share the port
    without asking. A port another process listens on fails here, before ``prepare``
    touches keys or store; so does one another ``serve`` has bound and not yet listens
    on (``_claim``).
    """
    sock = _tcp_socket(":" in host)
    try:
        sock.bind((host, port))
        _claim(host, sock.getsockname()[1])
    except OSError as exc:
        sock.close()
        raise _listen_error(host, port, exc) from None
    return sock


def _tcp_socket(ipv6: bool, *, shared: bool = False) -> socket.socket:
    """A TCP socket with SO_REUSEADDR (and SO_REUSEPORT when ``shared``), not yet bound.

    IPPROTO_TCP named, not left 0: asyncio's loop disables Nagle's algorithm only on
    sockets whose ``proto`` says TCP, and the connections accepted here inherit it.
    Without it, each response written in two parts (head, body) waited for the client's
    delayed ACK, some 40 ms (uvloop sets TCP_NODELAY whatever the proto)."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        sock.close()
        raise
    return sock


#: The addresses this process has claimed (``_claim``), each held until it exits.
_CLAIMS: dict[tuple[str, int], socket.socket] = {}


def _claim(host: str, port: int) -> None:
    """Claim ``host:port`` for this process, on Linux, with an abstract Unix socket named
    after it (scoped, like the port, to the network namespace; gone with the process).

    Two sockets with SO_REUSEADDR may both bind a port while neither listens, and two
    ``serve`` processes each replacing theirs with an SO_REUSEPORT group (``listen``)
    would then both listen and split the connections. Of two ``serve`` started together
    on one address, the second fails here: EADDRINUSE."""
    if not sys.platform.startswith("linux") or (host, port) in _CLAIMS:
        return
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0tokendealer-serve:{host}:{port}")
    except OSError:
        claim.close()
        raise OSError(errno.EADDRINUSE, "address already in use") from None
    _CLAIMS[(host, port)] = claim


def listeners_for(workers: int, server: str) -> int:
    """How many listening sockets ``listen`` makes: one per worker for uvicorn's workers
    (``SO_REUSEPORT``: the kernel spreads new connections evenly over them), else one.

    With one shared socket, each connection goes to whichever worker's loop wakes first,
    and keep-alive connections stay where they landed: under a burst, one worker could
    get most of them while the other idled (measured with ``bench/bench_vs_node.py``).
    Hypercorn hands its one socket to its workers (``fd://``) and keeps it that way."""
    return workers if workers > 1 and server == "uvicorn" else 1


def listen(sock: socket.socket, count: int = 1) -> list[socket.socket]:
    """Start listening on the address of ``sock`` (from ``bind``), once ``prepare`` has
    succeeded: on ``sock`` itself, or with ``count`` > 1 on that many sockets of one
    ``SO_REUSEPORT`` group (``sock`` closed first), one per worker.

    Such a group takes in any later socket of the same user that sets ``SO_REUSEPORT``
    too. ``bind`` never does, and claims the address for this process, so a second
    ``serve`` on the port finds it taken, whether it starts before or after this one
    listens. Between closing ``sock`` and binding the group, the port is free for an
    instant: another program could take it then, and the group would fail to bind.

    Linux lets several SO_REUSEADDR sockets bind one port until one of them listens, so
    this can still find the port taken; until then connections are refused, not queued.
    """
    if count == 1:
        try:
            sock.listen(BACKLOG)
        except OSError as exc:
            host, port = sock.getsockname()[:2]
            sock.close()
            raise _listen_error(host, port, exc) from None
        return [sock]
    address, ipv6 = sock.getsockname(), sock.family == socket.AF_INET6
    sock.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(_tcp_socket(ipv6, shared=True))
            group[-1].bind(address)
            group[-1].listen(BACKLOG)
    except OSError as exc:
        for member in group:
            member.close()
        raise _listen_error(address[0], address[1], exc) from None
    return group


def _listen_error(host: str, port: int, exc: OSError) -> ListenError:
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc.strerror)
    return ListenError(f"cannot listen on {shown}: {reason[:1].lower()}{reason[1:]}")


def run(sockets: list[socket.socket], workers: int, server: str, settings: Settings) -> int:
    """Serve on the listening ``sockets`` (from ``listen``: one, or one per worker) until
    stopped; return the exit status. The HTTP limits of ``settings`` apply to the
    connections (keep-alive, request head).

    The servers take the socket as it is (uvicorn's ``sockets=``, Hypercorn's ``fd://``)
    and never bind the address themselves: no window between our check and their bind.
    """
    if server == "hypercorn":
        [sock] = sockets
        return _run_hypercorn(sock, workers, settings)
    return _run_uvicorn(sockets, workers, settings)


def _run_uvicorn(sockets: list[socket.socket], workers: int, settings: Settings) -> int:
    from uvicorn.config import STARTUP_FAILURE

    from tokendealer.log import UVICORN_LOG_CONFIG
    from tokendealer.runner.uvicorn_protocol import GuardedHttpToolsProtocol
    from tokendealer.runner.uvicorn_server import (
        DrainingMultiprocess,
        DrainingServer,
        ServeConfig,
    )

    host, port = sockets[0].getsockname()[:2]
    # What uvicorn.run does, with our sockets instead of one it binds itself.
    config = ServeConfig(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Our own access log records method, path and status, never the query string.
        access_log=False,
        log_level="warning",
        # Its warnings and errors as JSON lines, like every other line of the log.
        log_config=UVICORN_LOG_CONFIG,
        server_header=False,
        timeout_keep_alive=math.ceil(settings.keep_alive),
        # httptools with a request-head size cap and head timeout (uvicorn_protocol).
        http=GuardedHttpToolsProtocol,
        # No websocket route: uvicorn's automatic choice would import a websocket library
        # into every worker (1.3 MiB) for nothing.
        ws="none",
        # uvicorn's default rewrites the client address from X-Forwarded-For when the
        # peer is 127.0.0.1; the app alone decides, through TOKENDEALER_TRUSTED_PROXIES,
        # which X-Forwarded-For entry to believe (a rotated header escaped rate limits).
        proxy_headers=False,
        backlog=BACKLOG,
        loop=settings.event_loop,
        # Our DrainingServer's, instead of uvicorn's timeout_graceful_shutdown.
        shutdown_delay=settings.shutdown_delay,
        shutdown_timeout=settings.shutdown_timeout,
    )
    try:
        if workers > 1:
            supervisor = DrainingMultiprocess(config, sockets=sockets)
            supervisor.run()
            # The supervisor stops, and returns normally, when a worker failed to start.
            failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
            return STARTUP_FAILURE if failed else 0
        single = DrainingServer(config)
        single.run(sockets=sockets)  # a startup failure exits with STARTUP_FAILURE
        return 0 if single.started else STARTUP_FAILURE
    except KeyboardInterrupt:
        return 0
    finally:
        for sock in sockets:
            sock.close()


def _run_hypercorn(sock: socket.socket, workers: int, settings: Settings) -> int:
    from hypercorn.config import Config

    from tokendealer.runner import hypercorn_server

    config = Config()
    config.application_path = APP_FACTORY + "()"
    # Hypercorn takes over the descriptor (and closes it); sock gives it up.
    config.bind = [f"fd://{sock.detach()}"]
    config.workers = workers
    config.worker_class = settings.event_loop
    config.backlog = BACKLOG
    # Hypercorn's read timeout restarts with every byte received, so a client trickling
    # its request head never meets it; what bounds the head is the keep-alive timer,
    # which runs until a request head is complete. Hence the shorter of the two.
    config.keep_alive_timeout = min(settings.keep_alive, settings.head_timeout)
    config.h11_max_incomplete_size = settings.max_head_bytes
    # A connection that sends nothing for this long is closed (slow or idle clients).
    config.read_timeout = math.ceil(settings.head_timeout)
    config.include_server_header = False
    # Requests in flight once the workers stop accepting; then they are cancelled.
    config.graceful_timeout = settings.shutdown_timeout
    # Our supervisor stops every worker once one exits non-zero, and returns its status.
    return hypercorn_server.run(config, workers, settings.shutdown_delay, settings.shutdown_timeout)
