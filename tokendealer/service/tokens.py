"""Minting JWT access tokens (RFC 9068, RFC 7519)."""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokendealer import jsonbytes
from tokendealer.keys.keyset import SigningKey
from tokendealer.library.algorithms import ALGORITHMS
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
    # RFC 7515 §5.1: the signing input is BASE64URL(header) "." BASE64URL(payload); the
    # signature is the key's one algorithm's (for ECDSA the JWS R || S, RFC 7518 §3.4).
    signing_input = _header_segment(key.alg, key.kid) + _b64url(jsonbytes.dumps(payload))
    signature = ALGORITHMS[key.alg].sign(signing_input, key.private_key)
    token = (signing_input + b"." + _b64url(signature)).decode("ascii")
    return IssuedToken(token, ttl, scope, payload)


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _header_segment(alg: str, kid: str) -> bytes:
    """The encoded JOSE header of every token a key signs, and the dot after it; made
    once per key. RFC 9068 §2.1: "Resource servers ... MUST verify that the typ header
    value is 'at+jwt'"; so the header carries typ at+jwt, and the kid that names the key.
    Members sorted, as PyJWT wrote them: ``{"alg":...,"kid":...,"typ":"at+jwt"}``."""
    header = {"alg": alg, "kid": kid, "typ": JWT_TYPE}
    return _b64url(json.dumps(header, separators=(",", ":")).encode()) + b"."
