"""The store's admin surface on every backend: policy updates, the audit event written in
the same transaction as its change, administrator accounts, and last-token notes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tokendealer.protocol.admins import Admin
from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.settings import Settings
from tokendealer.store import (
    ChangedMeanwhile,
    DuplicateAdmin,
    DuplicateClient,
    SQLStore,
    StoreRefused,
    UnknownAdmin,
    UnknownClient,
)


@pytest.fixture(name="store")
async def _store(database_url: str) -> AsyncIterator[SQLStore]:
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _client(client_id: str = "svc", **fields: object) -> Client:
    values: dict[str, object] = {
        "client_id": client_id,
        "secret_digest": digest_secret(generate_secret()),
        "created_at": time.time(),
    }
    values.update(fields)
    return Client(**values)  # type: ignore[arg-type]


def _event(action: str, target: str = "client:svc", **details: object) -> AuditEvent:
    return AuditEvent(actor="cli:test", action=action, target=target, details=dict(details))


async def test_a_change_and_its_event_are_one_transaction(store: SQLStore) -> None:
    """A change writes its event; a change that fails (a duplicate, an unknown client)
    writes neither the change nor the event."""
    await store.add_client(_client(), event=_event("client.create", scopes=["read"]))
    with pytest.raises(DuplicateClient):
        await store.add_client(_client(), event=_event("client.create"))
    with pytest.raises(UnknownClient):
        await store.set_disabled("nobody", True, event=_event("client.disable", "client:nobody"))
    with pytest.raises(UnknownClient):
        await store.remove_client("nobody", event=_event("client.remove", "client:nobody"))
    with pytest.raises(UnknownClient):
        await store.update_client(_client("nobody"), event=_event("client.update"))
    events = await store.audit_events()
    assert [(e.action, e.target, e.details) for e in events] == [
        ("client.create", "client:svc", {"scopes": ["read"]})
    ]
    assert events[0].id is not None and events[0].actor == "cli:test"


async def test_update_client_replaces_policy_and_keeps_secrets_and_epoch(store: SQLStore) -> None:
    original = _client(scopes=("read",), audiences=("https://a",), ttl=60, description="x")
    await store.add_client(original)
    changed = _client(
        scopes=("read", "write"), audiences=("https://b",), ttl=None, description="billing"
    )
    await store.update_client(changed, event=_event("client.update"))
    found = await store.get_client("svc")
    assert found is not None
    assert (found.scopes, found.audiences, found.ttl, found.description) == (
        ("read", "write"),
        ("https://b",),
        None,
        "billing",
    )
    assert found.secret_digest == original.secret_digest
    assert found.token_epoch == original.token_epoch


async def test_audit_filters_and_order(store: SQLStore) -> None:
    for at, actor, action, target in [
        (100.0, "cli:a", "client.create", "client:x"),
        (200.0, "admin:b", "client.update", "client:x"),
        (300.0, "admin:b", "key.rotate", "key:k1"),
    ]:
        await store.record(AuditEvent(actor=actor, action=action, target=target, at=at))
    assert [e.at for e in await store.audit_events()] == [300.0, 200.0, 100.0]
    assert [e.at for e in await store.audit_events(actor="admin:b")] == [300.0, 200.0]
    assert [e.at for e in await store.audit_events(target="client:x")] == [200.0, 100.0]
    assert [e.at for e in await store.audit_events(action="key.rotate")] == [300.0]
    assert [e.at for e in await store.audit_events(since=200.0)] == [300.0, 200.0]
    assert [e.at for e in await store.audit_events(limit=1)] == [300.0]


def test_unknown_audit_action_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit action"):
        AuditEvent(actor="cli:a", action="client.explode", target="client:x")


async def test_admin_accounts(store: SQLStore) -> None:
    admin = Admin("alice", "$argon2id$fake", created_at=1.0, password_changed_at=1.0)
    await store.add_admin(admin, event=_event("admin.create", "admin:alice"))
    with pytest.raises(DuplicateAdmin):
        await store.add_admin(admin, event=_event("admin.create", "admin:alice"))
    await store.set_admin_password("alice", "$argon2id$other", 2.0)
    found = await store.get_admin("alice")
    assert found == Admin("alice", "$argon2id$other", created_at=1.0, password_changed_at=2.0)
    assert [a.name for a in await store.list_admins()] == ["alice"]
    with pytest.raises(UnknownAdmin):
        await store.set_admin_password("bob", "h", 3.0, event=_event("admin.set_password"))
    await store.remove_admin("alice", event=_event("admin.remove", "admin:alice"))
    assert await store.get_admin("alice") is None
    with pytest.raises(UnknownAdmin):
        await store.remove_admin("alice", event=_event("admin.remove", "admin:alice"))
    actions = [e.action for e in await store.audit_events()]
    assert actions == ["admin.remove", "admin.create"]


async def test_last_token_is_written_at_most_once_per_interval(store: SQLStore) -> None:
    await store.add_client(_client())
    await store.record_token_issued("svc", 1000.0, every=60)
    await store.record_token_issued("svc", 1030.0, every=60)  # too soon: kept 1000
    found = await store.get_client("svc")
    assert found is not None and found.last_token_at == 1000.0
    await store.record_token_issued("svc", 1060.0, every=60)
    found = await store.get_client("svc")
    assert found is not None and found.last_token_at == 1060.0


async def test_a_refused_value_is_not_an_outage(store: SQLStore) -> None:
    """A value the database refuses (PostgreSQL refuses NUL bytes in text) is the
    request's fault: StoreRefused, and the next operation runs (no fail-fast window)."""
    with contextlib.suppress(StoreRefused):  # SQLite takes the NUL byte
        await store.audit_events(actor="a\x00b")
    await store.add_client(_client())
    assert await store.get_client("svc") is not None


async def test_an_update_computed_from_a_stale_record_is_refused(store: SQLStore) -> None:
    """Two concurrent edits: the second, computed from the record before the first,
    changes nothing and records nothing (no lost update, no false event)."""
    original = _client(scopes=("a",))
    await store.add_client(original)
    first = _client(scopes=("a", "b"))
    await store.update_client(first, previous=original, event=_event("client.update"))
    second = _client(scopes=("a", "c"))
    with pytest.raises(ChangedMeanwhile):
        await store.update_client(second, previous=original, event=_event("client.update"))
    found = await store.get_client("svc")
    assert found is not None and found.scopes == ("a", "b")
    assert len(await store.audit_events(action="client.update")) == 1
