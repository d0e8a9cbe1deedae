"""What every ``tokendealer`` command shares: settings, the store, one-line errors, and
printing."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from tokendealer.admin.errors import AdminError, Invalid
from tokendealer.keys.keyset import KeyFileError
from tokendealer.settings import ConfigError, Settings
from tokendealer.store import SQLStore, StoreError, store_for

T = TypeVar("T")


#: The command-line spelling of the admin service's fields, for one-line errors.
_OPTIONS = {
    "client_id": "CLIENT_ID",
    "scopes": "--scope",
    "audiences": "--audience",
    "ttl": "--ttl",
    "description": "--description",
    "claims": "--claim",
    "rate_limit": "--rate-limit",
    "rate_limit_mode": "--rate-limit-mode",
    "grace": "--grace",
    "actor": "--actor",
    "target": "--target",
    "action": "--action",
    "since": "--since",
    "limit": "--limit",
    "alg": "--alg",
    "bits": "--bits",
    "activate_after": "--activate-after",
    "to": "--to",
    "old_key": "--old-key-file",
    "auth_method": "--auth-method",
    "jwks_uri": "--jwks-uri",
    "jwks": "--jwk-file",
    "trust_name": "NAME",
    "issuer": "--issuer",
    "audience": "--audience",
    "trust": "--trust",
    "subject": "--subject",
    "subject_pattern": "--subject-pattern",
}


@contextmanager
def errors() -> Iterator[None]:
    """Turn every expected failure into click's one-line ``Error: ...`` and exit 1."""
    try:
        yield
    except Invalid as exc:
        option = _OPTIONS.get(exc.field or "")
        message = f"Invalid value for '{option}': {exc}" if option else str(exc)
        raise click.ClickException(message) from None
    except (AdminError, StoreError, KeyFileError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")) from None


def cli_actor() -> str:
    """The audit trail's actor for a command: ``cli:USER``, the operating-system user the
    process runs as (its effective uid: ``USER`` and ``LOGNAME`` are the caller's to set)."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # no name for this uid (a container's arbitrary uid)
        user = f"uid{uid}"
    return f"cli:{user}"


def settings_of(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    if settings is None:
        with errors():
            settings = Settings.from_env()
        ctx.obj = settings
    return settings


def with_store(
    ctx: click.Context, operation: Callable[[SQLStore], Awaitable[T]], *, create: bool = False
) -> T:
    """Run ``operation`` on the configured store, opened (and migrated) for it alone.

    A management command never creates the database (``create=False``): a SQLite path
    with no database behind it is an error naming the path, not a new empty store that
    the service never reads. Only ``serve`` and ``init`` create one.
    """
    settings = settings_of(ctx)

    async def _run() -> T:
        store = store_for(settings, log_outages=False)
        try:
            await store.open(create=create)
            return await operation(store)
        finally:
            await store.close()

    with errors():
        return asyncio.run(_run())


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def compact_json(value: Any) -> str:
    """``value`` as one line of JSON for a terminal: Unicode kept, but anything not
    printable (a newline, a terminal escape) escaped, so a value cannot forge a line."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)
