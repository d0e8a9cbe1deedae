"""``tokendealer trust ...``: external issuers trusted to vouch for workloads (workload
identity federation), through the admin service (``tokendealer.admin.trusts``), each
change audited with the actor ``cli:USER``. Clients are bound to a trust with
``clients add --auth-method federated --trust NAME``."""

from __future__ import annotations

import click

from tokendealer.admin import trusts as admin
from tokendealer.cli.common import cli_actor, echo_json, errors, settings_of, with_store


@click.group(short_help="Trust external issuers (workload identity).")
def trust() -> None:
    """Trust external issuers whose tokens authenticate workloads: Kubernetes service
    accounts, SPIFFE JWT-SVIDs, GitHub Actions, any OpenID Connect issuer.

    A client bound to a trust (clients add --auth-method federated) gets tokens by
    presenting its platform's token as client_assertion, without a secret of its own.
    """


@trust.command("add", short_help="Trust an issuer; its keys are found and checked now.")
@click.argument("name")
@click.option(
    "--issuer",
    required=True,
    help="The issuer's identifier, exactly as its tokens' iss claim (an http(s) URL).",
)
@click.option(
    "--jwks-uri",
    help="Where the issuer publishes its public keys; without it, OpenID discovery at "
    "ISSUER/.well-known/openid-configuration finds them.",
)
@click.option(
    "--audience",
    help="The audience the issuer's tokens must carry (in aud); default: this dealer's "
    "issuer (TOKENDEALER_ISSUER).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def trust_add(
    ctx: click.Context,
    name: str,
    issuer: str,
    jwks_uri: str | None,
    audience: str | None,
    as_json: bool,
) -> None:
    """Trust the issuer ISSUER under NAME. Its key URL, found once now (given, or by
    discovery, whose document must name the same issuer) and stored with the trust, must
    serve at least one usable signing key."""
    settings = settings_of(ctx)
    with errors():
        admin.check_name(name)
    added = with_store(
        ctx,
        lambda store: admin.add(
            store,
            name,
            actor=cli_actor(),
            issuer=issuer,
            jwks_uri=jwks_uri,
            audience=audience if audience is not None else settings.issuer,
            seconds=settings.client_jwks_timeout,
        ),
    )
    if as_json:
        echo_json(admin.describe(added))
        return
    click.echo(f"trusted {added.name}: {added.issuer}")
    click.echo(f"jwks_uri: {added.jwks_uri}")
    click.echo(f"audience: {added.audience}")


@trust.command("list", short_help="List trusted issuers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def trust_list(ctx: click.Context, as_json: bool) -> None:
    """List the trusted issuers: name, issuer, key URL, audience, when added."""
    found = [admin.describe(item) for item in with_store(ctx, admin.listing)]
    if as_json:
        echo_json(found)
        return
    click.echo("name\tissuer\tjwks_uri\taudience\tcreated_at")
    for item in found:
        columns = ("name", "issuer", "jwks_uri", "audience", "created_at")
        click.echo("\t".join(str(item[column]) for column in columns))


@trust.command("remove", short_help="Stop trusting an issuer.")
@click.argument("name")
@click.pass_context
def trust_remove(ctx: click.Context, name: str) -> None:
    """Stop trusting NAME. Refused while clients are bound to it: remove them first."""
    with_store(ctx, lambda store: admin.remove(store, name, actor=cli_actor()))
    click.echo(f"removed trust {name}")
