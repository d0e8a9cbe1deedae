"""Who calls the admin API: a bearer access token of this dealer (RFC 6750 §2.1) with the
scope ``tokendealer:admin`` and the issuer as its audience, so that CI jobs and tools use
client credentials and no new kind of secret. The caller's actor is ``client:ID``. A
signed-in console administrator (``admin:NAME``) may call it too, with the session's CSRF
token in a header (a cross-site page can make the browser send the cookie, never the
header)."""

from __future__ import annotations

from quart import request

from tokendealer.http.console import session
from tokendealer.http.current import dealer as current_dealer
from tokendealer.library.verification import InvalidToken
from tokendealer.protocol.errors import (
    ADMIN_SCOPE,
    BearerRequired,
    InsufficientScope,
    InvalidBearerToken,
    MalformedBearer,
    MissingCsrfToken,
)


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # RFC 6750 §2.1: the scheme is case-insensitive (RFC 7235 §2.1).
    if scheme.lower() != "bearer":
        raise BearerRequired()
    token = token.strip()
    # §3.1: a malformed request (no token, or more than one word) is invalid_request.
    if not token or " " in token or len(request.headers.getlist("Authorization")) > 1:
        raise MalformedBearer()
    return token


async def admin_caller() -> str:
    """The actor of the current request, or the RFC 6750 error to answer: a bearer token,
    or else a console session with its CSRF token in ``X-CSRF-Token``."""
    dealer = current_dealer()
    if "Authorization" not in request.headers:
        current = await session.current(dealer.store)
        if current is not None:
            if not session.csrf_matches(current, request.headers.get(session.CSRF_HEADER)):
                raise MissingCsrfToken()
            return current.actor
    token = _bearer_token()
    try:
        claims = await dealer.verify(token, audience=dealer.settings.issuer, exact_expiry=True)
    except InvalidToken:
        raise InvalidBearerToken() from None
    if ADMIN_SCOPE not in str(claims.get("scope", "")).split():
        raise InsufficientScope()
    # The token says what the client could do when it was issued; the client's record
    # says what it may do now. A disabled client, or one whose admin scope or issuer
    # audience was withdrawn, administers nothing more with the tokens it still holds.
    # The issuer must be one of its registered audiences, not the default audience of a
    # client registered with none.
    caller = await dealer.registry.get(str(claims["client_id"]))
    if (
        caller is None
        or caller.disabled
        or ADMIN_SCOPE not in caller.scopes
        or dealer.settings.issuer not in caller.audiences
    ):
        raise InvalidBearerToken("The client of this token may not administer.")
    return f"client:{claims['client_id']}"
