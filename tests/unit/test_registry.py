"""``ClientRegistry``: concurrent lookups of one id share one store read (single flight),
and a failed read reaches every lookup that shared it without being cached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.support.environment import Register
from tokendealer.protocol.clients import Client
from tokendealer.service.dealer import Dealer
from tokendealer.store import StoreUnavailable


@dataclass
class Reads:
    count: int = 0


@pytest.fixture(name="slow_store")
async def _slow_store(dealer: Dealer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Reads]:
    """The dealer's store with client reads that take 50 ms and are counted."""
    spy = Reads()
    read = dealer.store.get_client

    async def slow_read(client_id: str) -> Client | None:
        spy.count += 1
        await asyncio.sleep(0.05)
        return await read(client_id)

    monkeypatch.setattr(dealer.store, "get_client", slow_read)
    yield spy


async def test_concurrent_lookups_share_one_read(
    dealer: Dealer, register: Register, slow_store: Reads
) -> None:
    """50 concurrent lookups of one id (registered or not) cost one store read per id."""
    await register("popular")
    for client_id in ("popular", "unknown-id"):
        before = slow_store.count
        found = await asyncio.gather(*(dealer.registry.get(client_id) for _ in range(50)))
        assert slow_store.count - before == 1
        assert len({id(client) for client in found}) == 1
    assert found[0] is None


async def test_failed_read_reaches_every_waiter_and_is_not_cached(
    dealer: Dealer, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails fails all 50 lookups that shared it; the next lookup reads again."""
    await register("flaky")
    reads = 0
    read = dealer.store.get_client

    async def failing_read(client_id: str) -> Client | None:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)
        raise StoreUnavailable("database unavailable: test")

    monkeypatch.setattr(dealer.store, "get_client", failing_read)
    dealer.registry.ttl = 60.0
    results = await asyncio.gather(
        *(dealer.registry.get("flaky") for _ in range(50)), return_exceptions=True
    )
    assert reads == 1
    assert all(isinstance(result, StoreUnavailable) for result in results)
    monkeypatch.setattr(dealer.store, "get_client", read)
    client = await dealer.registry.get("flaky")  # read again: the failure was not cached
    assert client is not None and client.client_id == "flaky"
