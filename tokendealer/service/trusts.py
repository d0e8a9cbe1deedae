"""A per-process read-through cache of trusted issuers (workload identity), kept
``ttl`` seconds (``TOKENDEALER_CLIENT_CACHE_TTL``, as client records): a federated
client's token request reads its trust from the store at most once per ``ttl``, and
concurrent lookups of one trust share one read (a burst of a federated client's
requests, right or wrong, costs one read). A trust added or removed with the CLI is seen
by every worker within ``ttl`` seconds."""

from __future__ import annotations

import time

from tokendealer.protocol.trusts import Trust
from tokendealer.service.flights import SharedTasks
from tokendealer.store import Store

_MAX_ENTRIES = 1024


class TrustRegistry:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Trust | None]] = {}
        #: The read in progress for each trust being looked up.
        self._reads: SharedTasks[str, Trust | None] = SharedTasks()

    async def get(self, name: str) -> Trust | None:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return await self._reads.join(name, lambda: self._read(name))

    async def _read(self, name: str) -> Trust | None:
        started = time.monotonic()
        trust = await self.store.get_trust(name)
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        self._cache[name] = (started, trust)
        return trust
