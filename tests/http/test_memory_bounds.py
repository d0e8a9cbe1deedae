"""A flood of never-seen client ids, each from an address of its own (many hosts, the
attack that grows per-id state), keeps every per-process structure it touches bounded:
the client registry, the limiter's cached slots and its GCRA keys, the metrics' label
sets (issue 16: a worker's memory stays under its target after floods of unknown ids).

The bounds are made small for the test (the service's are 10,000 records, 1,024 cached
slot sets and 100,000 keys) so that a flood many times larger runs in seconds; without
them each structure would end the flood with an entry or more per id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from quart import Quart

from tests.support.environment import Register
from tests.support.tokens import get_token, request_token
from tokendealer.http import create_app, limits
from tokendealer.http.limits import Limiter
from tokendealer.ratelimit.gcra import MemoryStore
from tokendealer.service import registry
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings

CACHED_RECORDS = 40
CACHED_SLOTS = 30
LIMIT_KEYS = 100
#: Distinct ids (and addresses) in the flood: several times each bound.
FLOOD = 5 * LIMIT_KEYS


def _samples() -> int:
    return sum(len(metric.samples) for metric in REGISTRY.collect())


@pytest.fixture(name="settings")
def _flood_settings(settings: Settings) -> Settings:
    """One failure per hour per id, address and pair: every key the flood makes lives
    past the test, so only the bound can keep their number down. Client records cached
    for an hour too."""
    return dataclasses.replace(
        settings,
        client_cache_ttl=3600.0,
        rate_limit=Rate(100_000, 60),
        auth_failure_limit=Rate(1, 3600),
    )


@pytest.fixture(name="app")
async def _bounded_app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Quart]:
    monkeypatch.setattr(registry, "_MAX_ENTRIES", CACHED_RECORDS)
    monkeypatch.setattr(limits, "SLOTS_CACHED", CACHED_SLOTS)
    app = create_app(settings)
    store = app.extensions["tokendealer.limiter"].store
    assert isinstance(store, MemoryStore)
    monkeypatch.setattr(store, "_max_keys", LIMIT_KEYS)
    async with app.test_app():
        yield app


async def test_a_flood_of_unknown_ids_leaves_every_cache_within_its_bound(
    app: Quart, dealer: Dealer, register: Register
) -> None:
    client = app.test_client()
    secret = await register("svc", scopes=("read",))
    await get_token(client, "svc", secret)
    limiter: Limiter = app.extensions["tokendealer.limiter"]
    store = limiter.store
    assert isinstance(store, MemoryStore)
    samples = _samples()

    statuses = set()
    for i in range(FLOOD):
        response = await request_token(
            client, f"flood-{i}", "not-the-secret", method="post", peer=f"10.1.{i // 250}.{i % 250}"
        )
        statuses.add(response.status_code)

    assert statuses == {401}  # each id failed once from its own address: never a 429
    assert 0 < len(dealer.registry._cache) <= CACHED_RECORDS
    assert not dealer.registry._reads
    assert 0 < len(limiter._failure_slots) <= CACHED_SLOTS
    assert 0 < len(limiter._request_slots) <= CACHED_SLOTS
    assert LIMIT_KEYS // 2 <= len(store) <= LIMIT_KEYS
    # Metrics label a registered client only: the flood adds no series per id.
    assert _samples() - samples < 10
    # The registered client is served as before (its record read again if dropped).
    await get_token(client, "svc", secret)
