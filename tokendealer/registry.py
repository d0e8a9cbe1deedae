"""A per-process read-through cache of client records.

The token endpoint looks a client up on every request; the cache turns that into one
database read per client per ``ttl`` seconds. Changes made with the CLI (new, disabled,
removed, rotated clients) are therefore seen by every worker within ``ttl`` seconds.
"""

from __future__ import annotations

import time

from tokendealer.store import Client, Store

_MAX_ENTRIES = 10_000


class ClientRegistry:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}

    async def get(self, client_id: str) -> Client | None:
        now = time.monotonic()
        hit = self._cache.get(client_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        client = await self.store.get_client(client_id)
        if len(self._cache) >= _MAX_ENTRIES:
            # Unknown ids from an attacker must not grow memory without bound.
            self._cache.clear()
        self._cache[client_id] = (now, client)
        return client
