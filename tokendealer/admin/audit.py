"""The audit trail, read: filters checked, events as every face shows them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokendealer.admin.errors import Invalid
from tokendealer.protocol.audit import ACTIONS, AuditEvent
from tokendealer.protocol.times import instant, iso
from tokendealer.store.audit import MAX_EVENTS
from tokendealer.store.base import Store

#: The longest actor or target a filter may name (the columns' own bound).
MAX_FILTER = 300
#: How many events a reading returns unless told.
DEFAULT_LIMIT = 100


def check_limit(raw: str | None) -> int:
    """A limit typed as text (a query parameter, a form field): ``DEFAULT_LIMIT`` when
    empty, else a whole number 1-``MAX_EVENTS``."""
    text = (raw or "").strip()
    if not text:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_EVENTS)):
        raise Invalid(f"limit is 1-{MAX_EVENTS}", "limit")
    return int(text)


def describe(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "details": event.details,
    }


def _filter(name: str, value: str | None) -> str | None:
    if value is not None and (len(value) > MAX_FILTER or not value.isprintable()):
        raise Invalid(f"{name} is at most {MAX_FILTER} printable characters", name)
    return value or None


async def events(
    store: Store,
    *,
    actor: str | None = None,
    target: str | None = None,
    action: str | None = None,
    since: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Sequence[AuditEvent]:
    """Newest first; each given filter must match exactly, ``since`` (ISO 8601, UTC when
    it names no zone) at or after."""
    if action and action not in ACTIONS:
        raise Invalid(f"unknown action {action!r}", "action")
    if isinstance(limit, bool) or not 1 <= limit <= MAX_EVENTS:
        raise Invalid(f"limit is 1-{MAX_EVENTS}", "limit")
    after = None
    if since:
        try:
            after = instant(since)
        except ValueError:
            raise Invalid(
                "since is an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T09:30:00Z",
                "since",
            ) from None
    return await store.audit_events(
        actor=_filter("actor", actor),
        target=_filter("target", target),
        action=action or None,
        since=after,
        limit=limit,
    )
