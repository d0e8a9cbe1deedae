"""The audit trail in SQL: rows to events and back, and the filtered query."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import Select

from tokendealer.protocol.audit import AuditEvent
from tokendealer.store.schema import audit_events as _a

#: The most events one query returns.
MAX_EVENTS = 1000


def insert(event: AuditEvent) -> sa.Insert:
    return _a.insert().values(
        at=event.at,
        actor=event.actor,
        action=event.action,
        target=event.target,
        details=json.dumps(event.details, sort_keys=True, separators=(",", ":")),
    )


def to_event(row: Any) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        details=json.loads(row.details),
    )


def query(
    *,
    actor: str | None = None,
    target: str | None = None,
    action: str | None = None,
    since: float | None = None,
    limit: int = 100,
) -> Select[Any]:
    """Newest first; each given filter must match exactly (``since``: at or after)."""
    statement = sa.select(_a)
    if actor is not None:
        statement = statement.where(_a.c.actor == actor)
    if target is not None:
        statement = statement.where(_a.c.target == target)
    if action is not None:
        statement = statement.where(_a.c.action == action)
    if since is not None:
        statement = statement.where(_a.c.at >= since)
    return statement.order_by(_a.c.at.desc(), _a.c.id.desc()).limit(max(1, min(limit, MAX_EVENTS)))
