"""The client store: one suite run against every backend (SQLite and PostgreSQL).

Each test builds ``SQLStore(Settings(database_url=url).sqlalchemy_url)`` from the
``database_url`` fixture, so the same assertions hold for the embedded SQLite file and
for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.protocol.rates import MONITOR
from tokendealer.protocol.trusts import Trust
from tokendealer.settings import Rate, Settings
from tokendealer.store import (
    DuplicateClient,
    DuplicateTrust,
    SQLStore,
    StoreError,
    StoreUnavailable,
    TrustInUse,
    UnknownClient,
    UnknownTrust,
    schema,
)
from tokendealer.store.schema import SCHEMA_VERSION


def _new_store(url: str) -> SQLStore:
    return SQLStore(Settings(database_url=url).sqlalchemy_url)


def _client(client_id: str = "svc", **fields: object) -> Client:
    values: dict[str, object] = {
        "client_id": client_id,
        "secret_digest": digest_secret(generate_secret()),
        "created_at": time.time(),
    }
    values.update(fields)
    return Client(**values)  # type: ignore[arg-type]


@pytest.fixture(name="store")
async def _store(database_url: str) -> AsyncIterator[SQLStore]:
    store = _new_store(database_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _versions(store: SQLStore) -> list[int]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT version FROM tokendealer_schema_version"))
        return [int(row[0]) for row in rows]


# -- clients ---------------------------------------------------------------------------


async def test_add_then_get_round_trips_every_field(store: SQLStore) -> None:
    """A client read back equals the one written, field for field."""
    client = _client(
        "billing.api:v2@prod",
        scopes=("read", "write:all"),
        audiences=("https://api.test", "urn:other"),
        ttl=120,
        disabled=True,
    )
    await store.add_client(client)
    assert await store.get_client("billing.api:v2@prod") == client


async def test_get_unknown_client_is_none(store: SQLStore) -> None:
    """Looking up an id that was never added returns None rather than raising."""
    await store.add_client(_client("known"))
    assert await store.get_client("unknown") is None
    assert await store.get_client("KNOWN") is None


async def test_empty_scopes_and_audiences_stay_empty(store: SQLStore) -> None:
    """A client without scopes or audiences reads back with empty tuples and no ttl."""
    await store.add_client(_client("plain"))
    client = await store.get_client("plain")
    assert client is not None
    assert (client.scopes, client.audiences, client.ttl, client.disabled) == ((), (), None, False)


async def test_list_clients_returns_all_sorted_by_id(store: SQLStore) -> None:
    """list_clients returns every client exactly once, ordered by client id."""
    assert list(await store.list_clients()) == []
    added = {cid: _client(cid) for cid in ("b", "c", "a")}
    for client in added.values():
        await store.add_client(client)
    listed = list(await store.list_clients())
    assert [c.client_id for c in listed] == ["a", "b", "c"]
    assert listed == [added["a"], added["b"], added["c"]]


async def test_duplicate_client_is_refused_and_leaves_store_unchanged(store: SQLStore) -> None:
    """Adding an existing id raises DuplicateClient and keeps the original record."""
    original = _client("svc", scopes=("read",))
    await store.add_client(original)
    await store.add_client(_client("other"))
    before = list(await store.list_clients())
    with pytest.raises(DuplicateClient, match="svc"):
        await store.add_client(_client("svc", scopes=("admin",), disabled=True))
    assert list(await store.list_clients()) == before
    assert await store.get_client("svc") == original


async def test_rotate_secret_keeps_previous_digest_until_grace(store: SQLStore) -> None:
    """Rotation stores the new digest and keeps the old one with its expiry."""
    original = _client("svc")
    await store.add_client(original)
    new_digest = digest_secret(generate_secret())
    grace_until = time.time() + 300
    await store.rotate_secret("svc", new_digest, grace_until)
    rotated = await store.get_client("svc")
    assert rotated is not None
    assert rotated.secret_digest == new_digest
    assert rotated.previous_secret_digest == original.secret_digest
    assert rotated.previous_expires_at == grace_until
    # Everything else is untouched.
    assert (
        dataclasses.replace(
            rotated,
            secret_digest=original.secret_digest,
            previous_secret_digest=None,
            previous_expires_at=None,
        )
        == original
    )


async def test_second_rotation_replaces_previous_digest(store: SQLStore) -> None:
    """After two rotations the previous digest is the one from the first rotation."""
    await store.add_client(_client("svc"))
    first, second = digest_secret(generate_secret()), digest_secret(generate_secret())
    await store.rotate_secret("svc", first, time.time() + 60)
    await store.rotate_secret("svc", second, 0.0)
    client = await store.get_client("svc")
    assert client is not None
    assert (client.secret_digest, client.previous_secret_digest) == (second, first)
    assert client.previous_expires_at == 0.0


async def test_set_disabled_toggles_and_revoking_starts_a_new_epoch(store: SQLStore) -> None:
    """Disabling keeps the token epoch unless it revokes; enabling keeps the new epoch."""
    await store.add_client(_client("svc"))
    await store.add_client(_client("other"))
    first = await store.get_client("svc")
    other_before = await store.get_client("other")
    assert first is not None and other_before is not None
    assert len(first.token_epoch) == 16 and first.token_epoch != other_before.token_epoch

    await store.set_disabled("svc", True)
    client = await store.get_client("svc")
    assert client is not None and client.disabled and client.token_epoch == first.token_epoch

    await store.set_disabled("svc", True, revoke_tokens=True)
    revoked = await store.get_client("svc")
    assert revoked is not None and revoked.disabled
    assert revoked.token_epoch not in ("", first.token_epoch)

    await store.set_disabled("svc", False)
    enabled = await store.get_client("svc")
    assert enabled is not None and not enabled.disabled
    assert enabled.token_epoch == revoked.token_epoch
    assert await store.get_client("other") == other_before


async def test_rotation_starts_a_new_epoch_only_when_asked(store: SQLStore) -> None:
    """A rotation with grace keeps the epoch; an immediate one (revoke_tokens) changes it."""
    await store.add_client(_client("svc"))
    before = await store.get_client("svc")
    assert before is not None
    await store.rotate_secret("svc", digest_secret("a"), time.time() + 60)
    graced = await store.get_client("svc")
    assert graced is not None and graced.token_epoch == before.token_epoch
    await store.rotate_secret("svc", digest_secret("b"), time.time(), revoke_tokens=True)
    immediate = await store.get_client("svc")
    assert immediate is not None and immediate.token_epoch != before.token_epoch
    assert immediate.secret_digest == digest_secret("b")


async def test_remove_client_deletes_only_that_client(store: SQLStore) -> None:
    """remove_client deletes the record; the id can then be registered anew."""
    await store.add_client(_client("svc"))
    await store.add_client(_client("other"))
    await store.remove_client("svc")
    assert await store.get_client("svc") is None
    assert [c.client_id for c in await store.list_clients()] == ["other"]
    again = _client("svc")
    await store.add_client(again)
    assert await store.get_client("svc") == again


async def test_trusts_round_trip_and_are_not_removed_while_clients_are_bound(
    store: SQLStore,
) -> None:
    """A trust reads back as written, once per name; removing it is refused (and nothing
    recorded) while a client is bound to it, and done (with its event) once none is."""
    k8s = Trust("k8s", "https://kubernetes.default.svc", "https://k.test/jwks", "aud", 1.5)
    created = AuditEvent(actor="cli:test", action="trust.create", target="trust:k8s")
    await store.add_trust(k8s, event=created)
    await store.add_trust(dataclasses.replace(k8s, name="github"))
    with pytest.raises(DuplicateTrust):
        await store.add_trust(k8s)
    assert await store.get_trust("k8s") == k8s and await store.get_trust("nope") is None
    assert [trust.name for trust in await store.list_trusts()] == ["github", "k8s"]
    bound = _client("worker", auth_method="federated", trust="k8s", subject="system:x")
    await store.add_client(bound)
    assert await store.get_client("worker") == bound
    removed = AuditEvent(actor="cli:test", action="trust.remove", target="trust:k8s")
    with pytest.raises(TrustInUse) as refused:
        await store.remove_trust("k8s", event=removed)
    assert refused.value.clients == ("worker",)
    await store.remove_client("worker")
    await store.remove_trust("k8s", event=removed)
    assert await store.get_trust("k8s") is None
    with pytest.raises(UnknownTrust):
        await store.remove_trust("k8s")
    actions = [event.action for event in await store.audit_events(target="trust:k8s")]
    assert actions == ["trust.remove", "trust.create"]


UNKNOWN_ID_OPERATIONS: dict[str, Callable[[SQLStore], Awaitable[None]]] = {
    "rotate_secret": lambda s: s.rotate_secret("ghost", digest_secret("x"), time.time()),
    "disable": lambda s: s.set_disabled("ghost", True),
    "enable": lambda s: s.set_disabled("ghost", False),
    "disable_revoking": lambda s: s.set_disabled("ghost", True, revoke_tokens=True),
    "remove": lambda s: s.remove_client("ghost"),
}


@pytest.mark.parametrize("operation", UNKNOWN_ID_OPERATIONS)
async def test_unknown_client_id_raises_and_changes_nothing(
    store: SQLStore, operation: str
) -> None:
    """Writes naming an unknown id raise UnknownClient and leave other clients alone."""
    await store.add_client(_client("svc"))
    before = list(await store.list_clients())
    with pytest.raises(UnknownClient, match="ghost"):
        await UNKNOWN_ID_OPERATIONS[operation](store)
    assert list(await store.list_clients()) == before


# -- per-client limits and token waste -------------------------------------------------


async def test_rate_limits_round_trip_and_are_replaced_by_update(store: SQLStore) -> None:
    """A client's own limit and its mode are written, read back and replaced with the
    rest of the policy; only clients with a limit of their own are listed as such."""
    limited = _client("limited", rate_limit=Rate(5, 10), rate_limit_mode=MONITOR)
    await store.add_client(limited)
    await store.add_client(_client("plain"))
    assert await store.get_client("limited") == limited
    plain = await store.get_client("plain")
    assert plain is not None
    assert (plain.rate_limit, plain.rate_limit_mode, plain.early_token_requests) == (
        None,
        "enforce",
        0,
    )
    assert [c.client_id for c in await store.rate_limited_clients()] == ["limited"]
    await store.update_client(dataclasses.replace(plain, rate_limit=Rate(2, 60)))
    await store.update_client(dataclasses.replace(limited, rate_limit=None))
    assert [c.client_id for c in await store.rate_limited_clients()] == ["plain"]
    changed = await store.get_client("plain")
    assert changed is not None and changed.rate_limit == Rate(2, 60)
    async with store.engine.connect() as conn:
        stored = await conn.execute(sa.text("SELECT rate_limit FROM clients ORDER BY client_id"))
        assert [row[0] for row in stored] == [None, "2/minute"]  # the shortest spelling


async def test_early_token_requests_are_added_in_one_transaction(store: SQLStore) -> None:
    """Counts add up per client; unknown ids and zero counts are ignored; a negative
    count is refused before anything is added; an update of the policy keeps them."""
    for client_id in ("a", "b", "c"):
        await store.add_client(_client(client_id))
    await store.add_early_token_requests({"a": 2, "b": 5, "removed": 7, "c": 0})
    await store.add_early_token_requests({"a": 1})
    await store.add_early_token_requests({})
    with pytest.raises(ValueError, match="negative"):
        await store.add_early_token_requests({"a": 10, "b": -1})
    counts = {c.client_id: c.early_token_requests for c in await store.list_clients()}
    assert counts == {"a": 3, "b": 5, "c": 0}
    a = await store.get_client("a")
    assert a is not None
    await store.update_client(dataclasses.replace(a, scopes=("read",), early_token_requests=0))
    again = await store.get_client("a")
    assert again is not None and (again.scopes, again.early_token_requests) == (("read",), 3)
    # Counts larger than 32 bits (a busy client, for years) are kept exactly.
    await store.add_early_token_requests({"c": 2**40})
    big = await store.get_client("c")
    assert big is not None and big.early_token_requests == 2**40


async def test_early_token_requests_of_concurrent_writers_all_count(database_url: str) -> None:
    """Workers adding their counts at once, the same clients in any order, lose none
    (and do not deadlock on PostgreSQL)."""
    stores = [_new_store(database_url) for _ in range(4)]
    try:
        for store in stores:
            await store.open()
        await stores[0].add_client(_client("x"))
        await stores[0].add_client(_client("y"))
        batches = [{"x": 1, "y": 2}, {"y": 3, "x": 4}] * 2
        await asyncio.gather(
            *(s.add_early_token_requests(b) for s, b in zip(stores, batches, strict=True))
        )
        counts = {c.client_id: c.early_token_requests for c in await stores[1].list_clients()}
        assert counts == {"x": 10, "y": 10}
    finally:
        for store in stores:
            await store.close()


async def test_an_unreadable_rate_limit_is_taken_as_the_services(store: SQLStore) -> None:
    """A limit or a mode put in the table by hand that the store cannot read does not
    fail the client's every request: it is taken as no limit of its own, enforced."""
    await store.add_client(_client("svc", rate_limit=Rate(2, 60), rate_limit_mode=MONITOR))
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE clients SET rate_limit = '2/fortnight', rate_limit_mode = 'loud'")
        )
    client = await store.get_client("svc")
    assert client is not None and (client.rate_limit, client.rate_limit_mode) == (None, "enforce")


# -- revoked tokens --------------------------------------------------------------------


async def test_revoke_token_is_idempotent_and_visible(store: SQLStore) -> None:
    """A revoked jti reads as revoked, revoking it twice is harmless, others are not."""
    jti = uuid.uuid4().hex
    assert not await store.is_revoked(jti)
    await store.revoke_token(jti, "svc", time.time() + 60)
    await store.revoke_token(jti, "svc", time.time() + 60)
    assert await store.is_revoked(jti)
    assert not await store.is_revoked(uuid.uuid4().hex)


async def test_concurrent_revocations_of_one_token_all_succeed(store: SQLStore) -> None:
    """Twenty revocations of one jti at once (a client retrying, or racing itself) all
    succeed; none fails on the deny-list's unique key."""
    jti = uuid.uuid4().hex
    results = await asyncio.gather(
        *(store.revoke_token(jti, "svc", time.time() + 60) for _ in range(20)),
        return_exceptions=True,
    )
    assert [r for r in results if r is not None] == []
    assert await store.is_revoked(jti)


async def test_purge_revoked_drops_only_expired_entries(store: SQLStore) -> None:
    """purge_revoked removes entries whose tokens expired before ``now`` and counts them."""
    now = time.time()
    expired = [uuid.uuid4().hex for _ in range(3)]
    live = [uuid.uuid4().hex for _ in range(2)]
    for jti in expired:
        await store.revoke_token(jti, "svc", now - 10)
    for jti in live:
        await store.revoke_token(jti, "svc", now + 3600)
    assert await store.purge_revoked(now) == 3
    assert [await store.is_revoked(j) for j in expired] == [False] * 3
    assert [await store.is_revoked(j) for j in live] == [True] * 2
    assert await store.purge_revoked(now) == 0


# -- schema and lifecycle --------------------------------------------------------------


async def test_reopening_migrates_idempotently(database_url: str) -> None:
    """Opening an up-to-date database again keeps one version row and every client."""
    first = _new_store(database_url)
    await first.open()
    try:
        client = _client("svc", scopes=("read",))
        await first.add_client(client)
        await first.open()  # the same store opened twice
        assert await _versions(first) == [SCHEMA_VERSION]
    finally:
        await first.close()

    second = _new_store(database_url)
    await second.open()
    try:
        assert await _versions(second) == [SCHEMA_VERSION]
        assert list(await second.list_clients()) == [client]
    finally:
        await second.close()


async def test_store_can_be_reopened_after_close(store: SQLStore) -> None:
    """A closed store opens again and still sees its data."""
    await store.add_client(_client("svc"))
    await store.close()
    await store.open()
    assert await store.get_client("svc") is not None


async def test_schema_newer_than_code_is_refused(store: SQLStore, database_url: str) -> None:
    """A database migrated by a newer tokendealer stops open() with a StoreError."""
    table = sa.text("UPDATE tokendealer_schema_version SET version = :v")
    async with store.engine.begin() as conn:
        await conn.execute(table, {"v": SCHEMA_VERSION + 1})
    try:
        other = _new_store(database_url)
        try:
            with pytest.raises(StoreError, match="newer"):
                await other.open()
        finally:
            await other.close()
    finally:
        async with store.engine.begin() as conn:
            await conn.execute(table, {"v": SCHEMA_VERSION})


@pytest.fixture(name="fresh_database_url", params=["sqlite", "postgres"])
def _fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database that has never been opened: a new SQLite file or a new PG database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    import asyncpg

    session_url: str = request.getfixturevalue("postgres_url")
    base, _, _ = session_url.rpartition("/")
    admin = base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    name = f"tokendealer_fresh_{uuid.uuid4().hex[:12]}"

    async def admin_run(statement: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin_run(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin_run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_concurrent_first_opens_migrate_once(fresh_database_url: str) -> None:
    """Several stores opening a new database at once all succeed and migrate it once."""
    stores = [_new_store(fresh_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        assert results == [None] * len(stores)
        assert await _versions(stores[0]) == [SCHEMA_VERSION]
        # Every store works on the same data.
        await stores[0].add_client(_client("from-first"))
        await stores[3].add_client(_client("from-last"))
        for store in stores:
            assert [c.client_id for c in await store.list_clients()] == [
                "from-first",
                "from-last",
            ]
    finally:
        for store in stores:
            await store.close()


V1_CLIENTS = """CREATE TABLE clients (
    client_id VARCHAR(128) PRIMARY KEY, secret_digest VARCHAR(64) NOT NULL,
    previous_secret_digest VARCHAR(64), previous_expires_at FLOAT, scopes TEXT NOT NULL,
    audiences TEXT NOT NULL, ttl INTEGER, disabled BOOLEAN NOT NULL, created_at FLOAT NOT NULL,
    tokens_revoked_before FLOAT)"""


async def test_version_1_database_migrates_to_token_epochs(fresh_database_url: str) -> None:
    """A database of schema version 1 keeps its clients; the one whose tokens had been
    revoked gets a fresh epoch (its pre-upgrade tokens carry none and stay refused), the
    others the empty epoch that matches their outstanding tokens."""
    store = _new_store(fresh_database_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text(V1_CLIENTS))
            await conn.execute(sa.text("CREATE TABLE tokendealer_schema_version (version INT)"))
            await conn.execute(sa.text("INSERT INTO tokendealer_schema_version VALUES (1)"))
            await conn.execute(
                sa.text(
                    "INSERT INTO clients VALUES (:id, :d, NULL, NULL, 'read', '', NULL, "
                    ":off, 1.0, :revoked)"
                ),
                [
                    {"id": "plain", "d": "0" * 64, "off": False, "revoked": None},
                    {"id": "revoked", "d": "1" * 64, "off": True, "revoked": 5.0},
                ],
            )
        await store.open()
        assert await _versions(store) == [SCHEMA_VERSION]
        plain, revoked = await store.list_clients()
        assert (plain.client_id, plain.scopes, plain.token_epoch) == ("plain", ("read",), "")
        assert revoked.disabled and len(revoked.token_epoch) == 16
        # Version 3: no description, no token noted yet; the admin tables exist, empty.
        assert (plain.description, plain.last_token_at) == ("", None)
        assert list(await store.list_admins()) == [] and list(await store.audit_events()) == []
        # Replicas of version 1, during a rolling upgrade, still read their column.
        async with store.engine.connect() as conn:
            old = await conn.execute(sa.text("SELECT tokens_revoked_before FROM clients"))
            assert sorted(row[0] is None for row in old) == [False, True]
    finally:
        await store.close()


V4_CLIENTS = """CREATE TABLE clients (
    client_id VARCHAR(128) PRIMARY KEY, secret_digest VARCHAR(64) NOT NULL,
    previous_secret_digest VARCHAR(64), previous_expires_at FLOAT, scopes TEXT NOT NULL,
    audiences TEXT NOT NULL, ttl INTEGER, disabled BOOLEAN NOT NULL, created_at FLOAT NOT NULL,
    token_epoch VARCHAR(32) NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',
    last_token_at FLOAT, auth_method VARCHAR(32) NOT NULL DEFAULT 'client_secret',
    jwks_uri TEXT, jwks TEXT, trust VARCHAR(64), subject TEXT, subject_pattern TEXT,
    claims TEXT NOT NULL DEFAULT '{}', revision INTEGER NOT NULL DEFAULT 0)"""


async def test_version_4_database_migrates_to_per_client_limits(fresh_database_url: str) -> None:
    """A database of schema version 4 keeps its clients, every field, its deny-list and
    its audit trail; each client gets no limit of its own, enforced, and no early token
    request, and the new columns are written and read."""
    store = _new_store(fresh_database_url)
    others = [t for t in schema.metadata.sorted_tables if t.name not in ("clients",)]
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text(V4_CLIENTS))
            for table in others:
                await conn.run_sync(table.create)
            await conn.execute(sa.text("INSERT INTO tokendealer_schema_version VALUES (4)"))
            await conn.execute(
                sa.text(
                    "INSERT INTO clients (client_id, secret_digest, scopes, audiences, ttl, "
                    "disabled, created_at, token_epoch, description, last_token_at, claims, "
                    "revision) VALUES ('svc', :d, 'read write', 'urn:a', 600, :off, 10.0, "
                    "'e1', 'Billing', 20.0, :claims, 3)"
                ),
                {"d": "0" * 64, "off": False, "claims": '{"tenant":"acme"}'},
            )
            await conn.execute(
                sa.text("INSERT INTO revoked_tokens VALUES ('j1', 'svc', :exp)"),
                {"exp": time.time() + 3600},
            )
        await store.record(AuditEvent(actor="cli:a", action="client.create", target="client:svc"))
        await store.open()
        assert await _versions(store) == [SCHEMA_VERSION]
        (client,) = await store.list_clients()
        assert (client.scopes, client.audiences, client.ttl, client.description) == (
            ("read", "write"),
            ("urn:a",),
            600,
            "Billing",
        )
        assert (client.token_epoch, client.last_token_at, client.revision) == ("e1", 20.0, 3)
        assert dict(client.claims) == {"tenant": "acme"}
        assert (client.rate_limit, client.rate_limit_mode, client.early_token_requests) == (
            None,
            "enforce",
            0,
        )
        assert await store.is_revoked("j1")
        assert [event.action for event in await store.audit_events()] == ["client.create"]
        await store.update_client(dataclasses.replace(client, rate_limit=Rate(3, 60)))
        await store.add_early_token_requests({"svc": 4})
        changed = await store.get_client("svc")
        assert changed is not None
        assert (changed.rate_limit, changed.early_token_requests) == (Rate(3, 60), 4)
        await store.open()  # migrated once: opening again changes nothing
        assert await _versions(store) == [SCHEMA_VERSION]
    finally:
        await store.close()


async def test_concurrent_adds_of_one_id_admit_exactly_one(database_url: str) -> None:
    """Two stores racing to add the same id: one wins, the other gets DuplicateClient."""
    stores = [_new_store(database_url) for _ in range(2)]
    try:
        for store in stores:
            await store.open()
        candidates = [_client("svc", scopes=(f"s{i}",)) for i in range(len(stores))]
        results = await asyncio.gather(
            *(s.add_client(c) for s, c in zip(stores, candidates, strict=True)),
            return_exceptions=True,
        )
        winners = [c for c, r in zip(candidates, results, strict=True) if r is None]
        losers = [r for r in results if r is not None]
        assert len(winners) == 1
        assert len(losers) == 1 and isinstance(losers[0], DuplicateClient)
        assert list(await stores[1].list_clients()) == winners
    finally:
        for store in stores:
            await store.close()


# -- unavailable databases -------------------------------------------------------------


def _not_a_database(tmp_path: Path) -> str:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite file\n" * 200)
    return f"sqlite:///{path}"


def _directory(tmp_path: Path) -> str:
    path = tmp_path / "a-directory"
    path.mkdir()
    return f"sqlite:///{path}"


UNAVAILABLE: dict[str, Callable[[Path], str]] = {
    "postgres-closed-port": lambda _: "postgresql://postgres@127.0.0.1:1/x",
    "sqlite-missing-directory": lambda p: f"sqlite:///{p / 'missing' / 'dir' / 'x.db'}",
    "sqlite-path-is-directory": _directory,
    "sqlite-not-a-database": _not_a_database,
}


@pytest.mark.parametrize("case", UNAVAILABLE)
async def test_unreachable_database_raises_store_unavailable(tmp_path: Path, case: str) -> None:
    """A database that cannot be reached or read raises StoreUnavailable, one line."""
    store = _new_store(UNAVAILABLE[case](tmp_path))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.open()
    finally:
        await store.close()
    message = str(caught.value)
    assert message.startswith("database unavailable: ")
    assert "\n" not in message
    # The driver's exception is not chained in: callers see only the store's error.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_operations_on_unreachable_database_raise_store_unavailable() -> None:
    """Reads and writes against a closed port raise StoreUnavailable, not driver errors."""
    store = _new_store("postgresql://postgres@127.0.0.1:1/x")
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get_client("svc"),
        lambda: store.list_clients(),
        lambda: store.add_client(_client("svc")),
        lambda: store.rotate_secret("svc", "0" * 64, 0.0),
        lambda: store.set_disabled("svc", True),
        lambda: store.remove_client("svc"),
        lambda: store.revoke_token("j", "svc", 0.0),
        lambda: store.is_revoked("j"),
        lambda: store.purge_revoked(0.0),
    ]
    try:
        for operation in operations:
            with pytest.raises(StoreUnavailable):
                await operation()
    finally:
        await store.close()
