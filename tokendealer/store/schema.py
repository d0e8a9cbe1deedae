"""Tables and the versioned schema.

``schema_version`` holds one row; each entry of ``MIGRATIONS`` takes the schema from
version ``i`` to ``i + 1`` and runs in the same transaction as the version bump.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokendealer.protocol.clients import new_token_epoch

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
    sa.Column("token_epoch", sa.String(32), nullable=False, server_default=""),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("last_token_at", sa.Float, nullable=True),
    sa.Column("auth_method", sa.String(32), nullable=False, server_default="client_secret"),
    sa.Column("jwks_uri", sa.Text, nullable=True),
    sa.Column("jwks", sa.Text, nullable=True),
    sa.Column("trust", sa.String(64), nullable=True),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("subject_pattern", sa.Text, nullable=True),
    sa.Column("claims", sa.Text, nullable=False, server_default="{}"),
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rate_limit", sa.Text, nullable=True),
    sa.Column("rate_limit_mode", sa.String(16), nullable=False, server_default="enforce"),
    sa.Column("early_token_requests", sa.BigInteger, nullable=False, server_default="0"),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("client_id", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


#: Client assertions (RFC 7523 §3 item 7) already used, each kept until it expires: a
#: ``jti`` is accepted once per client, across all workers and replicas.
used_assertions = sa.Table(
    "used_assertions",
    metadata,
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

#: External issuers whose tokens authenticate federated clients (workload identity).
trusts = sa.Table(
    "trusts",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("issuer", sa.Text, nullable=False),
    sa.Column("jwks_uri", sa.Text, nullable=True),
    sa.Column("audience", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


#: Signing keys of the database key store (``TOKENDEALER_KEY_STORE=database``): each
#: private key sealed with AES-256-GCM under the key-encryption key, its row's other
#: columns the authenticated data (``tokendealer.keys.sealing``).
signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(128), primary_key=True),
    sa.Column("alg", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("activate_at", sa.Float, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)


admins = sa.Table(
    "admins",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("password_changed_at", sa.Float, nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("actor", sa.String(200), nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False, index=True),
    sa.Column("target", sa.String(300), nullable=False, index=True),
    sa.Column("details", sa.Text, nullable=False, default="{}"),
)


def _v1(conn: Connection) -> None:
    clients.create(conn, checkfirst=True)
    revoked_tokens.create(conn, checkfirst=True)


def _v2(conn: Connection) -> None:
    """Token epochs replace the ``tokens_revoked_before`` instant (whole seconds, which a
    worker minting from a stale cached record could pass).

    Tokens minted before this version carry no epoch, which matches the empty epoch the
    existing rows get; a client whose tokens were revoked gets a fresh epoch instead, so
    every token it was issued before the upgrade stays refused (tokens it was issued after
    being enabled again must be fetched anew: the safe side).

    The old column stays, unused, so that replicas of the previous version still running
    during a rolling upgrade can read their clients; a later version drops it.
    """
    columns = {column["name"] for column in sa.inspect(conn).get_columns("clients")}
    if "token_epoch" not in columns:
        conn.execute(
            sa.text("ALTER TABLE clients ADD COLUMN token_epoch VARCHAR(32) NOT NULL DEFAULT ''")
        )
    if "tokens_revoked_before" in columns:
        revoked = conn.execute(
            sa.text("SELECT client_id FROM clients WHERE tokens_revoked_before IS NOT NULL")
        ).scalars()
        for client_id in list(revoked):
            conn.execute(
                clients.update()
                .where(clients.c.client_id == client_id)
                .values(token_epoch=new_token_epoch())
            )


def _v3(conn: Connection) -> None:
    """The admin surface: clients get a description and the time of their last token;
    administrator accounts and the audit trail get tables."""
    columns = {column["name"] for column in sa.inspect(conn).get_columns("clients")}
    if "description" not in columns:
        conn.execute(sa.text("ALTER TABLE clients ADD COLUMN description TEXT NOT NULL DEFAULT ''"))
    if "last_token_at" not in columns:
        conn.execute(sa.text("ALTER TABLE clients ADD COLUMN last_token_at FLOAT"))
    admins.create(conn, checkfirst=True)
    audit_events.create(conn, checkfirst=True)


_V4_COLUMNS = {
    "auth_method": "VARCHAR(32) NOT NULL DEFAULT 'client_secret'",
    "jwks_uri": "TEXT",
    "jwks": "TEXT",
    "trust": "VARCHAR(64)",
    "subject": "TEXT",
    "subject_pattern": "TEXT",
    "claims": "TEXT NOT NULL DEFAULT '{}'",
    "revision": "INTEGER NOT NULL DEFAULT 0",
}


def _v4(conn: Connection) -> None:
    """Clients without shared secrets and with claims of their own: how a client
    authenticates and with what, its static claims, and a revision for conditional
    updates; used assertion ids and trusted issuers get tables."""
    columns = {column["name"] for column in sa.inspect(conn).get_columns("clients")}
    for name, declaration in _V4_COLUMNS.items():
        if name not in columns:
            statement = f"ALTER TABLE clients ADD COLUMN {name} {declaration}"  # nosec B608
            conn.execute(sa.text(statement))
    used_assertions.create(conn, checkfirst=True)
    trusts.create(conn, checkfirst=True)


_V5_COLUMNS = {
    "rate_limit": "TEXT",
    "rate_limit_mode": "VARCHAR(16) NOT NULL DEFAULT 'enforce'",
    "early_token_requests": "BIGINT NOT NULL DEFAULT 0",  # nosec B105 - a column type
}


def _v5(conn: Connection) -> None:
    """Per-client limits and token waste: a client's own rate limit (``COUNT/UNIT``;
    none: the service-wide one) and its mode, and the count of its token requests made
    while it still held a token with more than half its lifetime left. Existing clients
    keep the service-wide limit, enforced, and start at no such request."""
    columns = {column["name"] for column in sa.inspect(conn).get_columns("clients")}
    for name, declaration in _V5_COLUMNS.items():
        if name not in columns:
            statement = f"ALTER TABLE clients ADD COLUMN {name} {declaration}"  # nosec B608
            conn.execute(sa.text(statement))


def _v6(conn: Connection) -> None:
    """Signing keys in the database, for replicas without a shared keys directory."""
    signing_keys.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
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
