"""Minting JWT access tokens (RFC 9068, RFC 7519)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from tokendealer.keys.keyset import SigningKey

JWT_TYPE = "at+jwt"
#: RFC 6750: the token_type of every token issued here.
TOKEN_TYPE = "Bearer"  # noqa: S105  # nosec B105 - a token type name, not a secret
#: A private claim (RFC 7519 §4.3): the client's token epoch when the token was minted
#: (``store.Client.token_epoch``). The dealer honours only tokens of the current epoch.
EPOCH_CLAIM = "client_epoch"


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
) -> IssuedToken:
    iat = int(now)
    # RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat and jti are REQUIRED. For the
    # client-credentials grant "the sub claim ... SHOULD correspond to the client_id".
    claims: dict[str, Any] = {
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
        claims["scope"] = scope
    if epoch:
        claims[EPOCH_CLAIM] = epoch
    # RFC 9068 §2.1: "Resource servers ... MUST verify that the typ header value is
    # 'at+jwt'"; so the header carries typ at+jwt, and the kid that names the key.
    token = jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"typ": JWT_TYPE, "kid": key.kid}
    )
    return IssuedToken(token, ttl, scope, claims)
