"""The outermost ASGI layer: every request gets an id, a line in the access log and its
place in the metrics, whichever part of the app answers it.

* **Request id.** An incoming ``X-Request-ID`` of 1-128 characters of
  ``[A-Za-z0-9._:-]`` is kept, anything else replaced by a new one; every response carries
  it back, and every log line written while the request is answered carries it
  (``tokendealer.log.add_request_id``).
* **What the request turned out to be** is noted on its ``RequestRecord`` by whoever
  knows: the endpoint (the pipeline, or the Quart route), the authenticated client (the
  pipeline), the OAuth error code (``describe_error``, the one mapping of errors).
* **Then, once answered:** the duration per endpoint, a 429 per endpoint, a token
  endpoint's error per code; and the access line, JSON: request id, method, path (never
  the query string), status, milliseconds, client address, client id and error when there
  is one. Never a header value, a body, a secret or a token.
* **With tracing on** (``tokendealer.observe.tracing``), the request is a server span,
  child of its ``traceparent``, given the status, client id and error once answered.
"""

from __future__ import annotations

import re
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tokendealer import log
from tokendealer.http.exchange import Receive, Scope, Send, scope_address
from tokendealer.log import log_request
from tokendealer.observe import events, metrics, tracing
from tokendealer.settings import Settings

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
#: The endpoint of a request no route answers (a 404): one label for all of them.
UNMATCHED = "unmatched"
#: The token endpoint's name (its handler's, see tokendealer.http.endpoints.token).
ISSUING_ENDPOINT = "token"


@dataclass(slots=True)
class RequestRecord:
    """What the request turned out to be, noted as it is answered."""

    request_id: str
    endpoint: str = UNMATCHED
    #: The authenticated client (a registered id).
    client_id: str | None = None
    #: The error code of the answer (``error`` of its JSON body).
    error: str | None = None
    #: The client address, where the part that answers has read it already.
    address: str | None = None


_current: ContextVar[RequestRecord | None] = ContextVar("tokendealer_request", default=None)


def current() -> RequestRecord | None:
    """The record of the request being answered (None outside one)."""
    return _current.get()


def request_id(scope: Scope) -> str:
    """The request's incoming ``X-Request-ID`` if it is well-formed, else a new one."""
    for name, value in scope["headers"]:
        if name.lower() == HEADER:
            if _VALID_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return secrets.token_hex(16)


class Observed:
    """ASGI middleware around the whole app (the pipeline and Quart)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord(request_id(scope))
        header = (b"x-request-id", record.request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                kept = [h for h in message.get("headers", ()) if h[0].lower() != HEADER]
                message = {**message, "headers": [*kept, header]}
            await send(message)

        reset = _current.set(record)
        reset_id = log.REQUEST_ID.set(record.request_id)
        try:
            if tracing.enabled:
                with tracing.request_span(scope, record.request_id) as span:
                    try:
                        await self.app(scope, receive, send_with_id)
                    finally:
                        tracing.answered(span, status, record.client_id, record.error)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            log.REQUEST_ID.reset(reset_id)
            _current.reset(reset)
            if status:  # else the client went away unanswered
                self._answered(scope, record, status, started)

    def _answered(self, scope: Scope, record: RequestRecord, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        endpoint = record.endpoint
        metrics.request_duration(endpoint).observe(seconds)
        if status == 429:
            address = record.address or scope_address(scope, self.settings.trusted_proxies)
            events.rate_limited(endpoint, address)
        elif endpoint == ISSUING_ENDPOINT and record.error is not None:
            metrics.token_error(record.error)
        if self.settings.access_log:
            log_request(
                record.request_id,
                scope["method"],
                scope["path"],
                status,
                seconds,
                address=record.address or scope_address(scope, self.settings.trusted_proxies),
                client_id=record.client_id,
                error=record.error,
            )
