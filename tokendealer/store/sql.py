"""The SQL store: SQLite (aiosqlite) or PostgreSQL (asyncpg) through SQLAlchemy async Core."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable

from tokendealer.log import get_logger
from tokendealer.observe import tracing
from tokendealer.outage import Outage
from tokendealer.protocol.admins import Admin
from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.clients import Client, new_token_epoch
from tokendealer.protocol.rates import ENFORCE, RATE_LIMIT_MODES, rate_text, read_rate
from tokendealer.protocol.trusts import Trust
from tokendealer.settings import Rate
from tokendealer.store import admins, audit, schema, trusts
from tokendealer.store import signing_keys as key_rows
from tokendealer.store.base import (
    ChangedMeanwhile,
    DuplicateAdmin,
    DuplicateClient,
    DuplicateTrust,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    TrustInUse,
    UnknownAdmin,
    UnknownClient,
    UnknownTrust,
    UsedAssertion,
)
from tokendealer.store.signing_keys import SealedKey

T = TypeVar("T")

_t = schema.clients
_r = schema.revoked_tokens
_u = schema.used_assertions
log = get_logger("tokendealer.store")
#: Seconds between two purges of expired used assertions (by one process).
ASSERTION_PURGE_INTERVAL = 60.0

# Advisory lock id taken while migrating PostgreSQL, so replicas starting together
# migrate one at a time.
_MIGRATION_LOCK = 0x70CE4DEA
#: Tries (10 ms apart) to switch a new SQLite file to WAL while others hold a lock.
_WAL_ATTEMPTS = 500
#: Seconds ``open`` may wait, for stores that migrate together take turns.
MIGRATION_TIMEOUT = 30.0


def _split(value: str) -> tuple[str, ...]:
    return tuple(value.split(" ")) if value else ()


#: Decoded in place of a missing client's row, so a miss costs what a hit costs.
_MISSING_ROW = SimpleNamespace(
    client_id="",
    secret_digest="0" * 64,
    scopes="a b",
    audiences="a",
    ttl=None,
    disabled=False,
    created_at=0.0,
    previous_secret_digest=None,
    previous_expires_at=None,
    token_epoch="",  # nosec B106 - an epoch, not a password
    description="",
    last_token_at=None,
    auth_method="client_secret",
    jwks_uri=None,
    jwks=None,
    trust=None,
    subject=None,
    subject_pattern=None,
    claims="{}",
    revision=0,
    rate_limit=None,
    rate_limit_mode=ENFORCE,
    early_token_requests=0,
)


def _row_to_client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        secret_digest=row.secret_digest,
        scopes=_split(row.scopes),
        audiences=_split(row.audiences),
        ttl=row.ttl,
        disabled=bool(row.disabled),
        created_at=row.created_at,
        previous_secret_digest=row.previous_secret_digest,
        previous_expires_at=row.previous_expires_at,
        token_epoch=row.token_epoch,
        description=row.description,
        last_token_at=row.last_token_at,
        auth_method=row.auth_method,
        jwks_uri=row.jwks_uri,
        jwks=row.jwks,
        trust=row.trust,
        subject=row.subject,
        subject_pattern=row.subject_pattern,
        claims=_claims(row.client_id, row.claims),
        revision=row.revision,
        rate_limit=_rate_limit(row.client_id, row.rate_limit),
        rate_limit_mode=_rate_limit_mode(row.client_id, row.rate_limit_mode),
        early_token_requests=int(row.early_token_requests),
    )


def _claims(client_id: str, text: str) -> dict[str, Any]:
    """A record's claims column (JSON, an object): written only by this store, so anything
    else was put there by hand. It must not make every token request of the client fail:
    it is logged and taken as no claims."""
    if text in ("", "{}"):
        return {}
    try:
        claims = json.loads(text)
    except (ValueError, RecursionError):
        claims = None
    if not isinstance(claims, dict):
        log.error("client_claims_unreadable", client_id=client_id)
        return {}
    return claims


def _rate_limit(client_id: str, text: str | None) -> Rate | None:
    """A record's rate limit column (``COUNT/UNIT``, or NULL for the service's): written
    only by this store, so a value it cannot read was put there by hand. It is logged and
    taken as the service-wide limit, rather than failing every request of the client."""
    if text is None:
        return None
    try:
        return read_rate(text)
    except ValueError:
        log.error("client_rate_limit_unreadable", client_id=client_id)
        return None


def _rate_limit_mode(client_id: str, text: str) -> str:
    """A record's rate limit mode; one it does not know (a hand edit) is logged and
    taken as ``enforce``."""
    if text in RATE_LIMIT_MODES:
        return text
    log.error("client_rate_limit_mode_unreadable", client_id=client_id)
    return ENFORCE


def _policy(client: Client) -> dict[str, Any]:
    """The columns of a client's policy: what registration writes and an update replaces."""
    return {
        "scopes": " ".join(client.scopes),
        "audiences": " ".join(client.audiences),
        "ttl": client.ttl,
        "description": client.description,
        "auth_method": client.auth_method,
        "jwks_uri": client.jwks_uri,
        "jwks": client.jwks,
        "trust": client.trust,
        "subject": client.subject,
        "subject_pattern": client.subject_pattern,
        "claims": json.dumps(dict(client.claims), sort_keys=True, separators=(",", ":")),
        "rate_limit": None if client.rate_limit is None else rate_text(client.rate_limit),
        "rate_limit_mode": client.rate_limit_mode,
    }


class SQLStore:
    """One store for both databases; every write runs in one transaction.

    Every operation is bounded by ``timeout`` seconds, connecting included: a database that
    hangs (a network partition, a stopped server, a lock held elsewhere) is answered with
    ``StoreUnavailable`` after at most that long, never by a hung request. The driver's own
    timeouts (connect, statement, SQLite's busy timeout) end the abandoned work behind it.
    After a failure, operations fail fast for ``retry_interval`` seconds, then one probes
    the database again (``tokendealer.outage``): a dead database is not asked again by
    every queued request, and service resumes by itself once it answers.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 3.0,
        retry_interval: float = 1.0,
        log_outages: bool = True,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.timeout = timeout
        self.outage = Outage("store", retry_interval, logged=log_outages)
        self._next_assertion_purge = 0.0
        #: Called with a client's id after each change of it written here.
        self._client_watchers: list[Callable[[str], None]] = []
        self._engine: AsyncEngine | None = None
        #: Operations given up on (timed out) whose cleanup still runs.
        self._abandoned: set[asyncio.Future[Any]] = set()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            kwargs: dict[str, Any] = {}
            if self.is_sqlite:
                kwargs["connect_args"] = {"timeout": self.timeout}
            else:
                kwargs.update(
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=5,
                    pool_timeout=self.timeout,
                    connect_args={"timeout": self.timeout, "command_timeout": self.timeout},
                )
            engine = create_async_engine(self.url, **kwargs)
            if self.is_sqlite:
                busy_ms = max(1, int(self.timeout * 1000))
                event.listen(
                    engine.sync_engine,
                    "connect",
                    lambda conn, _record: _sqlite_pragmas(conn, busy_ms),
                )
            self._engine = engine
        return self._engine

    async def _run(
        self,
        operation: Callable[[AsyncConnection], Awaitable[T]],
        *,
        write: bool,
        seconds: float | None = None,
        best_effort: bool = False,
    ) -> T:
        """Run ``operation`` on a connection (in a transaction when ``write``), within
        ``seconds`` (default ``timeout``), connecting and cleaning up included.

        The operation runs as a task of its own: when time is up the caller is answered at
        once, and the task is cancelled and left to close its connection in the background
        (closing a connection to a hung server waits too). Traced as ``store <method>``,
        the store's method it runs for.
        """
        traced = (
            tracing.span(_operation_name(), write=write) if tracing.enabled else tracing.NO_SPAN
        )
        with traced:
            if not self.outage.may_try():
                raise StoreUnavailable("database unavailable (failing fast after a failure)")
            if best_effort:  # never the probe of an outage, never the cause of one
                return await self._best_effort(operation, seconds)
            task = asyncio.ensure_future(self._transact(operation, write))
            try:
                async with asyncio.timeout(self.timeout if seconds is None else seconds):
                    result = await asyncio.shield(task)
            except TimeoutError:
                self._abandon(task)
                self.outage.failed("timed out")
                raise StoreUnavailable("database unavailable: timed out") from None
            except StoreUnavailable as exc:
                self.outage.failed(str(exc))
                raise
            except (StoreError, IntegrityError):  # refused by the database: it answered
                self.outage.succeeded()
                raise
            except asyncio.CancelledError:  # the caller went away: so does its operation
                self._abandon(task)
                raise
            self.outage.succeeded()
            return result

    async def _best_effort(
        self, operation: Callable[[AsyncConnection], Awaitable[T]], seconds: float | None
    ) -> T:
        """A write nobody waits for (a note): bounded like any operation, but its failure
        is its own: it does not count as an outage of the store for every request."""
        task = asyncio.ensure_future(self._transact(operation, True))
        try:
            async with asyncio.timeout(self.timeout if seconds is None else seconds):
                return await asyncio.shield(task)
        except TimeoutError:
            self._abandon(task)
            raise StoreUnavailable("database unavailable: timed out") from None

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(_forget(self._abandoned))

    async def _transact(
        self, operation: Callable[[AsyncConnection], Awaitable[T]], write: bool
    ) -> T:
        try:
            if write:
                async with self.engine.begin() as conn:
                    return await operation(conn)
            async with self.engine.connect() as conn:
                return await operation(conn)
        except IntegrityError:
            raise
        except DBAPIError as exc:
            if _refused_value(exc):
                # The database refused a value (a NUL byte, a string over its column):
                # the request's fault, not an outage, which would fail every request.
                raise StoreRefused(f"the database refused a value: {_first_line(exc)}") from None
            await self._settle()
            raise StoreUnavailable(f"database unavailable: {_first_line(exc)}") from None
        except (OSError, ConnectionError) as exc:
            await self._settle()
            raise StoreUnavailable(f"database unavailable: {_first_line(exc)}") from None

    async def _settle(self) -> None:
        if self.is_sqlite:
            # aiosqlite stops the worker thread of a connection that failed to open
            # with a future nobody awaits; give the thread a moment to post it, or it
            # meets a closed event loop when the caller's loop ends right after.
            await asyncio.sleep(0.05)

    async def open(self, *, seconds: float = MIGRATION_TIMEOUT, create: bool = True) -> None:
        """Connect and migrate, within ``seconds`` (at least ``timeout``): stores opening a
        new database together wait for each other's migration (``MIGRATION_TIMEOUT``).

        ``create=False`` (the management commands) refuses to make a new SQLite file: a
        mistyped or relative path would otherwise give them an empty database of their
        own. An existing database is still migrated. PostgreSQL never creates one."""
        if self.is_sqlite:
            _create_private(self.url, create=create)

        async def migrate(conn: AsyncConnection) -> None:
            if self.is_sqlite:
                # Take the write lock before checking the schema, so stores opening a new
                # file together migrate one at a time (pysqlite would otherwise run the
                # check and the CREATE TABLE outside any transaction and race).
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            try:
                await conn.run_sync(schema.migrate)
            except RuntimeError as exc:
                raise StoreError(str(exc)) from None

        try:
            await self._run(migrate, write=True, seconds=max(self.timeout, seconds))
        except (TypeError, ValueError) as exc:  # the driver refuses a URL query parameter
            raise StoreError(f"the database URL is not usable: {_first_line(exc)}") from None

    async def close(self) -> None:
        for task in list(self._abandoned):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, self.timeout)
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def ping(self) -> None:
        async def select_one(conn: AsyncConnection) -> None:
            await conn.execute(sa.text("SELECT 1"))

        await self._run(select_one, write=False)

    async def get_client(self, client_id: str) -> Client | None:
        """The client, or None, with the same work either way.

        The token endpoint must not reveal which client ids exist by its timing, so an
        unknown id is not a cheaper query: a one-row constant is outer-joined to the
        clients table, every lookup fetches and decodes exactly one row, and a miss
        decodes a stand-in row too.
        """
        wanted = sa.select(sa.literal(client_id, sa.String).label("wanted")).subquery()
        query = sa.select(_t).select_from(wanted.outerjoin(_t, _t.c.client_id == wanted.c.wanted))

        async def fetch(conn: AsyncConnection) -> Any:
            return (await conn.execute(query)).one()

        row = await self._run(fetch, write=False)
        if row.client_id is None:
            _row_to_client(_MISSING_ROW)
            return None
        return _row_to_client(row)

    async def list_clients(self) -> Sequence[Client]:
        async def fetch(conn: AsyncConnection) -> Sequence[Any]:
            return (await conn.execute(sa.select(_t).order_by(_t.c.client_id))).all()

        return [_row_to_client(row) for row in await self._run(fetch, write=False)]

    async def rate_limited_clients(self) -> Sequence[Client]:
        """The clients with a rate limit of their own, by id (one query, each record
        whole): what a worker's registry reads once, so that their limits hold from the
        first request it takes."""
        query = sa.select(_t).where(_t.c.rate_limit.is_not(None)).order_by(_t.c.client_id)

        async def fetch(conn: AsyncConnection) -> Sequence[Any]:
            return (await conn.execute(query)).all()

        return [_row_to_client(row) for row in await self._run(fetch, write=False)]

    async def _write(
        self, operation: Callable[[AsyncConnection], Awaitable[T]], event: AuditEvent | None
    ) -> T:
        """Run a change and record its audit event in the same transaction: a change
        that fails records nothing, and a change is never without its event."""

        async def change(conn: AsyncConnection) -> T:
            result = await operation(conn)
            if event is not None:
                await conn.execute(audit.insert(event))
            return result

        return await self._run(change, write=True)

    def watch_clients(self, watcher: Callable[[str], None]) -> None:
        """Have ``watcher(client_id)`` called after each change of a client written
        through this store (a process's caches forget the record at once)."""
        self._client_watchers.append(watcher)

    def _changed(self, client_id: str) -> None:
        for watcher in self._client_watchers:
            watcher(client_id)

    async def add_client(self, client: Client, *, event: AuditEvent | None = None) -> None:
        insert = _t.insert().values(
            client_id=client.client_id,
            secret_digest=client.secret_digest,
            disabled=client.disabled,
            created_at=client.created_at,
            token_epoch=client.token_epoch,
            revision=client.revision,
            **_policy(client),
        )
        try:
            await self._write(_execute(insert), event)
        except IntegrityError:
            raise DuplicateClient(f"client {client.client_id!r} already exists") from None
        self._changed(client.client_id)

    async def _update(self, client_id: str, event: AuditEvent | None = None, **values: Any) -> None:
        update = _t.update().where(_t.c.client_id == client_id).values(**values)

        await self._write(_one_row(update, UnknownClient(f"no client {client_id!r}")), event)
        self._changed(client_id)

    async def update_client(
        self,
        client: Client,
        *,
        previous: Client | None = None,
        event: AuditEvent | None = None,
    ) -> None:
        """Replace the client's policy (scopes, audiences, TTL, description, how it
        authenticates, its claims, its rate limit and mode); its secrets, state, token
        epoch and counts stay, and its revision goes up by one. With ``previous`` (the
        record the change was computed from), only if the record is still at that
        revision: two concurrent edits never lose one, and never record what was not
        written."""
        update = _t.update().where(_t.c.client_id == client.client_id)
        if previous is not None:
            update = update.where(_t.c.revision == previous.revision)
        update = update.values(revision=_t.c.revision + 1, **_policy(client))

        missing: StoreError = (
            UnknownClient(f"no client {client.client_id!r}")
            if previous is None
            else ChangedMeanwhile(f"client {client.client_id!r} changed meanwhile (or was removed)")
        )
        await self._write(_one_row(update, missing), event)
        self._changed(client.client_id)

    async def rotate_secret(
        self,
        client_id: str,
        new_digest: str,
        grace_until: float,
        *,
        revoke_tokens: bool = False,
        event: AuditEvent | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "previous_secret_digest": _t.c.secret_digest,
            "previous_expires_at": grace_until,
            "secret_digest": new_digest,
        }
        if revoke_tokens:
            values["token_epoch"] = new_token_epoch()
        await self._update(client_id, event, **values)

    async def set_disabled(
        self,
        client_id: str,
        disabled: bool,
        *,
        revoke_tokens: bool = False,
        event: AuditEvent | None = None,
    ) -> None:
        values: dict[str, Any] = {"disabled": disabled}
        if revoke_tokens:
            values["token_epoch"] = new_token_epoch()
        await self._update(client_id, event, **values)

    async def remove_client(self, client_id: str, *, event: AuditEvent | None = None) -> None:
        delete = _t.delete().where(_t.c.client_id == client_id)

        await self._write(_one_row(delete, UnknownClient(f"no client {client_id!r}")), event)
        self._changed(client_id)

    async def record_token_issued(self, client_id: str, at: float, *, every: float) -> None:
        """Set the client's ``last_token_at`` to ``at`` unless it was set less than
        ``every`` seconds before: one write a minute per busy client, not one a token."""
        update = (
            _t.update()
            .where(_t.c.client_id == client_id)
            .where(sa.or_(_t.c.last_token_at.is_(None), _t.c.last_token_at <= at - every))
            .values(last_token_at=at)
        )
        await self._run(_execute(update), write=True, best_effort=True)

    async def add_early_token_requests(self, counts: Mapping[str, int]) -> None:
        """Add ``counts[client_id]`` to each client's ``early_token_requests``, all in one
        transaction; ids of no client (removed meanwhile) are ignored, and so are counts
        of 0. A note nobody waits for, like ``record_token_issued``: its failure is not an
        outage of the store. A count below 0 is a ValueError, before anything is written."""
        if any(count < 0 for count in counts.values()):
            raise ValueError("early token request counts are not negative")
        # In the order of the ids: workers adding at once lock the rows in one order (on
        # PostgreSQL, two transactions taking them in opposite orders deadlock).
        rows = [{"b_id": cid, "b_count": n} for cid, n in sorted(counts.items()) if n]
        if not rows:
            return
        update = (
            _t.update()
            .where(_t.c.client_id == sa.bindparam("b_id"))
            .values(early_token_requests=_t.c.early_token_requests + sa.bindparam("b_count"))
        )

        async def add(conn: AsyncConnection) -> None:
            await conn.execute(update, rows)

        await self._run(add, write=True, best_effort=True)

    # -- administrators and the audit trail ----------------------------------------------

    async def record(self, event: AuditEvent) -> None:
        """An event that goes with no change here (a sign-in, a change to key files)."""
        await self._run(_execute(audit.insert(event)), write=True)

    async def audit_events(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEvent]:
        statement = audit.query(actor=actor, target=target, action=action, since=since, limit=limit)

        async def fetch(conn: AsyncConnection) -> Sequence[Any]:
            rows: Sequence[Any] = (await conn.execute(statement)).all()
            return rows

        return [audit.to_event(row) for row in await self._run(fetch, write=False)]

    async def get_admin(self, name: str) -> Admin | None:
        async def fetch(conn: AsyncConnection) -> Any:
            return (await conn.execute(admins.select(name))).first()

        row = await self._run(fetch, write=False)
        return None if row is None else admins.to_admin(row)

    async def list_admins(self) -> Sequence[Admin]:
        async def fetch(conn: AsyncConnection) -> Sequence[Any]:
            rows: Sequence[Any] = (await conn.execute(admins.listing())).all()
            return rows

        return [admins.to_admin(row) for row in await self._run(fetch, write=False)]

    async def add_admin(self, admin: Admin, *, event: AuditEvent | None = None) -> None:
        try:
            await self._write(_execute(admins.insert(admin)), event)
        except IntegrityError:
            raise DuplicateAdmin(f"admin {admin.name!r} already exists") from None

    async def set_admin_password(
        self, name: str, password_hash: str, at: float, *, event: AuditEvent | None = None
    ) -> None:
        update = admins.set_password(name, password_hash, at)
        await self._write(_one_row(update, UnknownAdmin(f"no admin {name!r}")), event)

    async def remove_admin(self, name: str, *, event: AuditEvent | None = None) -> None:
        delete = admins.delete(name)
        await self._write(_one_row(delete, UnknownAdmin(f"no admin {name!r}")), event)

    # -- trusted issuers ----------------------------------------------------------------

    async def get_trust(self, name: str) -> Trust | None:
        async def fetch(conn: AsyncConnection) -> Any:
            return (await conn.execute(trusts.select(name))).first()

        row = await self._run(fetch, write=False)
        return None if row is None else trusts.to_trust(row)

    async def list_trusts(self) -> Sequence[Trust]:
        async def fetch(conn: AsyncConnection) -> Sequence[Any]:
            rows: Sequence[Any] = (await conn.execute(trusts.listing())).all()
            return rows

        return [trusts.to_trust(row) for row in await self._run(fetch, write=False)]

    async def signing_keys(self) -> list[SealedKey]:
        """The database key store's keys, sealed, by activation."""

        async def fetch(conn: AsyncConnection) -> Sequence[Any]:
            rows: Sequence[Any] = (await conn.execute(key_rows.listing())).all()
            return rows

        return [key_rows.to_key(row) for row in await self._run(fetch, write=False)]

    async def signing_key_stamp(self) -> tuple[tuple[Any, ...], ...]:
        """What changes when the keys change (kids, algorithms, activation times): read
        about once a second by each worker, without the sealed keys."""

        async def fetch(conn: AsyncConnection) -> Sequence[Any]:
            rows: Sequence[Any] = (await conn.execute(key_rows.stamps())).all()
            return rows

        return tuple(tuple(row) for row in await self._run(fetch, write=False))

    async def change_signing_keys(
        self,
        change: Callable[[list[SealedKey]], key_rows.KeyChange[T]],
        *,
        events: Sequence[AuditEvent] = (),
    ) -> T:
        """One change of the keys: ``change`` sees them all and says what to put and
        remove, in a transaction that holds the keys' lock from before the read (changes
        from several processes happen one after the other), with ``events`` recorded in
        the same transaction."""

        async def apply(conn: AsyncConnection) -> T:
            await conn.execute(key_rows.lock())
            rows = (await conn.execute(key_rows.listing())).all()
            decided = change([key_rows.to_key(row) for row in rows])
            replaced = [key.kid for key in decided.put]
            if decided.remove or replaced:
                await conn.execute(key_rows.delete([*decided.remove, *replaced]))
            for key in decided.put:
                await conn.execute(key_rows.insert(key))
            for recorded in events:
                await conn.execute(audit.insert(recorded))
            return decided.result

        return await self._run(apply, write=True)

    async def add_trust(self, trust: Trust, *, event: AuditEvent | None = None) -> None:
        try:
            await self._write(_execute(trusts.insert(trust)), event)
        except IntegrityError:
            raise DuplicateTrust(f"trust {trust.name!r} already exists") from None

    async def remove_trust(self, name: str, *, event: AuditEvent | None = None) -> None:
        """Remove the trust unless clients are bound to it (checked in the same
        transaction; no foreign key: a client whose trust is gone fails to authenticate)."""

        async def remove(conn: AsyncConnection) -> None:
            bound = list((await conn.execute(trusts.bound_clients(name))).scalars())
            if bound:
                raise TrustInUse(f"trust {name!r} has clients bound to it", bound)
            if (await conn.execute(trusts.delete(name))).rowcount == 0:
                raise UnknownTrust(f"no trust {name!r}")

        await self._write(remove, event)

    async def revoke_token(self, jti: str, client_id: str, expires_at: float) -> None:
        insert = _r.insert().values(jti=jti, client_id=client_id, expires_at=expires_at)
        # Already revoked, perhaps by a concurrent request: the same outcome.
        with contextlib.suppress(IntegrityError):
            await self._run(_execute(insert), write=True)

    async def is_revoked(self, jti: str) -> bool:
        async def fetch(conn: AsyncConnection) -> Any:
            return (await conn.execute(sa.select(_r.c.jti).where(_r.c.jti == jti))).first()

        return await self._run(fetch, write=False) is not None

    async def use_assertion(self, client_id: str, jti: str, expires_at: float) -> None:
        """Record a client assertion's ``jti`` as used until ``expires_at`` (RFC 7523 §3
        item 7), or raise ``UsedAssertion`` when it was used already, by this worker or
        another. Expired entries, of every client, go at most once per
        ``ASSERTION_PURGE_INTERVAL``, in the same transaction."""
        now = time.time()
        purge = None
        if now >= self._next_assertion_purge:
            self._next_assertion_purge = now + ASSERTION_PURGE_INTERVAL
            purge = _u.delete().where(_u.c.expires_at < now)
        insert = _u.insert().values(client_id=client_id, jti=jti, expires_at=expires_at)

        async def use(conn: AsyncConnection) -> None:
            if purge is not None:
                await conn.execute(purge)
            await conn.execute(insert)

        try:
            await self._run(use, write=True)
        except IntegrityError:
            raise UsedAssertion(f"assertion {jti!r} of {client_id!r} was used already") from None

    async def purge_revoked(self, now: float) -> int:
        delete = _r.delete().where(_r.c.expires_at < now)
        return int((await self._run(_execute(delete), write=True)).rowcount)


def _refused_value(exc: DBAPIError) -> bool:
    """A data exception (SQLSTATE class 22: a NUL byte, a value too long, a bad
    encoding): the statement's values, not the database, are at fault."""
    if isinstance(exc, DataError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("22")


def _one_row(
    statement: Executable, missing: StoreError
) -> Callable[[AsyncConnection], Awaitable[None]]:
    """An update or delete of one row; ``missing`` raised (and the transaction rolled
    back, its audit event with it) when no row matched."""

    async def change(conn: AsyncConnection) -> None:
        if (await conn.execute(statement)).rowcount == 0:
            raise missing

    return change


def _execute(statement: Executable) -> Callable[[AsyncConnection], Awaitable[CursorResult[Any]]]:
    async def execute(conn: AsyncConnection) -> CursorResult[Any]:
        return await conn.execute(statement)

    return execute


def _forget(tasks: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    def forget(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned failure is not "never retrieved"

    return forget


def _create_private(url: str, *, create: bool = True) -> None:
    """Create the SQLite file 0600 before SQLite does (it would use the umask, often
    0644), and close an existing one to 0600: it holds secret digests. SQLite gives the
    ``-wal`` and ``-shm`` files the database file's mode. Without ``create``, a missing
    file is a StoreError naming its path and the variable that sets it."""
    path = make_url(url).database
    if not path or path == ":memory:":
        return
    if not create and not os.path.isfile(path):
        raise StoreError(
            f"no database at {os.path.abspath(path)}: set TOKENDEALER_DATABASE_URL to the "
            "service's database, or create one with 'tokendealer init'"
        )
    # A path SQLite cannot open either (no such directory, a directory) is left for it to
    # report: the store answers that with StoreUnavailable.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(OSError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


def _operation_name() -> str:
    """The span name of a store operation (``store get_client``): the method ``_run`` runs
    for, its first caller that is not one of this module's private helpers (``_write``)."""
    frame = sys._getframe(2)  # 0: here, 1: _run, 2: its caller
    while (
        frame.f_back is not None and frame.f_globals is globals() and frame.f_code.co_name[0] == "_"
    ):
        frame = frame.f_back
    return f"store {frame.f_code.co_name}"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _sqlite_pragmas(dbapi_connection: Any, busy_ms: int) -> None:
    try:
        _set_pragmas(dbapi_connection, busy_ms)
    except BaseException:
        # SQLAlchemy does not close a connection whose connect hook failed (a file that
        # is not a database fails here): close it, or aiosqlite's thread outlives it.
        dbapi_connection.close()
        raise


def _set_pragmas(dbapi_connection: Any, busy_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    # Switching a new file to WAL needs an exclusive lock and fails at once with
    # "database is locked" (without the busy handler) while another connection holds
    # one: retry briefly, as happens when several processes open a new database.
    for attempt in range(_WAL_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.01)
    cursor.close()
