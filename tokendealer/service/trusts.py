"""A per-process read-through cache of trusted issuers (workload identity), kept
``ttl`` seconds (``TOKENDEALER_CLIENT_CACHE_TTL``, as client records): a federated
client's token request reads its trust from the store at most once per ``ttl``. A trust
added or removed with the CLI is seen by every worker within ``ttl`` seconds."""

from __future__ import annotations

import time

from tokendealer.protocol.trusts import Trust
from tokendealer.store import Store

_MAX_ENTRIES = 1024


class TrustRegistry:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Trust | None]] = {}

    async def get(self, name: str) -> Trust | None:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        started = time.monotonic()
        trust = await self.store.get_trust(name)
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        self._cache[name] = (started, trust)
        return trust
