"""Tables and the versioned schema.

``schema_version`` holds one row; each entry of ``MIGRATIONS`` takes the schema from
version ``i`` to ``i + 1`` and runs in the same transaction as the version bump.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

schema_version = sa.Table(
    "tokendealer_schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("secret_digest", sa.String(64), nullable=False),
    sa.Column("previous_secret_digest", sa.String(64), nullable=True),
    sa.Column("previous_expires_at", sa.Float, nullable=True),
    sa.Column("scopes", sa.Text, nullable=False, default=""),
    sa.Column("audiences", sa.Text, nullable=False, default=""),
    sa.Column("ttl", sa.Integer, nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("tokens_revoked_before", sa.Float, nullable=True),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("client_id", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


def _v1(conn: Connection) -> None:
    clients.create(conn, checkfirst=True)
    revoked_tokens.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; return the version found before."""
    schema_version.create(conn, checkfirst=True)
    found = conn.execute(sa.select(schema_version.c.version)).scalar()
    if found is None:
        conn.execute(schema_version.insert().values(version=0))
        found = 0
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this tokendealer ({SCHEMA_VERSION})"
        )
    for version in range(found, SCHEMA_VERSION):
        MIGRATIONS[version](conn)
        conn.execute(schema_version.update().values(version=version + 1))
    return int(found)
