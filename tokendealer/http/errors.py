"""The one place that maps errors to HTTP responses.

* ``OAuthError``: its status, RFC 6749 §5.2 JSON body and headers, never cached;
* ``RateLimitExceeded``: 429 with Retry-After;
* ``StoreUnavailable``: 503 ``temporarily_unavailable`` with Retry-After (the store logs
  the outage once);
* ``AdminError`` (the admin API and console): 400 ``invalid_request``, 404 ``not_found`` or 409
  ``conflict``, with the message and the field it is about;
* Werkzeug ``HTTPException`` (404, 405, 413...): the same JSON shape;
* anything else: a generic 500 ``server_error``, logged with a request id that the
  response repeats (``X-Request-ID``); no internals reach the client.

``describe_error`` does the mapping for every route, as a ``Problem``; ``error_reply`` is
its JSON, which the OAuth pipeline sends directly and the Quart routes through the handler
``register_error_handlers`` installs; the console renders the same problem as a page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from quart import Quart, Response, request
from quart_rate_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from tokendealer.admin.errors import AdminError, Conflict, Invalid, NotFound
from tokendealer.http import observed
from tokendealer.http.responses import NO_STORE, Reply, json_reply
from tokendealer.log import get_logger
from tokendealer.protocol.errors import OAuthError, TemporarilyUnavailable
from tokendealer.store import StoreRefused, StoreUnavailable

log = get_logger("tokendealer.http")

_HTTP_ERRORS = {
    400: ("invalid_request", "The request is malformed."),
    404: ("not_found", "The resource does not exist."),
    405: ("invalid_request", "The method is not allowed for this resource."),
    413: ("invalid_request", "The request body is too large."),
    431: ("invalid_request", "The request headers are too large."),
    408: ("invalid_request", "The request timed out."),
    501: ("invalid_request", "The request's transfer coding is not supported."),
}


_ADMIN_ERRORS: dict[type[AdminError], tuple[int, str]] = {
    Invalid: (400, "invalid_request"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
}

#: Statuses answered before the request body was read to its end.
_UNREAD_BODY = frozenset({400, 408, 413, 431, 501})


def error_reply(error: Exception, path: str) -> Reply:
    """The JSON reply for ``error`` raised while answering a request for ``path``."""
    problem = describe_error(error, path)
    return json_reply(problem.body, problem.status, problem.headers)


@dataclass(frozen=True)
class Problem:
    """What answers an error, whatever the page's format: the status, the JSON body
    (``error``, ``error_description``, maybe ``field``) and the headers."""

    body: dict[str, str]
    status: int
    headers: Mapping[str, str]

    @property
    def description(self) -> str:
        return self.body.get("error_description", "")


def describe_error(error: Exception, path: str) -> Problem:
    """The one mapping of errors: the problem ``error`` raised while answering a request
    for ``path`` is. The JSON routes send it as JSON (``error_reply``), the console as a
    page. Its code is noted on the request's record (access line, metrics)."""
    problem = _describe(error, path)
    record = observed.current()
    if record is not None:
        record.error = problem.body["error"]
    return problem


def _describe(error: Exception, path: str) -> Problem:
    if isinstance(error, OAuthError):
        return Problem(error.body(), error.status, {**NO_STORE, **error.headers})
    if isinstance(error, RateLimitExceeded):
        # 429 Too Many Requests (RFC 6585 §4) with Retry-After. RFC 6749 has no code for
        # it; "temporarily_unavailable" is its code for "retry later" (§4.1.2.1), known
        # to OAuth clients, and the 429 status says the limit is the caller's own.
        return Problem(
            {
                "error": "temporarily_unavailable",
                "error_description": "Too many requests; retry after the Retry-After delay.",
            },
            429,
            {**NO_STORE, "Retry-After": str(error.retry_after)},
        )
    if isinstance(error, StoreRefused):
        return Problem(
            {
                "error": "invalid_request",
                "error_description": "The request holds a value the store refuses.",
            },
            400,
            NO_STORE,
        )
    if isinstance(error, StoreUnavailable):
        # Logged by the store, once per outage (``tokendealer.outage``), not per request.
        return _describe(TemporarilyUnavailable(), path)
    if isinstance(error, AdminError):
        status, code = _ADMIN_ERRORS.get(type(error), (400, "invalid_request"))
        body = {"error": code, "error_description": str(error)}
        if error.field is not None:
            body["field"] = error.field
        return Problem(body, status, NO_STORE)
    if isinstance(error, HTTPException):
        return _http_error(error)
    # The line carries the request id (structlog's context), which the response repeats
    # in X-Request-ID (tokendealer.http.observed).
    log.error("unhandled_error", path=path, error_type=type(error).__name__, exc_info=error)
    return Problem(
        {"error": "server_error", "error_description": "Unexpected error."}, 500, NO_STORE
    )


def _http_error(error: HTTPException) -> Problem:
    status = error.code or 500
    code, description = _HTTP_ERRORS.get(
        status, ("invalid_request" if status < 500 else "server_error", "The request failed.")
    )
    headers = dict(NO_STORE)
    if status in _UNREAD_BODY:
        # The body was not read to its end (or its framing is ambiguous): what follows on
        # the connection is not a request boundary this server can trust, and a client
        # trickling a body must not keep the connection open once answered.
        headers["Connection"] = "close"
    if status == 405:
        allowed = getattr(error, "valid_methods", None)
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    return Problem({"error": code, "error_description": description}, status, headers)


def to_response(reply: Reply) -> Response:
    """A ``Reply`` as Quart's response, for the Quart routes."""
    headers = dict(reply.headers)
    return Response(reply.body, reply.status, headers, content_type=reply.content_type)


def register_error_handlers(app: Quart) -> None:
    # One handler: Quart looks handlers up along the exception's MRO, so this one also
    # receives HTTPException (404, 405, 413...) and RateLimitExceeded.
    @app.errorhandler(Exception)
    async def _any_error(error: Exception) -> Response:
        return to_response(error_reply(error, request.path))
