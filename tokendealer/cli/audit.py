"""``tokendealer audit``: read the audit trail, newest first."""

from __future__ import annotations

import datetime as dt
import json

import click

from tokendealer.cli.common import echo_json, iso, with_store
from tokendealer.protocol.audit import ACTIONS
from tokendealer.store.audit import MAX_EVENTS


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            "an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T09:30:00Z",
            param_hint="--since",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


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
    after = _since(since)
    events = with_store(
        ctx,
        lambda store: store.audit_events(
            actor=actor, target=target, action=action, since=after, limit=limit
        ),
    )
    rows = [
        {
            "at": iso(event.at),
            "actor": event.actor,
            "action": event.action,
            "target": event.target,
            "details": event.details,
        }
        for event in events
    ]
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
