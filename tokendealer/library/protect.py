"""Protecting routes with bearer tokens (RFC 6750): a Quart decorator and an ASGI middleware.

Quart::

    verifier = TokenVerifier("https://dealer.example", "orders-api")

    @app.post("/items")
    @require_token(verifier, scopes=["write"])
    async def add_item():
        claims = token_claims()          # the verified claims, also at g.token_claims
        ...

Any ASGI app (Starlette, FastAPI, ...)::

    app = BearerAuthMiddleware(app, verifier, scopes=["read"], exempt_paths={"/healthz"})
    # in a Starlette handler: request.state.token_claims

What the client gets back (RFC 6750 §3, §3.1), with a JSON body ``{"error",
"error_description"}``:

=========================================  ======  ===========================================
request                                    status  ``WWW-Authenticate``
=========================================  ======  ===========================================
no bearer credentials (none, or another    401     ``Bearer realm="..."`` (no error code)
scheme such as Basic)
malformed ``Authorization``, two of them,  400     ``Bearer realm="...", error="invalid_request"``
or ``access_token`` in the query string
token that does not verify                 401     ``Bearer realm="...", error="invalid_token"``
valid token without a required scope       403     ``..., error="insufficient_scope", scope="..."``
issuer's keys unreachable, none cached     503     none (``Retry-After``)
=========================================  ======  ===========================================

Only the ``Authorization`` header is accepted (RFC 6750 §2.1); tokens in the URI
(§2.3) are refused because they end up in logs and browser history (§5.3), and form
bodies (§2.2) are not read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import parse_qsl

from tokendealer.library.verify import (
    InsufficientScope,
    InvalidToken,
    KeySetUnavailable,
    TokenVerifier,
    scope_tuple,
)

__all__ = [
    "BearerAuthMiddleware",
    "Denied",
    "authorize",
    "bearer_token",
    "require_token",
    "token_claims",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

P = ParamSpec("P")
R = TypeVar("R")

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token
#                b64token    = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
# RFC 7235 §2.1: the auth-scheme is case-insensitive.
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?: +(.*))?", re.DOTALL)
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# RFC 6750 §3: error_description and realm values use %x20-21 / %x23-5B / %x5D-7E.
_NOT_NQSCHAR = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
RETRY_AFTER = "5"


def _quoted(value: str) -> str:
    return '"' + _NOT_NQSCHAR.sub("?", value) + '"'


@dataclass
class Denied(Exception):
    """Why a request is refused, and how to say it (status, challenge, JSON body)."""

    status: int
    error: str | None
    description: str
    scope: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__init__(self.status, self.error, self.description)

    def headers(self, realm: str) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        if self.status == 503:
            return [*headers, ("Retry-After", RETRY_AFTER)]
        # RFC 6750 §3: "If the request lacks any authentication information ..., the
        # resource server SHOULD NOT include an error code or other error information."
        params = [f"realm={_quoted(realm)}"]
        if self.error is not None:
            params.append(f"error={_quoted(self.error)}")
            params.append(f"error_description={_quoted(self.description)}")
        if self.scope:
            params.append(f"scope={_quoted(' '.join(self.scope))}")
        return [*headers, ("WWW-Authenticate", "Bearer " + ", ".join(params))]

    def body(self) -> bytes:
        document = {"error_description": self.description}
        if self.error is not None:
            document = {"error": self.error, **document}
        return json.dumps(document).encode()


def _invalid_request(description: str) -> Denied:
    return Denied(400, "invalid_request", description)


def bearer_token(authorization: list[str], query_string: bytes | str = b"") -> str | None:
    """The bearer token of a request (RFC 6750 §2.1), None when it carries none.

    ``authorization`` holds every ``Authorization`` header value of the request. Raises
    ``Denied`` (400 ``invalid_request``) for a malformed or repeated header and for a
    token in the query string.
    """
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    if any(name == "access_token" for name, _ in parse_qsl(query_string, keep_blank_values=True)):
        raise _invalid_request("Send the token in the Authorization header, not the URI.")
    if not authorization:
        return None
    if len(authorization) > 1:
        raise _invalid_request("The request has more than one Authorization header.")
    match = _CREDENTIALS.fullmatch(authorization[0].strip(" \t"))
    if match is None:
        raise _invalid_request("The Authorization header is malformed.")
    scheme, credentials = match.groups()
    if scheme.lower() != "bearer":
        return None  # another scheme: no bearer credentials at all
    token = (credentials or "").lstrip(" ")
    if not _B64TOKEN.fullmatch(token):
        raise _invalid_request("The bearer token is malformed.")
    return token


async def authorize(
    verifier: TokenVerifier,
    authorization: list[str],
    query_string: bytes | str = b"",
    scopes: Iterable[str] = (),
) -> dict[str, Any]:
    """Verify a request's bearer token; return its claims or raise ``Denied``."""
    token = bearer_token(authorization, query_string)
    if token is None:
        raise Denied(401, None, "A bearer token is required.")
    try:
        return await verifier.verify(token, scopes=scopes)
    except InsufficientScope as exc:
        raise Denied(403, "insufficient_scope", exc.description, exc.required) from None
    except InvalidToken as exc:
        raise Denied(401, "invalid_token", exc.description) from None
    except KeySetUnavailable:
        raise Denied(503, "temporarily_unavailable", "The token cannot be checked now.") from None


# -- Quart -------------------------------------------------------------------------------------


def token_claims() -> dict[str, Any]:
    """The verified claims of the current Quart request (set by ``require_token``)."""
    from quart import g

    claims: dict[str, Any] = g.token_claims
    return claims


def require_token(
    verifier: TokenVerifier, scopes: Iterable[str] = (), *, realm: str | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[Any]]]:
    """Quart route decorator: run the handler only for a valid token with ``scopes``.

    The claims are at ``quart.g.token_claims`` (or ``token_claims()``) in the handler.
    ``realm`` defaults to the verifier's audience. Works for HTTP and websocket routes.

    >>> @app.post("/items")
    ... @require_token(verifier, scopes=["write"])
    ... async def add_item(): ...
    """
    required = scope_tuple(scopes)
    realm_value = realm or verifier.audience

    def decorator(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[Any]]:
        @wraps(handler)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            from quart import Response, g, has_websocket_context, request, websocket
            from werkzeug.datastructures import Headers

            incoming = websocket if has_websocket_context() else request
            try:
                claims = await authorize(
                    verifier,
                    incoming.headers.getlist("Authorization"),
                    incoming.query_string,
                    required,
                )
            except Denied as denied:
                return Response(
                    denied.body(),
                    status=denied.status,
                    headers=Headers(denied.headers(realm_value)),
                )
            g.token_claims = claims
            return await handler(*args, **kwargs)

        return wrapper

    return decorator


# -- plain ASGI ----------------------------------------------------------------------------------


class BearerAuthMiddleware:
    """ASGI middleware: every HTTP and websocket request needs a valid token with ``scopes``.

    The claims are put in ``scope["state"]["token_claims"]`` (Starlette and FastAPI show
    them as ``request.state.token_claims``). Paths in ``exempt_paths`` (exact matches,
    e.g. health checks) and lifespan events pass through untouched. A refused websocket
    is closed before it is accepted (the server answers 403).
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        *,
        scopes: Iterable[str] = (),
        realm: str | None = None,
        exempt_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.scopes = scope_tuple(scopes)
        self.realm = realm or verifier.audience
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        authorization = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == b"authorization"
        ]
        try:
            claims = await authorize(
                self.verifier,
                authorization,
                cast(bytes, scope.get("query_string", b"")),
                self.scopes,
            )
        except Denied as denied:
            await self._deny(scope, send, denied)
            return
        # A new state dict: the server's may be shared with the lifespan scope.
        state = {**(scope.get("state") or {}), "token_claims": claims}
        await self.app({**scope, "state": state}, receive, send)

    async def _deny(self, scope: Scope, send: Send, denied: Denied) -> None:
        if scope["type"] == "websocket":
            # RFC 6455 §7.4.1: 1008, policy violation.
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in denied.headers(self.realm)
        ]
        body = denied.body()
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": denied.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
