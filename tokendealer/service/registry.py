"""A per-process read-through cache of client records, with one read per id at a time.

The token endpoint looks a client up on every request; the cache turns that into one
database read per client per ``ttl`` seconds. Changes made with the CLI (new, disabled,
removed, rotated clients) are therefore seen by every worker within ``ttl`` seconds; a
change written through this process's store (the admin API, the console) at once, as the
store tells the registry to forget the record.

Concurrent lookups of an id that is not cached share one read (single flight): a burst of
requests for one client, or one unknown id, costs the store one query, not one per
request. A read that fails (``StoreUnavailable``) fails every lookup that waited for it
and is not cached: the next lookup reads again.
"""

from __future__ import annotations

import asyncio
import time

from tokendealer.protocol.clients import Client
from tokendealer.store import Store

_MAX_ENTRIES = 10_000


class ClientRegistry:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}
        #: The read in progress for each id being looked up.
        self._reads: dict[str, asyncio.Task[Client | None]] = {}
        store.watch_clients(self.forget)

    def forget(self, client_id: str) -> None:
        """Drop the cached record: the next lookup reads the store. A read in flight
        began before the change, so it is not shared with lookups after it."""
        self._cache.pop(client_id, None)
        self._reads.pop(client_id, None)

    async def get(self, client_id: str) -> Client | None:
        hit = self._cache.get(client_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        read = self._reads.get(client_id)
        if read is None:
            read = asyncio.create_task(self._read(client_id))
            self._reads[client_id] = read
            read.add_done_callback(lambda done: self._read_done(client_id, done))
        # A waiter that is cancelled (its client went away) leaves the read to the others.
        return await asyncio.shield(read)

    async def _read(self, client_id: str) -> Client | None:
        started = time.monotonic()
        client = await self.store.get_client(client_id)
        if self._reads.get(client_id) is not asyncio.current_task():
            return client  # forgotten meanwhile: what it read may predate a change
        if len(self._cache) >= _MAX_ENTRIES:
            # Unknown ids from an attacker must not grow memory without bound.
            self._cache.clear()
        self._cache[client_id] = (started, client)
        return client

    def _read_done(self, client_id: str, read: asyncio.Task[Client | None]) -> None:
        if self._reads.get(client_id) is read:
            del self._reads[client_id]
        if not read.cancelled():
            read.exception()  # retrieved: every waiter may have gone before it failed
