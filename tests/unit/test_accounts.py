"""The admin service's administrator accounts (``tokendealer.admin.accounts``) on every
backend: argon2id hashes, sign-in that answers and works alike for an unknown name and a
wrong password, and the audit events of changes and sign-ins (never a password)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from argon2 import PasswordHasher, extract_parameters

from tokendealer.admin import accounts
from tokendealer.admin.errors import Conflict, Invalid, NotFound
from tokendealer.protocol.admins import Admin
from tokendealer.settings import Settings
from tokendealer.store import SQLStore

PASSWORD = "correct horse battery"
ACTOR = "cli:tester"


@pytest.fixture(name="store")
async def _store(database_url: str) -> AsyncIterator[SQLStore]:
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class CountingHasher:
    """The module's hasher, counting the calls to ``verify``."""

    def __init__(self, hasher: PasswordHasher) -> None:
        self._hasher = hasher
        self.verified: list[str] = []

    def verify(self, password_hash: str, password: str) -> bool:
        self.verified.append(password_hash)
        return self._hasher.verify(password_hash, password)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hasher, name)


@pytest.fixture(name="spy")
def _spy(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    spy = CountingHasher(accounts.HASHER)
    monkeypatch.setattr(accounts, "HASHER", spy)
    return spy


def _trail(events: Any) -> str:
    return json.dumps([(e.actor, e.action, e.target, e.details) for e in events])


async def test_add_stores_an_argon2id_hash_and_audits_without_it(store: SQLStore) -> None:
    added = await accounts.add(store, "alice", PASSWORD, ACTOR)
    stored = await store.get_admin("alice")
    assert stored == added
    assert stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert extract_parameters(stored.password_hash) == accounts.HASH_PARAMETERS
    assert stored.created_at == stored.password_changed_at
    events = await store.audit_events()
    assert [(e.actor, e.action, e.target, e.details) for e in events] == [
        (ACTOR, "admin.create", "admin:alice", {})
    ]
    assert accounts.describe(stored).keys() == {"name", "created_at", "password_changed_at"}


async def test_refused_changes_store_nothing_and_write_no_event(store: SQLStore) -> None:
    await accounts.add(store, "alice", PASSWORD, ACTOR)
    before = await store.get_admin("alice")
    with pytest.raises(Invalid, match="at least 12") as short:
        await accounts.add(store, "bob", "elevenchars", ACTOR)
    assert short.value.field == "password"
    with pytest.raises(Invalid, match="admin name") as bad_name:
        await accounts.add(store, "-bob", PASSWORD, ACTOR)
    assert bad_name.value.field == "name"
    with pytest.raises(Conflict, match="already exists"):
        await accounts.add(store, "alice", "another password", ACTOR)
    with pytest.raises(Invalid, match="at least 12"):
        await accounts.set_password(store, "alice", "short", ACTOR)
    with pytest.raises(NotFound, match="no admin 'carol'"):
        await accounts.set_password(store, "carol", PASSWORD, ACTOR)
    with pytest.raises(NotFound, match="no admin 'carol'"):
        await accounts.remove(store, "carol", ACTOR)
    with pytest.raises(NotFound, match="no admin 'carol'"):
        await accounts.get(store, "carol")
    assert [a.name for a in await accounts.listing(store)] == ["alice"]
    assert await store.get_admin("alice") == before
    assert [e.action for e in await store.audit_events()] == ["admin.create"]


async def test_set_password_and_remove_are_audited(store: SQLStore) -> None:
    added = await accounts.add(store, "alice", PASSWORD, ACTOR)
    await accounts.set_password(store, "alice", "a new long password", "admin:root")
    changed = await accounts.get(store, "alice")
    assert changed.password_hash != added.password_hash
    assert changed.password_hash.startswith("$argon2id$")
    assert changed.password_changed_at >= added.password_changed_at
    assert changed.created_at == added.created_at
    assert await accounts.verify(store, "alice", "a new long password") is not None
    assert await accounts.verify(store, "alice", PASSWORD) is None
    await accounts.remove(store, "alice", ACTOR)  # the last one: allowed
    assert await accounts.listing(store) == []
    events = await store.audit_events(target="admin:alice")
    changes = [(e.actor, e.action) for e in events if not e.action.startswith("admin.sign_in")]
    assert changes == [
        (ACTOR, "admin.remove"),
        ("admin:root", "admin.set_password"),
        (ACTOR, "admin.create"),
    ]
    trail = _trail(events)
    assert PASSWORD not in trail and "a new long password" not in trail
    assert "$argon2" not in trail


async def test_verify_answers_and_works_alike_for_unknown_name_and_wrong_password(
    store: SQLStore, spy: CountingHasher
) -> None:
    added = await accounts.add(store, "alice", PASSWORD, ACTOR)

    assert await accounts.verify(store, "alice", PASSWORD, "192.0.2.1") == added
    assert spy.verified == [added.password_hash]

    spy.verified.clear()
    assert await accounts.verify(store, "alice", "wrong password!", "192.0.2.2") is None
    assert spy.verified == [added.password_hash]

    spy.verified.clear()
    assert await accounts.verify(store, "mallory", PASSWORD, "192.0.2.3") is None
    assert spy.verified == [accounts.dummy_hash()]  # the same one hash check
    assert extract_parameters(accounts.dummy_hash()) == accounts.HASH_PARAMETERS

    spy.verified.clear()
    assert await accounts.verify(store, "x" * 5000, PASSWORD) is None  # not even a name
    assert spy.verified == [accounts.dummy_hash()]

    events = list(reversed(await store.audit_events()))[1:]  # after admin.create
    assert [(e.actor, e.action, e.target, e.details) for e in events] == [
        ("admin:alice", "admin.sign_in", "admin:alice", {"address": "192.0.2.1"}),
        ("anonymous", "admin.sign_in_failed", "admin:alice", {"address": "192.0.2.2"}),
        ("anonymous", "admin.sign_in_failed", "admin:mallory", {"address": "192.0.2.3"}),
        ("anonymous", "admin.sign_in_failed", "admin:<invalid>", {}),
    ]
    assert PASSWORD not in _trail(events) and "wrong password!" not in _trail(events)


async def test_verify_rehashes_an_outdated_hash(store: SQLStore) -> None:
    """A hash made with weaker parameters is replaced at sign-in: not a password change."""
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    old = Admin("alice", weak.hash(PASSWORD), created_at=1.0, password_changed_at=2.0)
    await store.add_admin(old)
    signed_in = await accounts.verify(store, "alice", PASSWORD)
    assert signed_in is not None and signed_in.password_hash != old.password_hash
    stored = await accounts.get(store, "alice")
    assert stored == signed_in
    assert extract_parameters(stored.password_hash) == accounts.HASH_PARAMETERS
    assert stored.password_changed_at == 2.0
    assert await accounts.verify(store, "alice", PASSWORD) == stored  # no rehash again
    events = list(reversed(await store.audit_events()))
    assert [(e.action, e.details) for e in events] == [
        ("admin.sign_in", {"rehashed": True}),
        ("admin.sign_in", {}),
    ]


async def test_a_corrupt_stored_hash_signs_nobody_in(store: SQLStore) -> None:
    await store.add_admin(Admin("alice", "not a hash", created_at=1.0, password_changed_at=1.0))
    assert await accounts.verify(store, "alice", PASSWORD) is None
    assert [e.action for e in await store.audit_events()] == ["admin.sign_in_failed"]


class ConcurrencyMeter:
    """A hasher doing real argon2 work (with cheap parameters), measuring how many of its
    computations run at once."""

    def __init__(self, hasher: PasswordHasher) -> None:
        self._hasher = hasher
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.computed = 0

    def _measured(self, compute: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return compute(*args)
        finally:
            with self._lock:
                self.running -= 1
                self.computed += 1

    def hash(self, password: str) -> str:
        hashed: str = self._measured(self._hasher.hash, password)
        return hashed

    def verify(self, password_hash: str, password: str) -> bool:
        matched: bool = self._measured(self._hasher.verify, password_hash, password)
        return matched

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hasher, name)


@pytest.fixture(name="meter")
def _meter(monkeypatch: pytest.MonkeyPatch) -> ConcurrencyMeter:
    """argon2 at 16 MiB and 2 passes (some milliseconds a computation: enough for
    sign-ins started together to overlap) behind a meter."""
    meter = ConcurrencyMeter(PasswordHasher(time_cost=2, memory_cost=16384, parallelism=1))
    monkeypatch.setattr(accounts, "HASHER", meter)
    return meter


@pytest.fixture(name="sqlite_store")
async def _sqlite_store(sqlite_url: str) -> AsyncIterator[SQLStore]:
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


#: Sign-in attempts started at once: four times the bound.
BURST = 8


async def test_a_burst_of_sign_ins_runs_at_most_the_bound_of_hashes_at_once(
    sqlite_store: SQLStore, meter: ConcurrencyMeter
) -> None:
    """A burst of sign-in attempts, right and wrong, each answered as usual, never has
    more than MAX_CONCURRENT_HASHES argon2 computations running at once."""
    await accounts.add(sqlite_store, "alice", PASSWORD, ACTOR)
    passwords = [PASSWORD if i % 2 else f"wrong password {i}" for i in range(BURST)]
    answers = await asyncio.gather(
        *(accounts.verify(sqlite_store, "alice", password) for password in passwords)
    )
    assert [answer is not None for answer in answers] == [i % 2 == 1 for i in range(BURST)]
    assert meter.computed == BURST + 1
    assert meter.most == accounts.MAX_CONCURRENT_HASHES


async def test_sign_ins_given_up_on_keep_their_slots_until_their_hashes_end(
    sqlite_store: SQLStore, meter: ConcurrencyMeter
) -> None:
    """A caller that goes away (cancelled: a client hanging up) leaves its computation
    running, and it still counts: hanging up is no way around the bound."""
    await accounts.add(sqlite_store, "alice", PASSWORD, ACTOR)
    abandoned = [
        asyncio.ensure_future(accounts.verify(sqlite_store, "alice", PASSWORD))
        for _ in range(BURST)
    ]
    deadline = time.monotonic() + 5
    while meter.running < accounts.MAX_CONCURRENT_HASHES:
        assert time.monotonic() < deadline, "no computation started"
        await asyncio.sleep(0.001)
    for task in abandoned:
        task.cancel()
    answers = await asyncio.gather(
        *(accounts.verify(sqlite_store, "alice", PASSWORD) for _ in range(BURST))
    )
    assert all(answer is not None for answer in answers)
    assert meter.most == accounts.MAX_CONCURRENT_HASHES
