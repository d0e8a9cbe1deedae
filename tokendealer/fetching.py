"""What the library's two fetchers share (``TokenClient``, ``TokenVerifier``): an HTTP
client per fetch unless one was injected, and an asyncio lock per event loop.

Fetches are rare (once per token lifetime, once per key set lifetime), so a client of
our own lives for one fetch only: nothing to close, no binding to an event loop, and one
fetcher object serves every thread and loop of a process.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
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
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
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
