"""Strict verification of JWT access tokens (RFC 9068 §4, RFC 8725, RFC 7519 §7.2).

The one verification core, shared by the dealer (``/verify_token``, introspection) and by
``tokendealer.library.verify``, the library resource servers use. It imports nothing of the
server: it takes a mapping ``kid -> (alg, public key)`` and returns the claims.

Rules, each one a check below:

* size first: tokens over ``MAX_TOKEN_LENGTH`` are refused before any parsing;
* compact serialisation only, three base64url segments with no padding (RFC 7515 §2);
* ``typ`` must be ``at+jwt`` (RFC 9068 §4), and ``crit`` is refused: we understand no
  extension (RFC 7515 §4.1.11);
* the key is chosen by ``kid`` among *our* keys, and the algorithm is the key's own:
  the header's ``alg`` must equal it, so ``none``, HS* keyed with the public key, an
  algorithm of another family (RS256 naming an ES256 key) or any other algorithm
  confusion is refused (RFC 8725 §2.1, §3.1), and the key must be of that algorithm's
  type and curve; ``jku``, ``x5u``, ``jwk`` and ``x5c`` headers are never consulted
  (RFC 8725 §3.10);
* the signature has exactly the length the key gives it (RFC 7518 §3.4: ``R || S``,
  each the curve's size, for ECDSA);
* ``iss`` exactly equal to the expected issuer, ``aud`` containing the audience when one
  is expected, ``exp``/``nbf``/``iat`` with leeway, every RFC 9068 §2.2 claim present.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from tokendealer.library.algorithms import ALGORITHMS, PublicKey

__all__ = [
    "MAX_TOKEN_LENGTH",
    "ExpiredToken",
    "ImmatureToken",
    "InvalidAudience",
    "InvalidClaims",
    "InvalidIssuer",
    "InvalidSignature",
    "InvalidToken",
    "MalformedToken",
    "RevokedToken",
    "UnknownKey",
    "verify_access_token",
]

MAX_TOKEN_LENGTH = 8192
ACCEPTED_TYPES = ("at+jwt", "application/at+jwt")
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

#: What a verifier needs to know of a key: its one algorithm (``algorithms.ALGORITHMS``)
#: and its public half, of that algorithm's type.
VerificationKeys = Mapping[str, tuple[str, PublicKey]]


class InvalidToken(Exception):
    """Base of every verification failure; ``str()`` is a short, safe reason."""

    description = "The token is invalid."

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or self.description)
        self.description = description or self.description


class MalformedToken(InvalidToken):
    description = "The token is malformed."


class UnknownKey(InvalidToken):
    description = "The token is signed by an unknown key."


class InvalidSignature(InvalidToken):
    description = "The token signature is invalid."


class ExpiredToken(InvalidToken):
    description = "The token has expired."


class ImmatureToken(InvalidToken):
    description = "The token is not yet valid."


class InvalidIssuer(InvalidToken):
    description = "The token issuer is not accepted."


class InvalidAudience(InvalidToken):
    description = "The token audience is not accepted."


class InvalidClaims(InvalidToken):
    description = "The token claims are invalid."


class RevokedToken(InvalidToken):
    """Signed and current, but revoked at the issuer (RFC 7009); only the dealer knows."""

    description = "The token has been revoked."


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: For a segment of length 2 or 3 mod 4, the low bits of its last character that encode
#: nothing; a canonical encoding has them zero (RFC 4648 §3.5).
_UNUSED_BITS = {2: 0x0F, 3: 0x03}


def _b64decode(segment: str) -> bytes:
    # The regex already refused '=' and non-alphabet characters; a length of 1 mod 4
    # cannot be valid base64url, and non-canonical trailing bits are refused too, so
    # that one token has exactly one encoding.
    remainder = len(segment) % 4
    if remainder == 1:
        raise MalformedToken()
    if remainder and _B64URL.index(segment[-1]) & _UNUSED_BITS[remainder]:
        raise MalformedToken()
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken() from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            # RFC 7519 §4: "... MUST either reject JWTs with duplicate Claim Names" ...
            raise MalformedToken()
        result[name] = value
    return result


_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = _JSON.decode(_b64decode(segment).decode("utf-8"))
    except (ValueError, RecursionError):
        raise MalformedToken() from None
    if not isinstance(value, dict):
        raise MalformedToken()
    return value


#: Bound on NumericDate claims (RFC 7519 §2), about 285 million years: JSON numbers are
#: unbounded, and Python's json also reads NaN and Infinity (an exp that never passes).
MAX_NUMERIC_DATE = 2**53


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -MAX_NUMERIC_DATE < value < MAX_NUMERIC_DATE  # False for NaN too
    )


def verify_access_token(
    token: str | bytes,
    keys: VerificationKeys,
    *,
    issuer: str,
    audience: str | None = None,
    leeway: float = 30,
    expiry_leeway: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify ``token`` and return its claims, or raise an ``InvalidToken``.

    ``leeway`` seconds of clock skew are tolerated on ``nbf`` and ``iat`` and, unless
    ``expiry_leeway`` says otherwise, on ``exp``.

    >>> claims = verify_access_token(token, {kid: ("RS512", public_key)},
    ...                              issuer="https://dealer.example", audience="api")
    """
    if isinstance(token, bytes):
        if len(token) > MAX_TOKEN_LENGTH:
            raise MalformedToken("The token is too large.")
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedToken() from None
    if not isinstance(token, str):
        raise MalformedToken()
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedToken("The token is too large.")
    if not _COMPACT.fullmatch(token):
        raise MalformedToken()
    header_segment, payload_segment, signature_segment = token.split(".")

    header = _json_object(header_segment)
    typ = header.get("typ")
    # RFC 9068 §4: "Resource servers MUST verify that the typ header value is 'at+jwt'
    # or 'application/at+jwt' and reject tokens carrying any other value."
    if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES:
        raise MalformedToken("The token type is not at+jwt.")
    if "crit" in header:
        raise MalformedToken("The token uses an unsupported critical header.")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise UnknownKey()
    key_alg, public_key = keys[kid]
    # RFC 8725 §3.1: use the algorithm bound to the key, never the one the token names.
    if header.get("alg") != key_alg:
        raise InvalidSignature("The token algorithm does not match its key.")

    algorithm = ALGORITHMS.get(key_alg)
    if algorithm is None or not algorithm.fits(public_key):
        # A mapping given by the caller that binds a key to another type's algorithm.
        raise InvalidSignature("The token algorithm does not match its key.")

    signature = _b64decode(signature_segment)
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    if len(signature) != algorithm.signature_length(public_key) or not algorithm.verify(
        signing_input, public_key, signature
    ):
        raise InvalidSignature()

    claims = _json_object(payload_segment)
    _check_claims(
        claims,
        issuer=issuer,
        audience=audience,
        leeway=leeway,
        expiry_leeway=leeway if expiry_leeway is None else expiry_leeway,
        now=now,
    )
    return claims


def _check_claims(
    claims: dict[str, Any],
    *,
    issuer: str,
    audience: str | None,
    leeway: float,
    expiry_leeway: float,
    now: float | None,
) -> None:
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise InvalidClaims("The token lacks a required claim.")
    for name in ("iss", "sub", "client_id", "jti"):
        if not isinstance(claims[name], str):
            raise InvalidClaims()
    if "scope" in claims and not isinstance(claims["scope"], str):
        raise InvalidClaims()
    if not all(_is_number(claims[name]) for name in ("exp", "iat")):
        raise InvalidClaims()
    if "nbf" in claims and not _is_number(claims["nbf"]):
        raise InvalidClaims()

    # RFC 9068 §4: "The issuer identifier ... MUST exactly match the value of the iss claim."
    if claims["iss"] != issuer:
        raise InvalidIssuer()

    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise InvalidClaims()
    # RFC 9068 §4: "The resource server MUST validate that the aud claim contains a
    # resource indicator value corresponding to an identifier the resource server expects."
    if audience is not None and audience not in audiences:
        raise InvalidAudience()

    now = time.time() if now is None else now
    if claims["exp"] <= now - expiry_leeway:
        raise ExpiredToken()
    if claims.get("nbf", claims["iat"]) > now + leeway:
        raise ImmatureToken()
    if claims["iat"] > now + leeway:
        raise ImmatureToken("The token was issued in the future.")
