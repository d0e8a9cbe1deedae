"""Instants as every face shows and reads them: ISO 8601, UTC, whole seconds."""

from __future__ import annotations

import datetime as dt


def iso(timestamp: float | None) -> str | None:
    """``2026-12-03T09:30:00+00:00``, or ``None`` for no instant."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def instant(text: str) -> float:
    """An ISO 8601 date or time (UTC when it names no zone) as a POSIX timestamp; raise
    ``ValueError`` for anything else."""
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
