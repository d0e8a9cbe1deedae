"""The one place that maps errors to HTTP responses.

* ``OAuthError``: its status, RFC 6749 §5.2 JSON body and headers, never cached;
* Werkzeug ``HTTPException`` (404, 405, 413...): the same JSON shape;
* anything else: a generic 500 ``server_error``, logged with a request id that the
  response repeats; no internals reach the client.
"""

from __future__ import annotations

import secrets

from quart import Quart, request
from quart_rate_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from tokendealer.errors import OAuthError, TemporarilyUnavailable
from tokendealer.http.responses import NO_STORE, json_response
from tokendealer.log import get_logger
from tokendealer.store import StoreUnavailable

log = get_logger("tokendealer.http")

_HTTP_ERRORS = {
    404: ("not_found", "The resource does not exist."),
    405: ("invalid_request", "The method is not allowed for this resource."),
    413: ("invalid_request", "The request body is too large."),
    431: ("invalid_request", "The request headers are too large."),
    408: ("invalid_request", "The request timed out."),
}


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(OAuthError)
    async def _oauth_error(error: OAuthError):  # type: ignore[no-untyped-def]
        return json_response(error.body(), error.status, {**NO_STORE, **error.headers})

    @app.errorhandler(RateLimitExceeded)
    async def _rate_limited(error: RateLimitExceeded):  # type: ignore[no-untyped-def]
        # 429 Too Many Requests (RFC 6585 §4) with Retry-After. RFC 6749 has no code for
        # it; "temporarily_unavailable" is its code for "retry later" (§4.1.2.1), known
        # to OAuth clients, and the 429 status says the limit is the caller's own.
        return json_response(
            {
                "error": "temporarily_unavailable",
                "error_description": "Too many requests; retry after the Retry-After delay.",
            },
            429,
            {**NO_STORE, "Retry-After": str(error.retry_after)},
        )

    @app.errorhandler(StoreUnavailable)
    async def _store_down(error: StoreUnavailable):  # type: ignore[no-untyped-def]
        log.warning("store_unavailable", path=request.path, reason=str(error))
        return await _oauth_error(TemporarilyUnavailable())

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException):  # type: ignore[no-untyped-def]
        status = error.code or 500
        code, description = _HTTP_ERRORS.get(
            status, ("invalid_request" if status < 500 else "server_error", "The request failed.")
        )
        headers = dict(NO_STORE)
        if status == 405:
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        return json_response({"error": code, "error_description": description}, status, headers)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception):  # type: ignore[no-untyped-def]
        request_id = secrets.token_hex(8)
        log.error(
            "unhandled_error",
            request_id=request_id,
            path=request.path,
            error_type=type(error).__name__,
            exc_info=error,
        )
        return json_response(
            {"error": "server_error", "error_description": "Unexpected error."},
            500,
            {**NO_STORE, "X-Request-Id": request_id},
        )
