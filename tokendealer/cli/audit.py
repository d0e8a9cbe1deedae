"""``tokendealer audit``: read the audit trail, newest first."""

from __future__ import annotations

import json

import click

from tokendealer.admin import audit as admin_audit
from tokendealer.cli.common import echo_json, with_store
from tokendealer.protocol.audit import ACTIONS
from tokendealer.store.audit import MAX_EVENTS


@click.command(short_help="Show who changed what, newest first.")
@click.option("--actor", help="Only events of this actor (admin:NAME, client:ID, cli:USER).")
@click.option("--target", help="Only events about this target (client:ID, key:KID, admin:NAME).")
@click.option("--action", type=click.Choice(ACTIONS), help="Only events of this action.")
@click.option("--since", help="Only events at or after this ISO 8601 time (UTC if no zone).")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_EVENTS),
    default=100,
    show_default=True,
    help="At most this many events.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def audit(
    ctx: click.Context,
    actor: str | None,
    target: str | None,
    action: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail: every change to clients, keys and administrators, with its actor."""
    events = with_store(
        ctx,
        lambda store: admin_audit.events(
            store, actor=actor, target=target, action=action, since=since, limit=limit
        ),
    )
    rows = [admin_audit.describe(event) for event in events]
    if as_json:
        echo_json(rows)
        return
    click.echo("at\tactor\taction\ttarget\tdetails")
    for row in rows:
        details = json.dumps(row["details"], sort_keys=True) if row["details"] else "-"
        columns = (row["at"], row["actor"], row["action"], row["target"], details)
        click.echo("\t".join(_printable(str(column)) for column in columns))


def _printable(text: str) -> str:
    """Control characters escaped (``\\x1b``, ``\\t``...): a value in the trail cannot
    forge a line, a column or terminal output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
