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

A client's record in the last part of its life (older than ``REFRESH_AHEAD`` of ``ttl``;
not an id found unregistered, which gains nothing by it) is read again in the background
by the lookup that finds it, which it still answers: a client
with steady traffic has its record renewed before it expires, so its requests do not
all stop to wait for one read every ``ttl`` seconds. No record older than ``ttl`` is
ever answered.

The limiter asks for a client's own rate limit before the client authenticates
(``limited``): that lookup never reads for an id this process does not know as a
client's, so an unknown or random id costs a dictionary lookup, and no state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tokendealer.protocol.clients import Client
from tokendealer.service.flights import SharedTasks
from tokendealer.store import Store, StoreError

_MAX_ENTRIES = 10_000
#: The share of ``ttl`` after which a lookup renews the record in the background.
REFRESH_AHEAD = 0.75


class ClientRegistry:
    def __init__(
        self, store: Store, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Client | None]] = {}
        #: The read in progress for each id being looked up.
        self._reads: SharedTasks[str, Client | None] = SharedTasks()
        #: Ids whose read an attempt has claimed (``claim_read``), until it is done.
        self._claims: set[str] = set()
        #: Ids changed through this process's store since they were last read: written
        #: by an administrator, so ``limited`` may read them (a request's id never gets
        #: here).
        self._changed: set[str] = set()
        #: The one read of the clients with limits of their own (``limited``).
        self._preload: asyncio.Task[None] | None = None
        self._preloaded = False
        store.watch_clients(self.forget)

    def forget(self, client_id: str) -> None:
        """Drop the cached record: the next lookup reads the store. A read in flight
        began before the change, so it is not shared with lookups after it."""
        self._cache.pop(client_id, None)
        self._reads.forget(client_id)
        if len(self._changed) >= _MAX_ENTRIES:
            self._changed.clear()
        self._changed.add(client_id)

    async def get(self, client_id: str) -> Client | None:
        hit = self._cache.get(client_id)
        if hit is not None:
            age = self._clock() - hit[0]
            if age < self.ttl:
                renew = hit[1] is not None and age >= self.ttl * REFRESH_AHEAD
                if renew and client_id not in self._reads:
                    self._reads.start(client_id, self._read(client_id))  # renewed ahead
                return hit[1]
        return await self._reads.join(client_id, lambda: self._read(client_id))

    def claim_read(self, client_id: str) -> bool:
        """True when a lookup of ``client_id`` now would read the store (no record of it
        cached within ``ttl``, no read of it in flight) and no one has claimed that read:
        the caller then claims it until ``release_read``. Decided and claimed in one
        step, so that of concurrent attempts for one id only the first is the one that
        reads, whatever the others wait for before their lookup."""
        hit = self._cache.get(client_id)
        if hit is not None and self._clock() - hit[0] < self.ttl:
            return False
        if client_id in self._reads or client_id in self._claims:
            return False
        self._claims.add(client_id)
        return True

    def release_read(self, client_id: str) -> None:
        self._claims.discard(client_id)

    async def limited(self, client_id: str) -> Client | None:
        """The record of ``client_id`` for its rate limit, before it authenticates: the
        record of a client this process knows, or ``None``.

        Known are the clients this process has read (and, from its first lookup, every
        client with a limit of its own: one query, ``Store.rate_limited_clients``) and
        those changed through its store. Such a record older than ``ttl`` is read again,
        as ``get`` does (the read its authentication makes anyway, shared with it); if
        that read fails, the record held is used. An id not known as a client's, random
        or not registered when it was last read, is never read here: ``None``, at the
        cost of a dictionary lookup. So a client registered with the CLI after this
        process's first lookup has its first request here counted against the
        service-wide limit; its own applies from its next one.
        """
        if not self._preloaded:
            await self._preload_limited()
        hit = self._cache.get(client_id)
        if hit is None:
            if client_id not in self._changed:
                return None
        elif hit[1] is None:
            return None
        elif self._clock() - hit[0] < self.ttl:
            return hit[1]
        try:
            return await self.get(client_id)
        except StoreError:
            return None if hit is None else hit[1]

    async def _preload_limited(self) -> None:
        """Cache the clients with limits of their own, once (retried by the next lookup
        if the store fails); concurrent lookups share the read."""
        if self._preload is None:
            self._preload = asyncio.create_task(self._read_limited())
        preload = self._preload
        try:
            await asyncio.shield(preload)
        except StoreError:
            if self._preload is preload:
                self._preload = None

    async def _read_limited(self) -> None:
        started = self._clock()
        for client in await self.store.rate_limited_clients():
            if len(self._cache) >= _MAX_ENTRIES:
                break
            known = client.client_id in self._cache or client.client_id in self._reads
            # A client changed since the read began is read again, alone, when asked for.
            if not known and client.client_id not in self._changed:
                self._cache[client.client_id] = (started, client)
        self._preloaded = True

    async def _read(self, client_id: str) -> Client | None:
        started = self._clock()
        client = await self.store.get_client(client_id)
        if self._reads.get(client_id) is not asyncio.current_task():
            return client  # forgotten meanwhile: what it read may predate a change
        if len(self._cache) >= _MAX_ENTRIES:
            # Unknown ids from an attacker must not grow memory without bound.
            self._cache.clear()
        self._cache[client_id] = (started, client)
        self._changed.discard(client_id)
        return client
