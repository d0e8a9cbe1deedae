"""What the library's two fetchers share (``TokenClient``, ``TokenVerifier``): an HTTP
client per fetch unless one was injected, and an asyncio lock per event loop.

Fetches are rare (once per token lifetime, once per key set lifetime), so a client of
our own lives for one fetch only: nothing to close, no binding to an event loop, and one
fetcher object serves every thread and loop of a process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx


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
        self._lock = asyncio.Lock()
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _async_lock(self) -> asyncio.Lock:
        # An asyncio.Lock belongs to one event loop; a new loop (e.g. a new test, a
        # second asyncio.run) gets its own lock rather than an error.
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:
            self._lock_loop = loop
            self._lock = asyncio.Lock()
        return self._lock

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
