"""The ``tokendealer`` command: serve, and manage clients and keys.

Every failure exits non-zero with one line on stderr (``Error: ...``), never a traceback.
Every store write is one transaction, so a failed command leaves the store as it was.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from tokendealer import __version__
from tokendealer.keys.keyset import (
    DEFAULT_ALG,
    KeyFileError,
    generate_key,
    load_keyset,
    prune_keys,
    remove_key,
    rotate_key,
)
from tokendealer.library.jwk import RSA_ALGORITHMS
from tokendealer.log import configure
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import client_id_error, digest_secret, generate_secret
from tokendealer.protocol.policy import valid_audience, valid_scope_token
from tokendealer.runner.server import SERVERS
from tokendealer.settings import MAX_TOKEN_TTL, ConfigError, Settings
from tokendealer.store import SQLStore, StoreError, store_for

T = TypeVar("T")


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every expected failure into click's one-line ``Error: ...`` and exit 1."""
    try:
        yield
    except (StoreError, KeyFileError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")) from None


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    if settings is None:
        with _errors():
            settings = Settings.from_env()
        ctx.obj = settings
    return settings


def _with_store(ctx: click.Context, operation: Callable[[SQLStore], Awaitable[T]]) -> T:
    settings = _settings(ctx)

    async def _run() -> T:
        store = store_for(settings, log_outages=False)
        try:
            await store.open()
            return await operation(store)
        finally:
            await store.close()

    with _errors():
        return asyncio.run(_run())


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _client_json(client: Client) -> dict[str, Any]:
    grace = client.previous_expires_at
    return {
        "client_id": client.client_id,
        "scopes": list(client.scopes),
        "audiences": list(client.audiences),
        "ttl": client.ttl,
        "disabled": client.disabled,
        "created_at": _iso(client.created_at),
        "previous_secret_valid_until": _iso(grace) if grace and grace > time.time() else None,
    }


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _check_client_id(client_id: str) -> None:
    if (reason := client_id_error(client_id)) is not None:
        raise click.BadParameter(reason, param_hint="CLIENT_ID")


@click.group(
    context_settings={"auto_envvar_prefix": "TOKENDEALER", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="tokendealer")
def cli() -> None:
    """tokendealer: OAuth 2.0 client-credentials token service.

    Configuration comes from TOKENDEALER_* environment variables (see README.rst).
    """


# -- serve -----------------------------------------------------------------------------


@cli.command(short_help="Run the token service.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--server", type=click.Choice(SERVERS), default=SERVERS[0], show_default=True)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, server: str) -> None:
    """Run the service; an empty directory gets its store and first signing key.

    Configuration errors and a busy port stop it with one line before any worker starts.
    """
    from tokendealer.runner import server as server_module

    settings = _settings(ctx)
    configure()
    try:
        sock = server_module.bind(host, port)
        try:
            with _errors():
                server_module.prepare(settings)
            server_module.listen(sock)
        except BaseException:
            sock.close()
            raise
    except server_module.ListenError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.exit(server_module.run(sock, workers, server, settings))


# -- clients ---------------------------------------------------------------------------


@cli.group(short_help="Register and manage clients.")
def clients() -> None:
    """Register and manage OAuth clients."""


def _scopes(values: tuple[str, ...]) -> tuple[str, ...]:
    tokens = [token for value in values for token in value.split()]
    for token in tokens:
        if not valid_scope_token(token):
            raise click.BadParameter(
                "a scope is printable ASCII without spaces, quotes or backslashes",
                param_hint="--scope",
            )
    return tuple(dict.fromkeys(tokens))


def _audiences(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not valid_audience(value):
            raise click.BadParameter(
                "an audience is 1-512 printable ASCII characters without spaces",
                param_hint="--audience",
            )
    return tuple(dict.fromkeys(values))


@clients.command("add", short_help="Register a client and print its secret once.")
@click.argument("client_id")
@click.option("--scope", "scopes", multiple=True, help="Allowed scope (repeatable).")
@click.option("--audience", "audiences", multiple=True, help="Allowed audience (repeatable).")
@click.option("--ttl", type=click.IntRange(1, MAX_TOKEN_TTL), help="Token lifetime in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def clients_add(
    ctx: click.Context,
    client_id: str,
    scopes: tuple[str, ...],
    audiences: tuple[str, ...],
    ttl: int | None,
    as_json: bool,
) -> None:
    """Register CLIENT_ID. The secret is shown once and stored only as a digest."""
    _check_client_id(client_id)
    secret = generate_secret()
    client = Client(
        client_id=client_id,
        secret_digest=digest_secret(secret),
        scopes=_scopes(scopes),
        audiences=_audiences(audiences),
        ttl=ttl,
        created_at=time.time(),
    )
    _with_store(ctx, lambda store: store.add_client(client))
    if as_json:
        _echo_json({**_client_json(client), "client_secret": secret})
    else:
        click.echo(f"client_id:     {client_id}")
        click.echo(f"client_secret: {secret}")
        click.echo("Store the secret now: it is not shown again.", err=True)


@clients.command("list", short_help="List clients (never their secrets).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def clients_list(ctx: click.Context, as_json: bool) -> None:
    found = _with_store(ctx, lambda store: store.list_clients())
    if as_json:
        _echo_json([_client_json(client) for client in found])
        return
    for client in found:
        state = "disabled" if client.disabled else "enabled"
        click.echo(f"{client.client_id}\t{state}\tscopes={' '.join(client.scopes) or '-'}")


async def _get(store: SQLStore, client_id: str) -> Client:
    client = await store.get_client(client_id)
    if client is None:
        raise StoreError(f"no client {client_id!r}")
    return client


@clients.command("show", short_help="Show one client.")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def clients_show(ctx: click.Context, client_id: str, as_json: bool) -> None:
    _check_client_id(client_id)
    client = _with_store(ctx, lambda store: _get(store, client_id))
    data = _client_json(client)
    if as_json:
        _echo_json(data)
        return
    for name, value in data.items():
        shown = " ".join(value) if isinstance(value, list) else value
        click.echo(f"{name}: {'-' if shown in (None, '') else shown}")


@clients.command("rotate-secret", short_help="Issue a new secret; keep the old one for --grace.")
@click.argument("client_id")
@click.option(
    "--grace",
    type=click.IntRange(0, 30 * 86400),
    default=0,
    show_default=True,
    help="Seconds the previous secret keeps working.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def clients_rotate_secret(ctx: click.Context, client_id: str, grace: int, as_json: bool) -> None:
    _check_client_id(client_id)
    secret = generate_secret()
    until = time.time() + grace
    # No grace: the secret is being replaced at once, as for a leak, so the tokens it
    # obtained are revoked with it (a new token epoch).
    _with_store(
        ctx,
        lambda store: store.rotate_secret(
            client_id, digest_secret(secret), until, revoke_tokens=grace == 0
        ),
    )
    if as_json:
        _echo_json(
            {
                "client_id": client_id,
                "client_secret": secret,
                "previous_secret_valid_until": _iso(until) if grace else None,
            }
        )
    else:
        click.echo(f"client_id:     {client_id}")
        click.echo(f"client_secret: {secret}")
        note = f"for {grace} more seconds" if grace else "no longer"
        click.echo(f"The previous secret works {note}.", err=True)


@clients.command("disable", short_help="Refuse the client new tokens.")
@click.argument("client_id")
@click.option(
    "--revoke-tokens",
    is_flag=True,
    help="Also make every token already issued to it fail verification at the dealer.",
)
@click.pass_context
def clients_disable(ctx: click.Context, client_id: str, revoke_tokens: bool) -> None:
    _check_client_id(client_id)
    _with_store(ctx, lambda store: store.set_disabled(client_id, True, revoke_tokens=revoke_tokens))
    click.echo(f"disabled {client_id}" + (" and revoked its tokens" if revoke_tokens else ""))


@clients.command("enable", short_help="Allow the client tokens again.")
@click.argument("client_id")
@click.pass_context
def clients_enable(ctx: click.Context, client_id: str) -> None:
    _check_client_id(client_id)
    _with_store(ctx, lambda store: store.set_disabled(client_id, False))
    click.echo(f"enabled {client_id}")


@clients.command("remove", short_help="Delete the client.")
@click.argument("client_id")
@click.pass_context
def clients_remove(ctx: click.Context, client_id: str) -> None:
    _check_client_id(client_id)
    _with_store(ctx, lambda store: store.remove_client(client_id))
    click.echo(f"removed {client_id}")


# -- keys ------------------------------------------------------------------------------


@cli.group(short_help="Manage signing keys.")
def keys() -> None:
    """Manage the RSA signing keys in TOKENDEALER_KEYS_DIR."""


@keys.command("generate", short_help="Create a key that signs from now on.")
@click.option("--alg", type=click.Choice(RSA_ALGORITHMS), default=DEFAULT_ALG, show_default=True)
@click.option(
    "--bits", type=click.Choice(["2048", "3072", "4096"]), default="2048", show_default=True
)
@click.pass_context
def keys_generate(ctx: click.Context, alg: str, bits: str) -> None:
    """Create a key; it signs new tokens at once, older keys stay published."""
    settings = _settings(ctx)
    with _errors():
        kid = generate_key(settings.keys_dir, alg=alg, bits=int(bits))
    click.echo(kid)


@keys.command("rotate", short_help="Publish a new key now; it signs after a delay.")
@click.option(
    "--activate-after",
    type=click.IntRange(0, 30 * 86400),
    default=None,
    help="Seconds until the new key signs [default: the JWKS max-age]. 0 for an emergency.",
)
@click.option("--alg", type=click.Choice(RSA_ALGORITHMS), default=DEFAULT_ALG, show_default=True)
@click.option(
    "--bits", type=click.Choice(["2048", "3072", "4096"]), default="2048", show_default=True
)
@click.pass_context
def keys_rotate(ctx: click.Context, activate_after: int | None, alg: str, bits: str) -> None:
    """Create the next key: published in the JWKS at once, signing after --activate-after.

    Waiting one JWKS max-age lets every resource server cache the key before it meets a
    token signed with it; the current key is then retired (still published).
    """
    settings = _settings(ctx)
    wanted = settings.jwks_max_age if activate_after is None else activate_after
    with _errors():
        kid, delay = rotate_key(settings.keys_dir, activate_after=wanted, alg=alg, bits=int(bits))
    click.echo(kid)
    click.echo(f"key {kid} is published and signs in {delay:g} seconds", err=True)


@keys.command("prune", short_help="Remove retired keys whose tokens have all expired.")
@click.option("--force", is_flag=True, help="Also remove retired keys whose tokens may live.")
@click.pass_context
def keys_prune(ctx: click.Context, force: bool) -> None:
    settings = _settings(ctx)
    found = _with_store(ctx, lambda store: store.list_clients())
    longest = max([settings.token_ttl, *(c.ttl for c in found if c.ttl)]) + settings.leeway
    with _errors():
        removed, kept = prune_keys(settings.keys_dir, max_token_lifetime=longest, force=force)
    for kid in removed:
        click.echo(f"removed {kid}")
    if kept:
        click.echo(
            f"kept {len(kept)} retired key(s) whose tokens may still be valid (retired less "
            f"than {longest} s ago): {', '.join(kept)}; --force removes them anyway",
            err=True,
        )


# Key ids are base64url and may start with '-': take them as arguments, not options
# (no short options at all here, so click rebuilds such an argument intact).
@keys.command(
    "remove",
    short_help="Unpublish and delete a key now (compromise).",
    context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]},
)
@click.argument("kid")
@click.pass_context
def keys_remove(ctx: click.Context, kid: str) -> None:
    """Remove KID from the JWKS at once; tokens it signed stop verifying at the dealer."""
    settings = _settings(ctx)
    with _errors():
        remove_key(settings.keys_dir, kid)
    click.echo(f"removed {kid}")


@keys.command("list", short_help="List keys and their states.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    settings = _settings(ctx)
    with _errors():
        keyset = load_keyset(settings.keys_dir)
    now = time.time()
    rows = [
        {
            "kid": key.kid,
            "state": keyset.state(key, now),
            "alg": key.alg,
            "bits": key.bits,
            "created_at": _iso(key.created_at),
            "activate_at": _iso(key.activate_at),
            "retired_at": _iso(keyset.retired_at(key)),
        }
        for key in keyset.keys
    ]
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        columns = ("kid", "state", "alg", "bits", "created_at", "activate_at", "retired_at")
        click.echo("\t".join("-" if row[c] is None else str(row[c]) for c in columns))


def main() -> None:
    """Console entry point: a usage error is one ``Error: ...`` line, like every failure.

    Click's own handling would print the usage block and a hint before the error; the
    contract is one line on stderr (``--help`` shows the usage).
    """
    try:
        code = cli.main(prog_name="tokendealer", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
