"""``tokendealer init``: create the database and the first signing key."""

from __future__ import annotations

import os

import click
from sqlalchemy.engine import make_url

from tokendealer.cli.common import settings_of, with_store
from tokendealer.keys.keyset import KeySet
from tokendealer.protocol.times import iso
from tokendealer.runner.server import shown_database_url
from tokendealer.service.key_sources import key_source
from tokendealer.settings import Settings
from tokendealer.store import SQLStore


@click.command(short_help="Create the database and the first signing key.")
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the database at TOKENDEALER_DATABASE_URL (or bring its schema up to date)
    and give TOKENDEALER_KEYS_DIR its first signing key; print one line saying what it
    found and did. Running it again changes nothing.

    The other management commands never create a database (a mistyped path would give
    them one of their own); 'serve' and 'init' do. A PostgreSQL database must exist: init
    creates its tables.
    """
    settings = settings_of(ctx)
    existed = _sqlite_file_exists(settings)
    # The store before the keys, as serve does; the keys where TOKENDEALER_KEY_STORE says.
    created, keyset = with_store(ctx, lambda store: _first_key(settings, store), create=True)
    where = (
        "the database key store"
        if settings.key_store == "database"
        else str(settings.keys_dir.resolve())
    )
    database = f"database {shown_database_url(settings.database_url)}"
    database += " ready" if existed else " created"
    active = keyset.active()
    if created is not None:
        key = f"signing key {created} created"
    elif active is not None:
        key = f"signing key {active.kid} active"
    elif keyset.keys:
        first = min(keyset.keys, key=lambda k: k.activate_at)
        key = f"signing key {first.kid} signs from {iso(first.activate_at)}"
    else:
        raise click.ClickException(
            f"{where} has a manifest naming no key: run 'tokendealer keys generate'"
        )
    click.echo(f"{database}; {key} in {where}")


async def _first_key(settings: Settings, store: SQLStore) -> tuple[str | None, KeySet]:
    """Opening the store created and migrated it; then the first key, if none, and every
    key loaded (a wrong key-encryption key is one line here)."""
    source = key_source(settings, store)
    created = await source.ensure_key()
    return created, await source.load()


def _sqlite_file_exists(settings: Settings) -> bool:
    """Whether the database was there before: always for PostgreSQL (init creates only
    its tables), for SQLite whether its file exists."""
    if not settings.sqlalchemy_url.startswith("sqlite"):
        return True
    path = make_url(settings.sqlalchemy_url).database
    return bool(path) and os.path.isfile(str(path))
