"""Minting JWT access tokens (RFC 9068, RFC 7519)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from tokendealer.keys.keyset import SigningKey
from tokendealer.protocol.claims import EPOCH_CLAIM, with_client_claims

JWT_TYPE = "at+jwt"
#: RFC 6750: the token_type of every token issued here.
TOKEN_TYPE = "Bearer"  # noqa: S105  # nosec B105 - a token type name, not a secret
#: ``EPOCH_CLAIM`` is defined with the names a client's claims may not take
#: (``protocol.claims``), and is the dealer's from here as before.
__all__ = ["EPOCH_CLAIM", "JWT_TYPE", "TOKEN_TYPE", "IssuedToken", "mint"]


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str
    claims: dict[str, Any]


def mint(
    key: SigningKey,
    *,
    issuer: str,
    client_id: str,
    audience: str,
    scopes: tuple[str, ...],
    ttl: int,
    now: float,
    epoch: str = "",
    claims: Mapping[str, Any] | None = None,
) -> IssuedToken:
    """A signed access token. ``claims``: the client's own (``Client.claims``), after the
    dealer's, which always win (``protocol.claims.with_client_claims``)."""
    iat = int(now)
    # RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat and jti are REQUIRED. For the
    # client-credentials grant "the sub claim ... SHOULD correspond to the client_id".
    payload: dict[str, Any] = {
        "iss": issuer,
        "sub": client_id,
        "client_id": client_id,
        "aud": audience,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    scope = " ".join(scopes)
    if scope:
        payload["scope"] = scope
    if epoch:
        payload[EPOCH_CLAIM] = epoch
    payload = with_client_claims(payload, claims or {})
    # RFC 9068 §2.1: "Resource servers ... MUST verify that the typ header value is
    # 'at+jwt'"; so the header carries typ at+jwt, and the kid that names the key.
    token = jwt.encode(
        payload, key.private_key, algorithm=key.alg, headers={"typ": JWT_TYPE, "kid": key.kid}
    )
    return IssuedToken(token, ttl, scope, payload)
