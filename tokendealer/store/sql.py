"""The SQL store: SQLite (aiosqlite) or PostgreSQL (asyncpg) through SQLAlchemy async Core."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tokendealer.store import schema
from tokendealer.store.base import (
    Client,
    DuplicateClient,
    StoreError,
    StoreUnavailable,
    UnknownClient,
)

_t = schema.clients
_r = schema.revoked_tokens

# Advisory lock id taken while migrating PostgreSQL, so replicas starting together
# migrate one at a time.
_MIGRATION_LOCK = 0x70CE4DEA
#: Tries (10 ms apart) to switch a new SQLite file to WAL while others hold a lock.
_WAL_ATTEMPTS = 500


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
    tokens_revoked_before=None,
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
        tokens_revoked_before=row.tokens_revoked_before,
    )


class SQLStore:
    """One store for both databases; every write runs in one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            kwargs: dict[str, Any] = {}
            if self.is_sqlite:
                kwargs["connect_args"] = {"timeout": 15}
            else:
                kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5)
            engine = create_async_engine(self.url, **kwargs)
            if self.is_sqlite:
                event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            self._engine = engine
        return self._engine

    @contextlib.asynccontextmanager
    async def _connect(self, write: bool) -> AsyncIterator[AsyncConnection]:
        try:
            if write:
                async with self.engine.begin() as conn:
                    yield conn
            else:
                async with self.engine.connect() as conn:
                    yield conn
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError, OSError, ConnectionError) as exc:
            if self.is_sqlite:
                # aiosqlite stops the worker thread of a connection that failed to open
                # with a future nobody awaits; give the thread a moment to post it, or it
                # meets a closed event loop when the caller's loop ends right after.
                await asyncio.sleep(0.05)
            raise StoreUnavailable(f"database unavailable: {_first_line(exc)}") from None

    async def open(self) -> None:
        async with self._connect(write=True) as conn:
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

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def get_client(self, client_id: str) -> Client | None:
        """The client, or None, with the same work either way.

        The token endpoint must not reveal which client ids exist by its timing, so an
        unknown id is not a cheaper query: a one-row constant is outer-joined to the
        clients table, every lookup fetches and decodes exactly one row, and a miss
        decodes a stand-in row too.
        """
        wanted = sa.select(sa.literal(client_id, sa.String).label("wanted")).subquery()
        query = sa.select(_t).select_from(wanted.outerjoin(_t, _t.c.client_id == wanted.c.wanted))
        async with self._connect(write=False) as conn:
            row = (await conn.execute(query)).one()
        if row.client_id is None:
            _row_to_client(_MISSING_ROW)
            return None
        return _row_to_client(row)

    async def list_clients(self) -> Sequence[Client]:
        async with self._connect(write=False) as conn:
            rows = (await conn.execute(sa.select(_t).order_by(_t.c.client_id))).all()
        return [_row_to_client(row) for row in rows]

    async def add_client(self, client: Client) -> None:
        try:
            async with self._connect(write=True) as conn:
                await conn.execute(
                    _t.insert().values(
                        client_id=client.client_id,
                        secret_digest=client.secret_digest,
                        scopes=" ".join(client.scopes),
                        audiences=" ".join(client.audiences),
                        ttl=client.ttl,
                        disabled=client.disabled,
                        created_at=client.created_at,
                    )
                )
        except IntegrityError:
            raise DuplicateClient(f"client {client.client_id!r} already exists") from None

    async def _update(self, client_id: str, **values: Any) -> None:
        async with self._connect(write=True) as conn:
            result = await conn.execute(
                _t.update().where(_t.c.client_id == client_id).values(**values)
            )
            if result.rowcount == 0:
                raise UnknownClient(f"no client {client_id!r}")

    async def rotate_secret(self, client_id: str, new_digest: str, grace_until: float) -> None:
        await self._update(
            client_id,
            previous_secret_digest=_t.c.secret_digest,
            previous_expires_at=grace_until,
            secret_digest=new_digest,
        )

    async def set_disabled(
        self, client_id: str, disabled: bool, *, revoke_tokens_before: float | None = None
    ) -> None:
        values: dict[str, Any] = {"disabled": disabled}
        if revoke_tokens_before is not None:
            values["tokens_revoked_before"] = revoke_tokens_before
        await self._update(client_id, **values)

    async def remove_client(self, client_id: str) -> None:
        async with self._connect(write=True) as conn:
            result = await conn.execute(_t.delete().where(_t.c.client_id == client_id))
            if result.rowcount == 0:
                raise UnknownClient(f"no client {client_id!r}")

    async def revoke_token(self, jti: str, client_id: str, expires_at: float) -> None:
        try:
            async with self._connect(write=True) as conn:
                await conn.execute(
                    _r.insert().values(jti=jti, client_id=client_id, expires_at=expires_at)
                )
        except IntegrityError:
            pass  # already revoked, perhaps by a concurrent request: the same outcome

    async def is_revoked(self, jti: str) -> bool:
        async with self._connect(write=False) as conn:
            row = (await conn.execute(sa.select(_r.c.jti).where(_r.c.jti == jti))).first()
        return row is not None

    async def purge_revoked(self, now: float) -> int:
        async with self._connect(write=True) as conn:
            result = await conn.execute(_r.delete().where(_r.c.expires_at < now))
        return int(result.rowcount)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    try:
        _set_pragmas(dbapi_connection)
    except BaseException:
        # SQLAlchemy does not close a connection whose connect hook failed (a file that
        # is not a database fails here): close it, or aiosqlite's thread outlives it.
        dbapi_connection.close()
        raise


def _set_pragmas(dbapi_connection: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=15000")
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
