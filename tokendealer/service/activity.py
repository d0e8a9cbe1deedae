"""When each client last got a token, noted without a write per token.

Each process writes a client's ``last_token_at`` at most once per ``every`` seconds, in
the background: a token request never waits for it, and a store that fails it costs the
note, not the token.
"""

from __future__ import annotations

import asyncio
import contextlib

from tokendealer.log import get_logger
from tokendealer.store.base import Store, StoreError

log = get_logger(__name__)

#: Seconds between two notes of the same client by one process.
EVERY = 60.0


class TokenActivity:
    def __init__(self, store: Store, every: float = EVERY) -> None:
        self.store = store
        self.every = every
        #: Registered clients only (a token was issued), so bounded by the registry.
        self._noted: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def token_issued(self, client_id: str, at: float) -> None:
        if at - self._noted.get(client_id, float("-inf")) < self.every:
            return
        self._noted[client_id] = at
        task = asyncio.ensure_future(self._write(client_id, at))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, client_id: str, at: float) -> None:
        try:
            await self.store.record_token_issued(client_id, at, every=self.every)
        except StoreError as exc:
            log.info("last_token_not_recorded", client_id=client_id, reason=str(exc))

    async def drain(self) -> None:
        """Wait for the notes under way (at shutdown, and in tests)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._pending)
