"""``tokendealer clients ...``: register and manage clients."""

from __future__ import annotations

import time

import click

from tokendealer.cli.common import check_client_id, client_json, echo_json, iso, with_store
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.protocol.policy import valid_audience, valid_scope_token
from tokendealer.settings import MAX_TOKEN_TTL
from tokendealer.store import SQLStore, StoreError


@click.group(short_help="Register and manage clients.")
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
    check_client_id(client_id)
    secret = generate_secret()
    client = Client(
        client_id=client_id,
        secret_digest=digest_secret(secret),
        scopes=_scopes(scopes),
        audiences=_audiences(audiences),
        ttl=ttl,
        created_at=time.time(),
    )
    with_store(ctx, lambda store: store.add_client(client))
    if as_json:
        echo_json({**client_json(client), "client_secret": secret})
    else:
        click.echo(f"client_id:     {client_id}")
        click.echo(f"client_secret: {secret}")
        click.echo("Store the secret now: it is not shown again.", err=True)


@clients.command("list", short_help="List clients (never their secrets).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def clients_list(ctx: click.Context, as_json: bool) -> None:
    found = with_store(ctx, lambda store: store.list_clients())
    if as_json:
        echo_json([client_json(client) for client in found])
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
    check_client_id(client_id)
    client = with_store(ctx, lambda store: _get(store, client_id))
    data = client_json(client)
    if as_json:
        echo_json(data)
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
    check_client_id(client_id)
    secret = generate_secret()
    until = time.time() + grace
    # No grace: the secret is being replaced at once, as for a leak, so the tokens it
    # obtained are revoked with it (a new token epoch).
    with_store(
        ctx,
        lambda store: store.rotate_secret(
            client_id, digest_secret(secret), until, revoke_tokens=grace == 0
        ),
    )
    if as_json:
        echo_json(
            {
                "client_id": client_id,
                "client_secret": secret,
                "previous_secret_valid_until": iso(until) if grace else None,
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
    check_client_id(client_id)
    with_store(ctx, lambda store: store.set_disabled(client_id, True, revoke_tokens=revoke_tokens))
    click.echo(f"disabled {client_id}" + (" and revoked its tokens" if revoke_tokens else ""))


@clients.command("enable", short_help="Allow the client tokens again.")
@click.argument("client_id")
@click.pass_context
def clients_enable(ctx: click.Context, client_id: str) -> None:
    check_client_id(client_id)
    with_store(ctx, lambda store: store.set_disabled(client_id, False))
    click.echo(f"enabled {client_id}")


@clients.command("remove", short_help="Delete the client.")
@click.argument("client_id")
@click.pass_context
def clients_remove(ctx: click.Context, client_id: str) -> None:
    check_client_id(client_id)
    with_store(ctx, lambda store: store.remove_client(client_id))
    click.echo(f"removed {client_id}")
