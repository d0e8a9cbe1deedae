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

import binascii
import json
import operator
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature as BadSignature

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


_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: One pass over a token: each base64url byte becomes its standard base64 one (what
#: ``binascii`` decodes), a dot stays a dot, and any other byte becomes ``!``, which
#: appears in no valid token (padding ``=`` included: RFC 7515 §2 has none).
_STANDARD = bytes(
    _B64[_B64URL.index(byte)] if byte in _B64URL else byte if byte == ord(".") else ord("!")
    for byte in range(256)
)
#: The value of each standard base64 byte (RFC 4648 §4).
_SEXTETS = bytes(_B64.index(byte) if byte in _B64 else 0 for byte in range(256))
#: For a segment of length 2 or 3 mod 4, the low bits of its last character that encode
#: nothing; a canonical encoding has them zero (RFC 4648 §3.5).
_UNUSED_BITS = (0, 0, 0x0F, 0x03)
_PADDING = (b"", b"", b"==", b"=")


def _b64decode(segment: bytes) -> bytes:
    """A segment already translated by ``_STANDARD`` and checked for ``!``."""
    # A length of 1 mod 4 cannot be valid base64url, and non-canonical trailing bits are
    # refused too, so that one token has exactly one encoding.
    remainder = len(segment) % 4
    if remainder:
        if remainder == 1 or _SEXTETS[segment[-1]] & _UNUSED_BITS[remainder]:
            raise MalformedToken()
        segment += _PADDING[remainder]
    try:
        return binascii.a2b_base64(segment)
    except (binascii.Error, ValueError):
        raise MalformedToken() from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # RFC 7519 §4: "... MUST either reject JWTs with duplicate Claim Names" ...
        raise MalformedToken()
    return result


_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_object(segment: bytes) -> dict[str, Any]:
    """The JSON object a translated segment encodes (RFC 7515 §7.1), or MalformedToken."""
    data = _b64decode(segment)
    # The fast path: JSON exactly as orjson writes it (compact, as every JWT library
    # writes a token's JSON), which therefore has no duplicate member names (a dict has
    # none to write) and reads the same with orjson as with ``json``.
    try:
        value = orjson.loads(data)
        canonical = orjson.dumps(value) == data
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        canonical = False
    if not canonical:
        # Anything else (whitespace, escapes, duplicates, NaN, big integers, invalid
        # JSON...) is read by ``json``, whose reading decides.
        try:
            value = _JSON.decode(data.decode("utf-8"))
        except (ValueError, RecursionError):
            raise MalformedToken() from None
    if not isinstance(value, dict):
        raise MalformedToken()
    return value


#: Bound on NumericDate claims (RFC 7519 §2), about 285 million years: JSON numbers are
#: unbounded, and Python's json also reads NaN and Infinity (an exp that never passes).
MAX_NUMERIC_DATE = 2**53


class _Header:
    """A token header that passed every check that depends on it alone (typ, crit, a
    string kid), and what it was last found to name in a key set."""

    __slots__ = ("alg", "bound", "kid")

    def __init__(self, kid: str, alg: object) -> None:
        self.kid = kid
        self.alg = alg
        #: ``(entry, check, signature length)``: the ``keys[kid]`` entry this header was
        #: last checked against (the very object: a key set that maps ``kid`` to another
        #: entry is checked again), the signature check of its key and algorithm
        #: (``Algorithm.verifier``) and the length of its signatures.
        self.bound: tuple[tuple[str, PublicKey], Callable[[bytes, bytes], None], int] | None
        self.bound = None


#: Headers already read, by their (translated) segment: every token of one key shares one
#: header, so reading it (base64, JSON, checks) happens once per key, not once per token.
#: Bounded: when full it is emptied, so that forged headers cost only their own reading.
_HEADERS: dict[bytes, _Header] = {}
HEADER_CACHE_SIZE = 256


def _read_header(segment: bytes) -> _Header:
    header = _json_object(segment)
    typ = header.get("typ")
    # RFC 9068 §4: "Resource servers MUST verify that the typ header value is 'at+jwt'
    # or 'application/at+jwt' and reject tokens carrying any other value."
    if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES:
        raise MalformedToken("The token type is not at+jwt.")
    if "crit" in header:
        raise MalformedToken("The token uses an unsupported critical header.")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise UnknownKey()
    read = _Header(kid, header.get("alg"))
    if len(_HEADERS) >= HEADER_CACHE_SIZE:
        _HEADERS.clear()
    _HEADERS[segment] = read
    return read


def _bind(
    header: _Header, entry: tuple[str, PublicKey]
) -> tuple[tuple[str, PublicKey], Callable[[bytes, bytes], None], int]:
    key_alg, public_key = entry
    # RFC 8725 §3.1: use the algorithm bound to the key, never the one the token names.
    if header.alg != key_alg:
        raise InvalidSignature("The token algorithm does not match its key.")
    algorithm = ALGORITHMS.get(key_alg)
    if algorithm is None or not algorithm.fits(public_key):
        # A mapping given by the caller that binds a key to another type's algorithm.
        raise InvalidSignature("The token algorithm does not match its key.")
    bound = (entry, algorithm.verifier(public_key), algorithm.signature_length(public_key))
    header.bound = bound
    return bound


def _token_bytes(token: object) -> bytes:
    if isinstance(token, bytes):
        if len(token) > MAX_TOKEN_LENGTH:
            raise MalformedToken("The token is too large.")
        return token  # bytes outside ASCII are refused with the others below
    if not isinstance(token, str):
        raise MalformedToken()
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedToken("The token is too large.")
    try:
        return token.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedToken() from None


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

    Every call checks the signature and every claim. What is kept between calls depends
    on a header alone (``_HEADERS``: its checks, its ``kid`` and ``alg``) and on a key
    set's entry (its algorithm's signature check and length), never on a token.
    """
    data = _token_bytes(token)
    # Compact serialisation (RFC 7515 §7.1): three non-empty base64url segments joined by
    # two dots, and no other byte; the segments come out in the standard alphabet.
    standard = data.translate(_STANDARD)
    first = standard.find(b".")
    second = standard.find(b".", first + 1)
    if (
        first < 1  # no dot, or an empty header
        or second <= first + 1  # one dot only, or an empty payload
        or second + 1 == len(standard)  # an empty signature
        or standard.find(b".", second + 1) >= 0
        or b"!" in standard
    ):
        raise MalformedToken()
    header_segment = standard[:first]

    header = _HEADERS.get(header_segment) or _read_header(header_segment)
    entry = keys.get(header.kid)
    if entry is None:
        raise UnknownKey()
    bound = header.bound
    if bound is None or bound[0] is not entry:
        bound = _bind(header, entry)

    signature = _b64decode(standard[second + 1 :])
    if len(signature) != bound[2]:
        raise InvalidSignature()
    try:
        bound[1](signature, data[:second])
    except BadSignature:
        raise InvalidSignature() from None

    claims = _json_object(standard[first + 1 : second])
    _check_claims(
        claims,
        issuer,
        audience,
        leeway,
        leeway if expiry_leeway is None else expiry_leeway,
        time.time() if now is None else now,
    )
    return claims


#: The types of a JSON number as ``json`` reads it (``bool``, not one of them, is its own).
_NUMBERS = (int, float)
#: The RFC 9068 §2.2 claims, as a tuple (``KeyError`` when one is missing).
_REQUIRED = operator.itemgetter(*REQUIRED_CLAIMS)


def _check_claims(
    claims: dict[str, Any],
    issuer: str,
    audience: str | None,
    leeway: float,
    expiry_leeway: float,
    now: float,
) -> None:
    # The order of the checks decides which error a token with several faults gets.
    try:
        iss, exp, aud, sub, client_id, iat, jti = _REQUIRED(claims)
    except KeyError:
        raise InvalidClaims("The token lacks a required claim.") from None
    if not (
        isinstance(iss, str)
        and isinstance(sub, str)
        and isinstance(client_id, str)
        and isinstance(jti, str)
        and isinstance(claims.get("scope", ""), str)
    ):
        raise InvalidClaims()
    # NumericDate (RFC 7519 §2) within MAX_NUMERIC_DATE (NaN compares False); nbf is
    # optional, and iat stands in for it when absent.
    nbf = claims.get("nbf", iat)
    if not (
        type(exp) in _NUMBERS
        and type(iat) in _NUMBERS
        and type(nbf) in _NUMBERS
        and -MAX_NUMERIC_DATE < exp < MAX_NUMERIC_DATE
        and -MAX_NUMERIC_DATE < iat < MAX_NUMERIC_DATE
        and -MAX_NUMERIC_DATE < nbf < MAX_NUMERIC_DATE
    ):
        raise InvalidClaims()

    # RFC 9068 §4: "The issuer identifier ... MUST exactly match the value of the iss claim."
    if iss != issuer:
        raise InvalidIssuer()

    # RFC 9068 §4: "The resource server MUST validate that the aud claim contains a
    # resource indicator value corresponding to an identifier the resource server expects."
    if isinstance(aud, str):
        if audience is not None and audience != aud:
            raise InvalidAudience()
    else:
        if not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
            raise InvalidClaims()
        if audience is not None and audience not in aud:
            raise InvalidAudience()

    if exp <= now - expiry_leeway:
        raise ExpiredToken()
    if nbf > now + leeway:
        raise ImmatureToken()
    if iat > now + leeway:
        raise ImmatureToken("The token was issued in the future.")
