"""Structured logging with structlog: one JSON object per line on stderr.

Nothing here ever receives a secret or a token: callers log client ids, kids, paths and
statuses only.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
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
