"""``ClientRegistry``: concurrent lookups of one id share one store read (single flight),
and a failed read reaches every lookup that shared it without being cached.

The store's read is held until every lookup has begun, so the lookups overlap by
construction rather than by a read that takes long enough.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.environment import Register
from tokendealer.protocol.clients import Client
from tokendealer.service.dealer import Dealer
from tokendealer.service.registry import ClientRegistry
from tokendealer.store import StoreUnavailable

LOOKUPS = 50
#: Bound on a batch of lookups: one that never ends fails the test instead of hanging it.
BOUND = 10.0


@dataclass
class HeldReads:
    """Store reads that wait until all of a batch's lookups have begun, and are counted."""

    count: int = 0
    begun: int = 0
    all_begun: asyncio.Event = field(default_factory=asyncio.Event)

    async def hold(self) -> None:
        self.count += 1
        await self.all_begun.wait()

    async def lookups(self, lookup: Callable[[], Awaitable[Any]]) -> list[Any]:
        """LOOKUPS concurrent calls of ``lookup``; exceptions are returned, not raised."""
        self.begun = 0
        self.all_begun.clear()

        async def one() -> Any:
            self.begun += 1
            if self.begun == LOOKUPS:
                self.all_begun.set()
            return await lookup()

        batch = asyncio.gather(*(one() for _ in range(LOOKUPS)), return_exceptions=True)
        return await asyncio.wait_for(batch, BOUND)


@pytest.fixture(name="held")
def _held(dealer: Dealer, monkeypatch: pytest.MonkeyPatch) -> HeldReads:
    """The dealer's store with client reads that are held (``HeldReads``) and counted."""
    held = HeldReads()
    read = dealer.store.get_client

    async def held_read(client_id: str) -> Client | None:
        await held.hold()
        return await read(client_id)

    monkeypatch.setattr(dealer.store, "get_client", held_read)
    return held


async def test_concurrent_lookups_share_one_read(
    dealer: Dealer, register: Register, held: HeldReads
) -> None:
    """50 concurrent lookups of one id (registered or not) cost one store read per id."""
    await register("popular")
    for client_id in ("popular", "unknown-id"):
        before = held.count
        found = await held.lookups(lambda: dealer.registry.get(client_id))  # noqa: B023
        assert held.count - before == 1
        assert not any(isinstance(result, BaseException) for result in found), found
        assert len({id(client) for client in found}) == 1
    assert found[0] is None


async def test_failed_read_reaches_every_waiter_and_is_not_cached(
    dealer: Dealer, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails fails all 50 lookups that shared it; the next lookup reads again."""
    await register("flaky")
    held = HeldReads()
    read = dealer.store.get_client

    async def failing_read(client_id: str) -> Client | None:
        await held.hold()
        raise StoreUnavailable("database unavailable: test")

    monkeypatch.setattr(dealer.store, "get_client", failing_read)
    dealer.registry.ttl = 60.0
    results = await held.lookups(lambda: dealer.registry.get("flaky"))
    assert held.count == 1
    assert all(isinstance(result, StoreUnavailable) for result in results)
    monkeypatch.setattr(dealer.store, "get_client", read)
    client = await dealer.registry.get("flaky")  # read again: the failure was not cached
    assert client is not None and client.client_id == "flaky"


async def test_a_change_written_here_is_seen_at_once(dealer: Dealer, register: Register) -> None:
    """The console and the admin API change clients through the process's own store: the
    next token must follow the change, whatever the cache's lifetime."""
    registry = ClientRegistry(dealer.store, ttl=3600)
    await register("svc", scopes=("read",))
    before = await registry.get("svc")
    assert before is not None and before.scopes == ("read",)
    await dealer.store.update_client(dataclasses.replace(before, scopes=("read", "write")))
    after = await registry.get("svc")
    assert after is not None and after.scopes == ("read", "write")
    await dealer.store.set_disabled("svc", True)
    disabled = await registry.get("svc")
    assert disabled is not None and disabled.disabled
    await dealer.store.remove_client("svc")
    assert await registry.get("svc") is None
