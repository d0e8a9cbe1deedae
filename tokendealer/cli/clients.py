"""``tokendealer clients ...``: register and manage clients, through the admin service
(``tokendealer.admin.clients``), each change audited with the actor ``cli:USER``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import click

from tokendealer.admin import clients as admin
from tokendealer.admin.errors import Invalid
from tokendealer.cli.common import (
    cli_actor,
    compact_json,
    echo_json,
    errors,
    settings_of,
    with_store,
)
from tokendealer.protocol.claims import parse_json
from tokendealer.protocol.clients import Client
from tokendealer.protocol.rates import ENFORCE, RATE_LIMIT_MODES
from tokendealer.protocol.times import iso
from tokendealer.settings import MAX_TOKEN_TTL, Rate


@click.group(short_help="Register and manage clients.")
def clients() -> None:
    """Register and manage OAuth clients."""


F = TypeVar("F", bound=Callable[..., Any])

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _claim_options(string_help: str, json_help: str) -> Callable[[F], F]:
    """``--claim NAME=VALUE`` and ``--claim-json NAME=JSON`` (read by ``_claims``), with
    the help of the command they are given to."""

    def add(command: F) -> F:
        command = click.option(
            "--claim-json", "claim_values", multiple=True, metavar="NAME=JSON", help=json_help
        )(command)
        return click.option(
            "--claim", "claim_strings", multiple=True, metavar="NAME=VALUE", help=string_help
        )(command)

    return add


def _words(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--scope`` values, each a scope or several separated by spaces (as in a token
    request's ``scope``); the admin service takes one scope per value."""
    return tuple(word for value in values for word in value.split())


def _claims(strings: tuple[str, ...], values: tuple[str, ...]) -> dict[str, Any]:
    """The claims ``--claim`` and ``--claim-json`` give, each checked; a bad one is one
    line naming its option."""
    claims: dict[str, Any] = {}
    given: tuple[tuple[str, tuple[str, ...], Callable[[str, str], Any]], ...] = (
        ("--claim", strings, lambda name, raw: raw),
        ("--claim-json", values, _json_value),
    )
    for option, pairs, parse in given:
        for pair in pairs:
            name, equals, raw = pair.partition("=")
            try:
                if not equals:
                    raise Invalid(f"{pair[:80]!r} is not NAME=VALUE")
                if name in claims:
                    raise Invalid(f"claim {name!r} is given twice")
                claims[name] = parse(name, raw)
                admin.check_claim(name, claims[name])
            except Invalid as exc:
                raise click.ClickException(f"Invalid value for '{option}': {exc}") from None
    return claims


def _json_value(name: str, raw: str) -> Any:
    try:
        return parse_json(raw)
    except ValueError as exc:
        raise Invalid(
            f"claim {name!r}: the value is not JSON ({exc}); a string is quoted, "
            "or given with --claim"
        ) from None


#: What ``clients update --rate-limit`` takes to give a client back the service's limit.
DEFAULT_RATE_LIMIT = "default"


def _rate_limit_option(help: str) -> Callable[[F], F]:
    return click.option("--rate-limit", metavar="COUNT/UNIT", help=help)


def _rate_limit_mode_option(help: str, default: str | None) -> Callable[[F], F]:
    return click.option(
        "--rate-limit-mode",
        type=click.Choice(RATE_LIMIT_MODES),
        default=default,
        show_default=default is not None,
        help=help,
    )


def _rate_limit(text: str | None) -> Rate | None:
    """``--rate-limit`` checked before the store is opened (one line naming the option);
    ``default``: none of the client's own."""
    if text is None or text == DEFAULT_RATE_LIMIT:
        return None
    with errors():
        try:
            return admin.check_rate_limit(text)
        except Invalid as exc:
            raise Invalid(f"{exc}; or {DEFAULT_RATE_LIMIT} for the service's", exc.field) from None


def _key_options(f: Any) -> Any:
    f = click.option(
        "--jwk-file",
        type=click.File("r", encoding="utf-8"),
        help="private_key_jwt: the client's public keys, a JWK, a JWK Set or a PEM public "
        "key ('-' reads standard input).",
    )(f)
    return click.option(
        "--jwks-uri", help="private_key_jwt: the URL where the client publishes its keys."
    )(f)


def _binding_options(f: Any) -> Any:
    f = click.option(
        "--subject-pattern",
        metavar="GLOB",
        help="federated: the subjects the client's tokens may name, a glob "
        "(system:serviceaccount:billing:*; * also matches ':' and '/').",
    )(f)
    f = click.option(
        "--subject",
        help="federated: the subject (sub) the client's tokens must name, exactly "
        "(system:serviceaccount:billing:worker).",
    )(f)
    return click.option(
        "--trust", help="federated: the trusted issuer (see 'trust add') of the client's tokens."
    )(f)


def _authentication(
    method: str,
    jwks_uri: str | None,
    jwk_file: TextIO | None,
    trust: str | None = None,
    subject: str | None = None,
    subject_pattern: str | None = None,
) -> admin.Authentication:
    jwk_text = jwk_file.read(admin.MAX_KEY_FILE) if jwk_file is not None else None
    return admin.check_authentication(
        method,
        jwks_uri=jwks_uri,
        jwk_text=jwk_text,
        trust=trust,
        subject=subject,
        subject_pattern=subject_pattern,
    )


@clients.command("add", short_help="Register a client and print its secret once.")
@click.argument("client_id")
@click.option(
    "--auth-method",
    type=click.Choice(admin.REGISTRABLE_METHODS),
    default="client_secret",
    show_default=True,
    help="How the client authenticates: with a secret, with JWTs signed by its own "
    "private key (private_key_jwt: give --jwks-uri or --jwk-file), or with its platform's "
    "tokens (federated: give --trust and --subject or --subject-pattern); no secret is "
    "made but for client_secret.",
)
@_key_options
@_binding_options
@click.option("--scope", "scopes", multiple=True, help="Allowed scope (repeatable).")
@click.option("--audience", "audiences", multiple=True, help="Allowed audience (repeatable).")
@click.option("--ttl", type=click.IntRange(1, MAX_TOKEN_TTL), help="Token lifetime in seconds.")
@click.option("--description", default="", help="What the client is, who owns it.")
@_rate_limit_option(
    "The client's own limit on its requests to the token, introspection and revocation "
    "endpoints, in place of TOKENDEALER_RATE_LIMIT (1200/minute, 5/10 seconds; units "
    "second, minute, hour, day); 'default' or none: the service's."
)
@_rate_limit_mode_option(
    "enforce: a request over --rate-limit is refused (429); monitor: it is logged and "
    "counted, not refused, and TOKENDEALER_RATE_LIMIT stays in force (to size a limit "
    "before enforcing it).",
    ENFORCE,
)
@_claim_options(
    "A claim copied into each of the client's tokens, its value a string (repeatable).",
    "A claim whose value is JSON: a number, true, false, null, an array or an object (repeatable).",
)
@_JSON
@click.pass_context
def clients_add(
    ctx: click.Context,
    client_id: str,
    scopes: tuple[str, ...],
    audiences: tuple[str, ...],
    ttl: int | None,
    description: str,
    claim_strings: tuple[str, ...],
    claim_values: tuple[str, ...],
    rate_limit: str | None,
    rate_limit_mode: str,
    as_json: bool,
    auth_method: str,
    jwks_uri: str | None,
    jwk_file: TextIO | None,
    trust: str | None,
    subject: str | None,
    subject_pattern: str | None,
) -> None:
    """Register CLIENT_ID. The secret is shown once and stored only as a digest; a
    private_key_jwt client gets no secret: it signs its requests with its own key; nor
    does a federated client: it presents a token of the platform it runs on (a
    Kubernetes service-account token...), issued by its trust for its subject.

    Each --claim and --claim-json is copied into every token of the client, and into
    introspection answers; the dealer's own claim names (iss, sub, aud, scope, ...) are
    refused."""
    claims = _claims(claim_strings, claim_values)
    own_rate = _rate_limit(rate_limit)
    with errors():
        authentication = _authentication(
            auth_method, jwks_uri, jwk_file, trust, subject, subject_pattern
        )
    registered = with_store(
        ctx,
        lambda store: admin.register(
            store,
            client_id,
            actor=cli_actor(),
            scopes=_words(scopes),
            audiences=audiences,
            ttl=ttl,
            description=description,
            claims=claims,
            rate_limit=own_rate,
            rate_limit_mode=rate_limit_mode,
            authentication=authentication,
        ),
    )
    secret = {} if registered.secret is None else {"client_secret": registered.secret}
    if as_json:
        echo_json({**admin.describe(registered.client), **secret})
    elif registered.secret is None:
        click.echo(f"client_id:     {client_id}")
        click.echo(f"auth_method:   {registered.client.auth_method}")
    else:
        click.echo(f"client_id:     {client_id}")
        click.echo(f"client_secret: {registered.secret}")
        click.echo("Store the secret now: it is not shown again.", err=True)


@clients.command(
    "update",
    short_help="Change a client's scopes, audiences, TTL, description, claims or rate limit.",
)
@click.argument("client_id")
@click.option("--scope", "scopes", multiple=True, help="Replace the scopes (repeatable).")
@click.option("--audience", "audiences", multiple=True, help="Replace the audiences (repeatable).")
@click.option("--add-scope", multiple=True, help="Allow one more scope (repeatable).")
@click.option("--remove-scope", multiple=True, help="Withdraw one scope (repeatable).")
@click.option("--add-audience", multiple=True, help="Allow one more audience (repeatable).")
@click.option("--remove-audience", multiple=True, help="Withdraw one audience (repeatable).")
@click.option(
    "--ttl",
    type=click.IntRange(0, MAX_TOKEN_TTL),
    help="Token lifetime in seconds; 0 for the service's default.",
)
@click.option("--description", help="Replace the description.")
@_claim_options(
    "Set or replace one claim, its value a string (repeatable); the others stay.",
    "Set or replace one claim whose value is JSON (repeatable); the others stay.",
)
@click.option(
    "--remove-claim", "remove_claims", multiple=True, help="Remove one claim (repeatable)."
)
@_rate_limit_option(
    "The client's own limit on its requests, in place of TOKENDEALER_RATE_LIMIT "
    "(1200/minute, 5/10 seconds); 'default' gives it back the service's limit."
)
@_rate_limit_mode_option(
    "enforce: a request over the client's own limit is refused (429); monitor: it is "
    "logged and counted, not refused.",
    None,
)
@_key_options
@_JSON
@click.pass_context
def clients_update(
    ctx: click.Context,
    client_id: str,
    scopes: tuple[str, ...],
    audiences: tuple[str, ...],
    add_scope: tuple[str, ...],
    remove_scope: tuple[str, ...],
    add_audience: tuple[str, ...],
    remove_audience: tuple[str, ...],
    ttl: int | None,
    description: str | None,
    claim_strings: tuple[str, ...],
    claim_values: tuple[str, ...],
    remove_claims: tuple[str, ...],
    rate_limit: str | None,
    rate_limit_mode: str | None,
    as_json: bool,
    jwks_uri: str | None,
    jwk_file: TextIO | None,
) -> None:
    """Change CLIENT_ID's policy. Tokens already issued keep their claims; a running
    server applies the new policy within TOKENDEALER_CLIENT_CACHE_TTL. --jwks-uri or
    --jwk-file replaces a private_key_jwt client's keys. --rate-limit default gives the
    client back the service's limit (TOKENDEALER_RATE_LIMIT)."""
    claims = _claims(claim_strings, claim_values)
    own_rate = admin.UNSET if rate_limit is None else _rate_limit(rate_limit)
    keys = None
    if jwks_uri is not None or jwk_file is not None:
        with errors():
            keys = _authentication("private_key_jwt", jwks_uri, jwk_file)
    changed = with_store(
        ctx,
        lambda store: admin.update(
            store,
            client_id,
            actor=cli_actor(),
            scopes=_words(scopes) or None,
            audiences=audiences or None,
            ttl=admin.UNSET if ttl is None else (ttl or None),
            description=description,
            add_scopes=_words(add_scope),
            remove_scopes=_words(remove_scope),
            add_audiences=add_audience,
            remove_audiences=remove_audience,
            set_claims=claims,
            remove_claims=remove_claims,
            rate_limit=own_rate,
            rate_limit_mode=rate_limit_mode,
            keys=keys,
        ),
    )
    if as_json:
        echo_json(admin.describe(changed.client))
    elif changed.changes:
        click.echo(f"updated {client_id}: {', '.join(changed.changes)}")
    else:
        click.echo(f"{client_id} unchanged: it already had that policy")


@clients.command("list", short_help="List clients (never their secrets).")
@_JSON
@click.pass_context
def clients_list(ctx: click.Context, as_json: bool) -> None:
    """List every client with its state and policy."""
    found = with_store(ctx, admin.listing)
    if as_json:
        echo_json([admin.describe(client) for client in found])
        return
    click.echo("client_id\tstate\tscopes\taudiences\tttl\tlast_token_at")
    for client in found:
        state = "disabled" if client.disabled else "enabled"
        columns = (
            client.client_id,
            state,
            " ".join(client.scopes) or "-",
            " ".join(client.audiences) or "-",
            str(client.ttl or "-"),
            iso(client.last_token_at) or "-",
        )
        click.echo("\t".join(columns))


@clients.command("show", short_help="Show one client.")
@click.argument("client_id")
@_JSON
@click.pass_context
def clients_show(ctx: click.Context, client_id: str, as_json: bool) -> None:
    """Show CLIENT_ID's policy, state, and when it last got a token.

    rate_limit is the limit in force on its requests: its own, or the service's
    (TOKENDEALER_RATE_LIMIT, as this command's environment sets it); --json gives it as
    effective_rate_limit, and rate_limit as the client's own (null: none).
    early_token_requests counts the new tokens it asked for while it held one with more
    than half its lifetime left: a client that does not cache its tokens."""
    client = with_store(ctx, lambda store: admin.get(store, client_id))
    data = admin.describe(client)
    default = settings_of(ctx).rate_limit
    if as_json:
        echo_json({**data, "effective_rate_limit": admin.effective_rate_limit(client, default)})
        return
    data["rate_limit"] = _rate_limit_shown(client, default)
    if client.early_token_requests:
        data["early_token_requests"] = (
            f"{client.early_token_requests} (new tokens asked for while it held one with more "
            "than half its lifetime left: a client that does not cache its tokens)"
        )
    for name, value in data.items():
        if isinstance(value, bool):
            shown: object = "true" if value else "false"
        elif isinstance(value, dict):
            shown = compact_json(value) if value else None
        else:
            shown = " ".join(value) if isinstance(value, list) else value
        click.echo(f"{name}: {'-' if shown in (None, '') else shown}")


def _rate_limit_shown(client: Client, default: Rate) -> str:
    """The limit in force, and whose it is: ``2/minute (its own)``, ``1200/minute
    (service default)``, or a monitored limit of its own and the default in force."""
    effective = admin.effective_rate_limit(client, default)
    if effective["source"] == "client":
        return f"{effective['rate']} (its own)"
    monitored = effective.get("monitored")
    if monitored is None:
        return f"{effective['rate']} (service default)"
    return (
        f"{monitored} (its own, monitored: a request over it is logged, not refused; "
        f"the service default {effective['rate']} is enforced)"
    )


@clients.command("rotate-secret", short_help="Issue a new secret; keep the old one for --grace.")
@click.argument("client_id")
@click.option(
    "--grace",
    type=click.IntRange(0, admin.MAX_GRACE),
    default=0,
    show_default=True,
    help="Seconds the previous secret keeps working; 0 also revokes the client's tokens.",
)
@_JSON
@click.pass_context
def clients_rotate_secret(ctx: click.Context, client_id: str, grace: int, as_json: bool) -> None:
    """Give CLIENT_ID a new secret, shown once."""
    rotated = with_store(
        ctx, lambda store: admin.rotate_secret(store, client_id, actor=cli_actor(), grace=grace)
    )
    if as_json:
        echo_json(
            {
                "client_id": client_id,
                "client_secret": rotated.secret,
                "previous_secret_valid_until": iso(rotated.previous_valid_until),
            }
        )
    else:
        click.echo(f"client_id:     {client_id}")
        click.echo(f"client_secret: {rotated.secret}")
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
    """Refuse CLIENT_ID new tokens until it is enabled again."""
    with_store(
        ctx,
        lambda store: admin.disable(
            store, client_id, actor=cli_actor(), revoke_tokens=revoke_tokens
        ),
    )
    click.echo(f"disabled {client_id}" + (" and revoked its tokens" if revoke_tokens else ""))


@clients.command("enable", short_help="Allow the client tokens again.")
@click.argument("client_id")
@click.pass_context
def clients_enable(ctx: click.Context, client_id: str) -> None:
    """Allow CLIENT_ID tokens again (tokens revoked before stay revoked)."""
    with_store(ctx, lambda store: admin.enable(store, client_id, actor=cli_actor()))
    click.echo(f"enabled {client_id}")


@clients.command("remove", short_help="Delete the client.")
@click.argument("client_id")
@click.pass_context
def clients_remove(ctx: click.Context, client_id: str) -> None:
    """Delete CLIENT_ID; its tokens stop verifying at the dealer."""
    with_store(ctx, lambda store: admin.remove(store, client_id, actor=cli_actor()))
    click.echo(f"removed {client_id}")
