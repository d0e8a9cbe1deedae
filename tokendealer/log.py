"""Structured logging with structlog: one JSON object per line on stderr.

Nothing here ever receives a secret or a token: callers log client ids, kids, paths and
statuses only.
"""

from __future__ import annotations

import logging
import math
import sys
import time
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


#: The second last formatted, and its text (one tuple: threads log too).
_formatted_second: tuple[int, str] = (-1, "")


def add_timestamp(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor: ``timestamp``, ISO 8601 in UTC to the microsecond, e.g.
    ``2026-12-03T19:10:21.718677Z``. What structlog's ``TimeStamper(fmt="iso",
    utc=True)`` writes (but for the microseconds, always there), at a fraction of its
    cost: the date and time are formatted once per second, and the offset never."""
    global _formatted_second
    now = time.time()
    second = math.floor(now)
    formatted, text = _formatted_second
    if second != formatted:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _formatted_second = (second, text)
    event["timestamp"] = f"{text}.{int((now - second) * 1_000_000):06d}Z"
    return event


def configure(level: int = logging.INFO) -> None:
    global _access, _access_on
    structlog.configure(
        processors=[
            add_request_id,
            structlog.processors.add_log_level,
            add_timestamp,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=jsonbytes.dumps_text),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The access logger, assembled now: each line then calls it directly, where the
    # lazy proxy looks its method up through ``__getattr__`` (a failed attribute lookup
    # per line). Unconfigured (in tests), the proxy stays.
    _access = _access_logger().bind()
    _access_on = level <= logging.INFO


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(logger_name=name)  # type: ignore[no-any-return]


class AccessLogger(structlog.BoundLoggerBase):
    """The access log's logger: a structlog wrapper class (structlog's "custom
    wrappers") whose one method hands the line's fields to the configured processors
    as they are. Through ``info(event, **fields)`` they would be copied into keyword
    arguments three times on the way (about a third of a line's cost)."""

    def request(self, fields: dict[str, object]) -> None:
        """Write the line ``request`` with ``fields`` (an info line)."""
        try:
            args, kwargs = self._process_event("info", "request", fields)
        except structlog.DropEvent:  # a processor dropped it (as ``capture_logs`` does)
            return
        self._logger.info(*args, **kwargs)


def _access_logger() -> Any:
    return structlog.wrap_logger(None, wrapper_class=AccessLogger, logger_name="tokendealer.access")


_access: Any = _access_logger()
#: Whether the configured level lets info lines through (it does unless configured above).
_access_on = True


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
    if not _access_on:
        return
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
    _access.request(fields)


class StandardLineFormatter(logging.Formatter):
    """A standard-library log record (uvicorn's own warnings and errors) as a line of
    the service's log: the same JSON object per line, the message as its ``event``."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        add_timestamp(None, "", event)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return jsonbytes.dumps_text(event)


#: uvicorn's logging configuration (``log_config``): its warnings and errors ("Invalid
#: HTTP request received.", a worker that failed to start) as JSON lines on standard
#: error like every other line, where uvicorn's default writes ``WARNING:  text``.
UVICORN_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"()": "tokendealer.log.StandardLineFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": [], "level": "INFO", "propagate": False},
    },
}
