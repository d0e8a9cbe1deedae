"""The deny-list of revoked tokens (RFC 7009), kept in the store so every replica shares it.

A revoked ``jti`` stays listed until the token's own ``exp``; expired entries are purged
at most once a minute per process, on the revocation path. Positive answers are cached
until the token's ``exp`` (a revoked token never comes back); negative answers for
``ttl`` seconds, the same bound as client changes, so another replica sees a revocation
within ``ttl``.
"""

from __future__ import annotations

import time

from tokendealer.store import Store

PURGE_INTERVAL = 60.0
_MAX_ENTRIES = 100_000


class DenyList:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._revoked: dict[str, float] = {}  # jti -> exp
        self._not_revoked: dict[str, float] = {}  # jti -> checked at (monotonic)
        self._last_purge = 0.0

    async def contains(self, jti: str, expires_at: float) -> bool:
        """Is the token ``jti`` (which expires at ``expires_at``) revoked?"""
        if jti in self._revoked:
            return True
        now = time.monotonic()
        checked = self._not_revoked.get(jti)
        if checked is not None and now - checked < self.ttl:
            return False
        revoked = await self.store.is_revoked(jti)
        if len(self._not_revoked) >= _MAX_ENTRIES:
            self._not_revoked.clear()
        if revoked:
            self._remember(jti, expires_at)
        else:
            self._not_revoked[jti] = now
        return revoked

    async def add(self, jti: str, client_id: str, expires_at: float) -> None:
        await self.store.revoke_token(jti, client_id, expires_at)
        self._remember(jti, expires_at)
        now = time.time()
        if now - self._last_purge >= PURGE_INTERVAL:
            self._last_purge = now
            await self.store.purge_revoked(now)

    def _remember(self, jti: str, expires_at: float) -> None:
        if len(self._revoked) >= _MAX_ENTRIES:
            now = time.time()
            live = {k: v for k, v in self._revoked.items() if v > now}
            if len(live) >= _MAX_ENTRIES // 2:
                # Still full of live entries: forget the older half (the store keeps them;
                # a forgotten jti costs one query when next seen).
                live = dict(list(live.items())[len(live) // 2 :])
            self._revoked = live
        self._revoked[jti] = expires_at
        self._not_revoked.pop(jti, None)
