"""The failed-authentication limit under concurrency (RFC 6749 §2.3.1, issue 10 item 2).

A burst of concurrent wrong secrets gets at most the limit answered 401, the rest 429,
and once the count is full an attempt is refused without a secret check or a store read;
an attempt's outcome is answered only while the counts admit it, so a right secret is
not revealed past the limit; a busy client's concurrent requests never count against it;
a lock-out ends one period after the burst however large it was; failures count per
(id, address) and per address, with a per-id ceiling over all addresses at ten times the
limit; X-Forwarded-For entries with a port count as their address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from quart_rate_limiter import RateLimitExceeded

from tests.support.apps import fresh_address, running
from tests.support.environment import QuartClient, Register
from tests.support.tokens import request_token
from tokendealer.http.limits import FailureCount
from tokendealer.protocol.clients import Client
from tokendealer.protocol.errors import InvalidClient
from tokendealer.ratelimit.gcra import MemoryStore, Mode, Slot
from tokendealer.service import authentication as client_auth
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings
from tokendealer.store import StoreUnavailable

FAILURE_LIMIT = 3
#: Failures per id over all addresses: ten times the limit (``FAILURE_CEILING``).
CEILING = 10 * FAILURE_LIMIT
BURST = 200


@pytest.fixture(name="settings")
def _failure_settings(settings: Settings) -> Settings:
    """Three failures a minute; a per-client request limit no test here reaches."""
    return dataclasses.replace(
        settings, rate_limit=Rate(100_000, 60), auth_failure_limit=Rate(FAILURE_LIMIT, 60)
    )


@dataclasses.dataclass
class Spy:
    """Counts of client reads from the store and of secret checks."""

    reads: int = 0
    checks: int = 0


@pytest.fixture(name="spy")
def _spy(dealer: Dealer, monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy()
    read, check = dealer.store.get_client, client_auth._secret_accepted

    async def counted_read(client_id: str) -> Client | None:
        spy.reads += 1
        return await read(client_id)

    def counted_check(*args: Any) -> bool:
        spy.checks += 1
        return check(*args)

    monkeypatch.setattr(dealer.store, "get_client", counted_read)
    monkeypatch.setattr(client_auth, "_secret_accepted", counted_check)
    return spy


async def burst(client: QuartClient, client_id: str, secret: str, **kwargs: Any) -> list[int]:
    """``BURST`` concurrent token requests; their statuses."""
    responses = await asyncio.gather(
        *(request_token(client, client_id, secret, **kwargs) for _ in range(BURST))
    )
    return [response.status_code for response in responses]


async def test_concurrent_failures_get_at_most_the_limit_answered(
    client: QuartClient, register: Register, spy: Spy
) -> None:
    """200 concurrent wrong secrets for one id from one address, whose record is not
    cached: the first attempt reads it and the others share that read; at most the
    limit are answered 401, the rest 429; after that an attempt is 429 without a secret
    check or a store read."""
    await register("target")
    peer = fresh_address()
    statuses = await burst(client, "target", "wrong", peer=peer)
    assert 1 <= statuses.count(401) <= FAILURE_LIMIT, statuses
    assert statuses.count(429) == BURST - statuses.count(401)
    assert 1 <= spy.reads <= FAILURE_LIMIT
    checks, reads = spy.checks, spy.reads
    later = await request_token(client, "target", "wrong", peer=peer)
    assert later.status_code == 429 and int(later.headers["Retry-After"]) >= 1
    assert spy.checks == checks
    assert spy.reads - reads <= 1  # its own rate limit's lookup (the cache keeps none)


async def test_a_burst_of_new_ids_costs_at_most_the_limit_of_reads(
    client: QuartClient, spy: Spy
) -> None:
    """200 concurrent attempts from one address, each with an id never seen (each would
    read the store): at most the limit are read and checked, the rest are 429 at once;
    and so again for a second burst, once the first is over."""
    peer = fresh_address()
    for _ in range(2):
        reads = spy.reads
        responses = await asyncio.gather(
            *(request_token(client, f"new-{i}", "wrong", peer=peer) for i in range(BURST))
        )
        statuses = [response.status_code for response in responses]
        assert statuses.count(401) <= FAILURE_LIMIT, statuses
        assert statuses.count(429) == BURST - statuses.count(401)
        assert spy.reads - reads <= FAILURE_LIMIT


async def test_a_cached_clients_burst_is_checked_whole_and_answered_within_the_limit(
    settings: Settings, register: Register
) -> None:
    """A client whose record is cached (no read to wait for): 200 concurrent requests
    with its secret from one address are all served; 200 concurrent wrong secrets are
    each checked, at most the limit answered 401 (counted), the rest 429; after that
    even the right secret from that address is 429."""
    secret = await register("cached")
    peer = fresh_address()
    async with running(dataclasses.replace(settings, client_cache_ttl=3600)) as client:
        assert (await request_token(client, "cached", secret)).status_code == 200
        assert await burst(client, "cached", secret, peer=peer) == [200] * BURST
        statuses = await burst(client, "cached", "wrong", peer=peer)
        assert 1 <= statuses.count(401) <= FAILURE_LIMIT, statuses
        assert statuses.count(429) == BURST - statuses.count(401)
        later = await request_token(client, "cached", secret, peer=peer)
        assert later.status_code == 429 and int(later.headers["Retry-After"]) >= 1


async def test_a_busy_clients_concurrent_requests_never_count_against_it(
    client: QuartClient, register: Register, spy: Spy
) -> None:
    """200 concurrent requests with the right secret, from one address, while the
    client's record is being read (the test settings keep no record cached): every one
    is served. Only failures count, never an attempt still being checked."""
    secret = await register("busy")
    statuses = await burst(client, "busy", secret, peer=fresh_address())
    assert statuses == [200] * BURST
    assert spy.reads >= 1


async def test_a_first_burst_is_served_when_the_limit_store_makes_it_wait(
    settings: Settings, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a limit store that answers after a wait (Redis, a round trip), 200 concurrent
    requests with the right secret for a client not yet cached are all served: only the
    first attempt is the one that reads it, however long the others wait before their
    lookup."""
    update = MemoryStore.update

    async def round_trip(store: MemoryStore, slots: Any, mode: Mode) -> float:
        await asyncio.sleep(0.001)
        return await update(store, slots, mode)

    monkeypatch.setattr(MemoryStore, "update", round_trip)
    secret = await register("first")
    async with running(dataclasses.replace(settings, client_cache_ttl=3600)) as client:
        assert await burst(client, "first", secret, peer=fresh_address()) == [200] * BURST


async def test_an_outcome_is_answered_only_while_the_counts_admit_it() -> None:
    """Attempts that all began while nothing was counted end one after the other: the
    first failures up to the limit are 401 (counted); a later failure is 429 (uncounted),
    and so is a success, which must not reveal a right secret past the limit. A success
    before the count is full is answered; an error that is no failure, or a cancelled
    attempt, counts nothing."""
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    slots = (Slot("pair", Rate(2, 60)), Slot("address", Rate(5, 60)))
    gate = asyncio.Event()

    async def attempt(outcome: str) -> str:
        try:
            async with FailureCount(store, slots, reserves=False):
                await gate.wait()  # every attempt is in before any ends
                if outcome == "wrong":
                    raise InvalidClient()
                if outcome == "store down":
                    raise StoreUnavailable("down")
                if outcome == "hangs":
                    await asyncio.sleep(3600)
        except InvalidClient:
            return "401"
        except RateLimitExceeded:
            return "429"
        except StoreUnavailable:
            return "503"
        return "200"

    outcomes = ["right", "store down", "wrong", "wrong", "wrong", "right"]
    tasks = [asyncio.create_task(attempt(outcome)) for outcome in [*outcomes, "hangs"]]
    await asyncio.sleep(0)  # each task enters (PEEK: nothing counted yet) and waits
    gate.set()
    await asyncio.sleep(0)
    hung = tasks.pop()
    hung.cancel()
    assert await asyncio.gather(*tasks) == ["200", "503", "401", "401", "429", "429"]
    with pytest.raises(asyncio.CancelledError):
        await hung
    # Two failures counted (a full pair count), nothing else: the address has room for 3.
    assert await store.update(slots[1:], Mode.ACQUIRE) == 0
    assert await store.update(slots[1:], Mode.ACQUIRE) == 0
    assert await store.update(slots[1:], Mode.ACQUIRE) == 0
    assert await store.update(slots[1:], Mode.ACQUIRE) > 0
    assert await store.update(slots[:1], Mode.PEEK) > 0


async def test_lockout_ends_one_period_after_a_burst(
    settings: Settings, register: Register
) -> None:
    """After a burst of 200 concurrent failures against 5/second, the right secret from the
    same address works again within one second: the burst's size does not lengthen it.
    (A refused attempt changes no count, so asking meanwhile does not lengthen it either.)"""
    secret = await register("bursted")
    peer = fresh_address()
    async with running(dataclasses.replace(settings, auth_failure_limit=Rate(5, 1))) as client:
        statuses = await burst(client, "bursted", "wrong", peer=peer)
        assert 401 in statuses and 429 in statuses
        deadline = time.monotonic() + 1.05
        while True:
            asked = time.monotonic()
            response = await request_token(client, "bursted", secret, peer=peer)
            if response.status_code == 200:
                break
            assert response.status_code == 429, await response.get_data()
            assert asked < deadline, "still locked out one period after the burst"
            await asyncio.sleep(0.02)


async def test_memory_store_state_never_passes_one_period() -> None:
    """However many events a key counts (even unchecked HITs), it admits again one period
    later; PEEK tells what ACQUIRE would do and changes nothing; RELEASE gives back
    exactly what an ACQUIRE took, never more."""
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    rate = Rate(3, 60)
    for _ in range(1000):
        await store.update([Slot("hit", rate)], Mode.HIT)
    # Capped at one period ahead: refused for one more interval (20 s), not for hours.
    assert await store.update([Slot("hit", rate)], Mode.PEEK) == pytest.approx(20)
    now[0] += 60
    assert await store.update([Slot("hit", rate)], Mode.ACQUIRE) == 0

    key = [Slot("peek", rate)]
    assert [await store.update(key, Mode.PEEK) for _ in range(10)] == [0] * 10
    assert [await store.update(key, Mode.ACQUIRE) for _ in range(3)] == [0, 0, 0]
    assert await store.update(key, Mode.PEEK) > 0
    assert await store.update(key, Mode.ACQUIRE) > 0  # refused: changes nothing either
    now[0] += 20  # one interval: room for one
    assert await store.update(key, Mode.PEEK) == 0
    assert await store.update(key, Mode.ACQUIRE) == 0
    assert await store.update(key, Mode.ACQUIRE) > 0

    key = [Slot("release", rate)]
    assert [await store.update(key, Mode.ACQUIRE) for _ in range(3)] == [0, 0, 0]
    await store.update(key, Mode.RELEASE)  # that third one authenticated: room again
    assert await store.update(key, Mode.ACQUIRE) == 0
    assert await store.update(key, Mode.ACQUIRE) > 0
    now[0] += 120
    for _ in range(3):
        await store.update(key, Mode.RELEASE)  # expired: nothing left to give back
    waits = [await store.update(key, Mode.ACQUIRE) for _ in range(4)]
    assert waits[:3] == [0, 0, 0] and waits[3] > 0


async def test_failures_elsewhere_do_not_lock_out_the_right_secret(
    settings: Settings, register: Register
) -> None:
    """Failures with a client's id from address A lock A out (even with the right secret);
    the client's right secret from address B keeps working, more often than the limit."""
    secret = await register("victim")
    proxy = "10.0.0.1"
    async with running(dataclasses.replace(settings, trusted_proxies=1)) as client:
        statuses = [
            (
                await request_token(
                    client,
                    "victim",
                    "wrong",
                    peer=proxy,
                    headers={"X-Forwarded-For": "203.0.113.66"},
                )
            ).status_code
            for _ in range(FAILURE_LIMIT + 5)
        ]
        assert statuses == [401] * FAILURE_LIMIT + [429] * 5
        refused = await request_token(
            client, "victim", secret, peer=proxy, headers={"X-Forwarded-For": "203.0.113.66"}
        )
        assert refused.status_code == 429
        for _ in range(FAILURE_LIMIT + 2):
            response = await request_token(
                client, "victim", secret, peer=proxy, headers={"X-Forwarded-For": "203.0.113.67"}
            )
            assert response.status_code == 200


async def test_per_id_ceiling_over_all_addresses(client: QuartClient, register: Register) -> None:
    """Failures for one id from many addresses are refused once they reach ten times the
    limit; from then on even the right secret from a new address is refused, and another
    client is not affected."""
    secret = await register("botnet-target")
    other = await register("bystander")
    statuses = [
        (await request_token(client, "botnet-target", "wrong", peer=fresh_address())).status_code
        for _ in range(CEILING + 1)
    ]
    assert statuses == [401] * CEILING + [429]
    refused = await request_token(client, "botnet-target", secret, peer=fresh_address())
    assert refused.status_code == 429
    response = await request_token(client, "bystander", other, peer=fresh_address())
    assert response.status_code == 200


@pytest.mark.parametrize(
    "entries",
    [
        ["203.0.113.7", "203.0.113.7:1234", "203.0.113.7:5678", "[::ffff:203.0.113.7]:443"],
        ["2001:db8:5::1", "[2001:db8:5::2]:443", "[2001:db8:5::3]", "[2001:db8:5::4]:8443"],
    ],
)
async def test_forwarded_for_with_port_counts_as_its_address(
    settings: Settings, entries: list[str]
) -> None:
    """X-Forwarded-For entries with a port, with brackets, or IPv4-mapped, count against
    the one address they name: rotating the port does not escape the address limit."""
    async with running(dataclasses.replace(settings, trusted_proxies=1)) as client:
        statuses = [
            (
                await request_token(
                    client,
                    f"port-{i}",
                    "wrong",
                    peer="10.0.0.1",
                    headers={"X-Forwarded-For": entry},
                )
            ).status_code
            for i, entry in enumerate(entries)
        ]
    assert statuses == [401] * FAILURE_LIMIT + [429]
