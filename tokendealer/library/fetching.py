"""What the library's two fetchers share (``TokenClient``, ``TokenVerifier``): an HTTP
client per fetch unless one was injected, an asyncio lock or fetch task per event loop,
and bounded document fetches.

Fetches are rare (once per token lifetime, once per key set lifetime), so a client of
our own lives for one fetch only: nothing to close, no binding to an event loop, and one
fetcher object serves every thread and loop of a process.

httpx's timeouts bound each network operation, not a whole response: a server sending
one byte a second never trips them. ``_get_document`` therefore refuses a document over
a size cap (by ``Content-Length`` before reading, else while streaming); the async callers
bound a whole fetch with ``asyncio.timeout``, and ``_get_document_sync`` bounds it with a
watchdog that shuts the connection's socket down at the deadline.

Every request carries the W3C trace context of the caller's current span
(``traced_headers``) when the application uses OpenTelemetry, which the library itself
never imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx

#: A fetched document: status, headers and body.
Document = tuple[int, httpx.Headers, bytes]

_ACCEPT_JSON = {"Accept": "application/json"}


def traced_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers``, plus the trace context of the current span (``traceparent``, and what
    else the application's propagators add) when the application uses OpenTelemetry: the
    issuer's spans then join the caller's trace. Without it (OpenTelemetry never imported
    by the process), ``headers`` itself, at the cost of one dictionary lookup."""
    if "opentelemetry" not in sys.modules:
        return headers
    try:
        from opentelemetry import propagate
    except ImportError:  # another distribution of the namespace, without the API
        return headers
    carrier = dict(headers)
    propagate.inject(carrier)
    return carrier


class FetchFailed(Exception):
    """A fetch ran past its deadline, or its document was larger than allowed."""


def _check_length(response: httpx.Response, max_bytes: int) -> None:
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise FetchFailed(f"document too large (Content-Length {length})")


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (``time.monotonic``); FetchFailed when none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchFailed("deadline exceeded")
    return left


def _capped(timeout: httpx.Timeout, seconds: float) -> httpx.Timeout:
    """``timeout`` with no operation allowed longer than ``seconds``."""

    def cap(value: float | None) -> float:
        return seconds if value is None else min(value, seconds)

    return httpx.Timeout(
        connect=cap(timeout.connect),
        read=cap(timeout.read),
        write=cap(timeout.write),
        pool=cap(timeout.pool),
    )


@contextmanager
def _watchdog(deadline: float) -> Iterator[dict[str, Any]]:
    """Request extensions for httpx that get the socket of each new connection shut down
    when ``time.monotonic()`` reaches ``deadline``: a blocked read then returns at once,
    whatever the server trickles (the status line and headers too, which httpx reads in
    one call). httpcore's ``trace`` extension names the stream of each connection made.
    """
    sockets: list[socket.socket] = []
    lock = threading.Lock()
    expired = False

    def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with lock:
                    sockets.append(sock)
                    if expired:
                        _shut(sock)

    def expire() -> None:
        nonlocal expired
        with lock:
            expired = True
            for sock in sockets:
                _shut(sock)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    timer.daemon = True
    timer.start()
    try:
        yield {"trace": trace}
    finally:
        timer.cancel()
    if expired:
        raise FetchFailed("deadline exceeded")


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class Fetcher:
    timeout: float
    _http: httpx.AsyncClient | None
    _sync_http: httpx.Client | None

    def __init__(
        self,
        timeout: float,
        http_client: httpx.AsyncClient | None,
        sync_http_client: httpx.Client | None,
    ) -> None:
        self.timeout = timeout
        self._http = http_client
        self._sync_http = sync_http_client
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._locks_guard = threading.Lock()

    def _async_lock(self) -> asyncio.Lock:
        """This event loop's lock. An asyncio.Lock belongs to one loop, so each loop (a
        thread's own ``asyncio.run``, a new test) has one, kept while the loop lives:
        callers on one loop share one fetch, and loops running at once never replace each
        other's lock (which let every caller fetch)."""
        loop = asyncio.get_running_loop()
        with self._locks_guard:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
        return lock

    def _fetch_in_flight(self) -> asyncio.Task[None] | None:
        """This event loop's background fetch (see ``_start_fetch``), if one is running."""
        with self._locks_guard:
            task = self._tasks.get(asyncio.get_running_loop())
        return None if task is None or task.done() else task

    def _start_fetch(self, fetch: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """This event loop's fetch in flight, else ``fetch()`` started as a task of its own:
        one fetch at a time per loop, which callers may await (through ``asyncio.shield``,
        so that a cancelled caller does not cancel it for the others) or leave running in
        the background. A task is forgotten when done, so no loop is kept alive by it."""
        loop = asyncio.get_running_loop()
        with self._locks_guard:
            # A loop closed without running its tasks to the end leaves them pending
            # forever: forget them (they hold their loop), or every such loop is kept.
            for closed in [other for other in self._tasks if other.is_closed()]:
                del self._tasks[closed]
            task = self._tasks.get(loop)
            if task is None or task.done():
                task = self._tasks[loop] = loop.create_task(fetch())
                task.add_done_callback(self._forget_fetch)
        return task

    def _forget_fetch(self, task: asyncio.Task[None]) -> None:
        with self._locks_guard:
            if self._tasks.get(task.get_loop()) is task:
                del self._tasks[task.get_loop()]

    @asynccontextmanager
    async def _async_http(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
        else:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                yield http

    @contextmanager
    def _sync_http_client(self) -> Iterator[httpx.Client]:
        if self._sync_http is not None:
            yield self._sync_http
        else:
            with httpx.Client(timeout=self.timeout) as http:
                yield http

    async def _get_document(self, url: str, max_bytes: int) -> Document:
        """GET ``url`` as JSON, refusing (``FetchFailed``) a body over ``max_bytes``.

        No deadline of its own: the caller bounds the whole fetch with ``asyncio.timeout``.
        """
        async with (
            self._async_http() as http,
            http.stream("GET", url, headers=traced_headers(_ACCEPT_JSON)) as response,
        ):
            _check_length(response, max_bytes)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchFailed("document too large")
            return response.status_code, response.headers, bytes(body)

    def _get_document_sync(self, url: str, max_bytes: int, deadline: float) -> Document:
        """The blocking counterpart of ``_get_document``, given up (``FetchFailed``) once
        ``time.monotonic()`` passes ``deadline``.

        The deadline is checked between reads of the body, no single connect, write or
        read may last longer than the time left when the request starts, and a watchdog
        shuts the connection down at the deadline (``_watchdog``: a status line and headers
        trickled byte by byte are read by httpx in one call). A pooled connection of an
        injected client is reused without a new connect, so the watchdog does not see it:
        only the per-operation bound applies to it.
        """
        with self._sync_http_client() as http, _watchdog(deadline) as extensions:
            timeout = _capped(http.timeout, _remaining(deadline))
            with http.stream(
                "GET",
                url,
                headers=traced_headers(_ACCEPT_JSON),
                timeout=timeout,
                extensions=extensions,
            ) as response:
                _check_length(response, max_bytes)
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchFailed("document too large")
                    _remaining(deadline)
                return response.status_code, response.headers, bytes(body)
