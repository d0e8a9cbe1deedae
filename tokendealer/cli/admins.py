"""``tokendealer admins ...``: administrator accounts (who may sign in to the console),
through the admin service (``tokendealer.admin.accounts``), each change audited with the
actor ``cli:USER``. A password is read from a hidden prompt, or with ``--password-stdin``
from the first line of standard input; it is never printed."""

from __future__ import annotations

import sys

import click

from tokendealer.admin import accounts
from tokendealer.cli.common import cli_actor, echo_json, errors, with_store


@click.group(short_help="Manage administrator accounts.")
def admins() -> None:
    """Manage the administrator accounts that sign in to the web console.

    Passwords have at least 12 characters and are stored only as argon2id hashes.
    """


_PASSWORD_STDIN = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        # The line's end only: spaces are the password's own.
        return line.removesuffix("\n").removesuffix("\r")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@admins.command("add", short_help="Create an administrator account.")
@click.argument("name")
@_PASSWORD_STDIN
@click.pass_context
def admins_add(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Create the administrator NAME, with a password from a prompt or standard input."""
    with errors():
        accounts.check_name(name)  # before asking for a password
    password = _password(password_stdin)
    with_store(ctx, lambda store: accounts.add(store, name, password, actor=cli_actor()))
    click.echo(f"added admin {name}")


@admins.command("list", short_help="List administrator accounts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def admins_list(ctx: click.Context, as_json: bool) -> None:
    """List the administrators: name, when created, when the password last changed."""
    found = [accounts.describe(admin) for admin in with_store(ctx, accounts.listing)]
    if as_json:
        echo_json(found)
        return
    click.echo("name\tcreated_at\tpassword_changed_at")
    for admin in found:
        click.echo(f"{admin['name']}\t{admin['created_at']}\t{admin['password_changed_at']}")


@admins.command("remove", short_help="Delete an administrator account.")
@click.argument("name")
@click.pass_context
def admins_remove(ctx: click.Context, name: str) -> None:
    """Delete the administrator NAME. Removing the last one is allowed: this command
    line can always add one again."""
    with_store(ctx, lambda store: accounts.remove(store, name, actor=cli_actor()))
    click.echo(f"removed admin {name}")


@admins.command("set-password", short_help="Replace an administrator's password.")
@click.argument("name")
@_PASSWORD_STDIN
@click.pass_context
def admins_set_password(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Give the administrator NAME a new password, from a prompt or standard input."""
    with errors():
        accounts.check_name(name)
    password = _password(password_stdin)
    with_store(ctx, lambda store: accounts.set_password(store, name, password, actor=cli_actor()))
    click.echo(f"changed the password of admin {name}")
