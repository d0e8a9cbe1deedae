"""Structured logging with structlog: one JSON object per line on stderr.

Nothing here ever receives a secret or a token: callers log client ids, kids, paths and
statuses only.
"""

from __future__ import annotations

import logging
import sys
import time

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


def log_request(method: str, path: str, status: int, started: float) -> None:
    """One access-log line: method, path (never the query string, headers or body: they
    may carry secrets), status and milliseconds since ``started`` (``perf_counter``)."""
    _access.info(
        "request",
        method=method,
        path=path,
        status=status,
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
