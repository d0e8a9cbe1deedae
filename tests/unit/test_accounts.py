"""The admin service's administrator accounts (``tokendealer.admin.accounts``) on every
backend: argon2id hashes, sign-in that answers and works alike for an unknown name and a
wrong password, and the audit events of changes and sign-ins (never a password)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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
