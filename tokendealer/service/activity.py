"""When each client last got a token, and how many of its requests were early (token
waste, ``tokendealer.service.waste``), noted without a write per token.

Each process writes a client's ``last_token_at`` at most once per ``every`` seconds, and
the early requests it counted at most once per ``every`` seconds for all clients at once,
in the background: a token request never waits for it, and a store that fails it costs
the note, not the token.
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
        #: Early requests counted since the last write, per registered client.
        self._early: dict[str, int] = {}
        self._early_flush: asyncio.Future[None] | None = None

    def early_request(self, client_id: str) -> None:
        """One more early token request of ``client_id`` (a registered client)."""
        self._early[client_id] = self._early.get(client_id, 0) + 1
        if self._early_flush is None:
            self._early_flush = asyncio.ensure_future(self._flush_early_later())

    async def _flush_early_later(self) -> None:
        try:
            await asyncio.sleep(self.every)
        finally:
            self._early_flush = None
            await self._flush_early()

    async def _flush_early(self) -> None:
        counts, self._early = self._early, {}
        if not counts:
            return
        try:
            await self.store.add_early_token_requests(counts)
        except StoreError as exc:
            log.info("early_token_requests_not_recorded", reason=str(exc))

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
        """Wait for the notes under way, and write the early requests counted so far (at
        shutdown, and in tests)."""
        flush = self._early_flush
        if flush is not None:
            flush.cancel()  # it writes the counts as it ends
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flush
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._pending)
