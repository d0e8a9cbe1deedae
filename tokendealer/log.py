"""Structured logging with structlog: one JSON object per line on stderr.

Nothing here ever receives a secret or a token: callers log client ids, kids, paths and
statuses only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

from tokendealer import jsonbytes

#: The id of the request being answered (``tokendealer.http.observed`` sets it): every
#: line written while it is answered carries it.
REQUEST_ID: ContextVar[str | None] = ContextVar("tokendealer_request_id", default=None)


def add_request_id(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor: the ``request_id`` of the request being answered, if any. One
    context variable read, where binding it with structlog's context variables cost a
    context manager per request and a scan of the context per line."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def configure(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=jsonbytes.dumps_text),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(logger_name=name)  # type: ignore[no-any-return]


_access = get_logger("tokendealer.access")


def log_request(
    request_id: str,
    method: str,
    path: str,
    status: int,
    seconds: float,
    *,
    address: str,
    client_id: str | None = None,
    error: str | None = None,
) -> None:
    """One access-log line: the request id, method, path (never the query string, headers
    or body: they may carry secrets), status, milliseconds, the client address, and the
    authenticated client id and the OAuth error code when there are."""
    fields: dict[str, object] = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "ms": round(seconds * 1000, 2),
        "address": address,
    }
    if client_id is not None:
        fields["client_id"] = client_id
    if error is not None:
        fields["error"] = error
    _access.info("request", **fields)
