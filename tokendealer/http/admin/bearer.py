"""Who calls the admin API: a bearer access token of this dealer (RFC 6750 §2.1) with the
scope ``tokendealer:admin`` and the issuer as its audience, so that CI jobs and tools use
client credentials and no new kind of secret. The caller's actor is ``client:ID``."""

from __future__ import annotations

from quart import current_app, request

from tokendealer.library.verification import InvalidToken
from tokendealer.protocol.errors import (
    ADMIN_SCOPE,
    BearerRequired,
    InsufficientScope,
    InvalidBearerToken,
)
from tokendealer.service.dealer import Dealer


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # RFC 6750 §2.1: the scheme is case-insensitive (RFC 7235 §2.1); one token, no more.
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise BearerRequired()
    return token.strip()


async def admin_caller() -> str:
    """The actor of the current request, or the RFC 6750 error to answer."""
    dealer: Dealer = current_app.extensions["tokendealer"]
    token = _bearer_token()
    try:
        claims = await dealer.verify(token, audience=dealer.settings.issuer)
    except InvalidToken:
        raise InvalidBearerToken() from None
    if ADMIN_SCOPE not in str(claims.get("scope", "")).split():
        raise InsufficientScope()
    return f"client:{claims['client_id']}"
