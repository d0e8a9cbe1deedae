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
from tokendealer.service.trusts import TrustRegistry
from tokendealer.settings import Rate, Settings
from tokendealer.store import SQLStore, StoreUnavailable

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


async def test_concurrent_lookups_of_a_trust_share_one_read(
    dealer: Dealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A federated client's burst looks its trust up once per request: 50 concurrent
    lookups of one trust (existing or not) cost one store read, not one each."""
    held = HeldReads()
    read = dealer.store.get_trust

    async def held_read(name: str) -> Any:
        await held.hold()
        return await read(name)

    monkeypatch.setattr(dealer.store, "get_trust", held_read)
    trusts = TrustRegistry(dealer.store, ttl=60)
    found = await held.lookups(lambda: trusts.get("cluster"))
    assert held.count == 1
    assert found == [None] * LOOKUPS


def test_one_attempt_claims_the_read_of_an_id_until_it_gives_it_back(dealer: Dealer) -> None:
    """``claim_read``: of attempts that would each read one uncached id, only the first
    is told to read (decided and claimed in one step, before any of them awaits), and
    the next one after it gives the claim back."""
    registry = ClientRegistry(dealer.store, ttl=60)
    assert [registry.claim_read("new") for _ in range(3)] == [True, False, False]
    assert registry.claim_read("other")
    registry.release_read("new")
    assert registry.claim_read("new")


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


# -- the limiter's lookups (``limited``) -------------------------------------------------


@dataclass
class CountedReads:
    """The store's reads of clients, counted by kind."""

    one: list[str] = field(default_factory=list)
    limited: int = 0


@pytest.fixture(name="counted")
def _counted(dealer: Dealer, monkeypatch: pytest.MonkeyPatch) -> CountedReads:
    counted = CountedReads()
    read_one, read_limited = dealer.store.get_client, dealer.store.rate_limited_clients

    async def one(client_id: str) -> Client | None:
        counted.one.append(client_id)
        return await read_one(client_id)

    async def limited() -> Any:
        counted.limited += 1
        return await read_limited()

    monkeypatch.setattr(dealer.store, "get_client", one)
    monkeypatch.setattr(dealer.store, "rate_limited_clients", limited)
    return counted


async def _other_store(settings: Settings) -> SQLStore:
    """A store of another process on the same database (the CLI's): this registry is
    not told of its changes."""
    store = SQLStore(settings.sqlalchemy_url)
    await store.open()
    return store


async def test_limited_never_reads_for_an_unknown_id(dealer: Dealer, counted: CountedReads) -> None:
    """Ids never registered, or read as unregistered, cost no read and leave nothing
    behind, however many; the clients with limits of their own are read once, by one
    query shared by concurrent first lookups."""
    found = await asyncio.gather(*(dealer.registry.limited(f"random-{i}") for i in range(LOOKUPS)))
    assert found == [None] * LOOKUPS
    assert await dealer.registry.get("read-as-unknown") is None
    assert await dealer.registry.limited("read-as-unknown") is None
    assert counted.one == ["read-as-unknown"] and counted.limited == 1
    assert dealer.registry._cache.keys() == {"read-as-unknown"}  # the read above, only


async def test_limited_knows_limited_clients_of_another_process_from_its_first_lookup(
    dealer: Dealer, settings: Settings, counted: CountedReads
) -> None:
    """A client given a limit by the CLI before this process's first lookup is known
    without a read of its own; then, once its record is older than the cache's lifetime,
    it is read again (the change made meanwhile by the CLI is seen)."""
    other = await _other_store(settings)
    try:
        await other.add_client(Client("slow", "x", rate_limit=Rate(2, 60)))
        dealer.registry.ttl = 60.0
        first = await dealer.registry.limited("slow")
        assert first is not None and first.rate_limit == Rate(2, 60)
        assert counted.one == [] and counted.limited == 1
        await other.update_client(dataclasses.replace(first, rate_limit=Rate(3, 60)))
        held = await dealer.registry.limited("slow")  # within the cache's lifetime
        assert held is not None and held.rate_limit == Rate(2, 60) and counted.one == []
        dealer.registry.ttl = 0.0
        fresh = await dealer.registry.limited("slow")
        assert fresh is not None and fresh.rate_limit == Rate(3, 60)
        assert counted.one == ["slow"] and counted.limited == 1
    finally:
        await other.close()


async def test_limited_reads_a_client_changed_through_this_process(
    dealer: Dealer, register: Register, counted: CountedReads
) -> None:
    """A client registered or changed through this process's store (the admin API, the
    console) is read at its first lookup: its limit holds from its first request."""
    await dealer.registry.limited("nobody")  # the first lookup: the one query
    await register("new")
    found = await dealer.registry.limited("new")
    assert found is not None and found.client_id == "new"
    assert counted.one == ["new"]


async def test_limited_keeps_the_record_it_has_when_the_store_fails(
    dealer: Dealer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record due to be read again while the store is down is used as held (the
    request is limited as before, not failed); a failed first query is tried again."""
    other = await _other_store(settings)
    try:
        await other.add_client(Client("slow", "x", rate_limit=Rate(2, 60)))
    finally:
        await other.close()

    async def down(*_: Any) -> Any:
        raise StoreUnavailable("database unavailable: test")

    read_limited = dealer.store.rate_limited_clients
    monkeypatch.setattr(dealer.store, "rate_limited_clients", down)
    assert await dealer.registry.limited("slow") is None  # not known yet: nothing read
    monkeypatch.setattr(dealer.store, "rate_limited_clients", read_limited)
    known = await dealer.registry.limited("slow")  # the first query, tried again
    assert known is not None and known.rate_limit == Rate(2, 60)
    monkeypatch.setattr(dealer.store, "get_client", down)
    dealer.registry.ttl = 0.0
    assert await dealer.registry.limited("slow") == known


async def test_a_record_near_its_end_is_answered_while_it_is_renewed(
    dealer: Dealer, register: Register, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past three quarters of ``ttl``, lookups answer the cached record at once while one
    background read renews it; past ``ttl``, a lookup waits for the read as before."""
    now = [1000.0]
    registry = ClientRegistry(dealer.store, ttl=10.0, clock=lambda: now[0])
    await register("svc", scopes=("read",))
    assert (await registry.get("svc")).scopes == ("read",)  # type: ignore[union-attr]
    other = await _other_store(settings)  # the CLI's change: this registry is not told
    try:
        current = await other.get_client("svc")
        assert current is not None
        await other.update_client(dataclasses.replace(current, scopes=("read", "write")))
    finally:
        await other.close()

    gate, done, reads, read = asyncio.Event(), asyncio.Event(), [], dealer.store.get_client

    async def gated_read(client_id: str) -> Client | None:
        reads.append(client_id)
        await gate.wait()
        found = await read(client_id)
        done.set()  # the registry caches it before anything else runs
        return found

    monkeypatch.setattr(dealer.store, "get_client", gated_read)
    now[0] += 5.0  # half its life: answered from the cache, no read
    assert (await registry.get("svc")).scopes == ("read",)  # type: ignore[union-attr]
    assert reads == []
    now[0] += 3.0  # 8 of 10 seconds: answered at once, one read started behind
    found = await asyncio.wait_for(
        asyncio.gather(*(registry.get("svc") for _ in range(LOOKUPS))), BOUND
    )
    assert {client.scopes for client in found if client} == {("read",)} and len(found) == LOOKUPS
    assert reads == ["svc"]
    gate.set()
    await asyncio.wait_for(done.wait(), BOUND)
    renewed = await registry.get("svc")
    assert renewed is not None and renewed.scopes == ("read", "write")
    assert reads == ["svc"]
    gate.clear()
    now[0] += 10.5  # past ttl since the renewal began: the lookup waits for its read
    waiting = asyncio.ensure_future(registry.get("svc"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done() and reads == ["svc", "svc"]
    gate.set()
    assert (await asyncio.wait_for(waiting, BOUND)) is not None


async def test_an_unknown_id_is_not_renewed_ahead(
    dealer: Dealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An id found unregistered gains nothing from an early read (an attacker cycling ids
    would only add reads): it is read again once its ``ttl`` is over, not before."""
    now = [1000.0]
    registry = ClientRegistry(dealer.store, ttl=10.0, clock=lambda: now[0])
    assert await registry.get("nobody") is None
    reads, read = [], dealer.store.get_client

    async def counted(client_id: str) -> Client | None:
        reads.append(client_id)
        return await read(client_id)

    monkeypatch.setattr(dealer.store, "get_client", counted)
    now[0] += 9.0
    assert await registry.get("nobody") is None and reads == []
    now[0] += 1.5
    assert await registry.get("nobody") is None and reads == ["nobody"]
