"""Per-client claims: static claims an administrator gives a client, copied into each of
its access tokens (RFC 9068 §2.2: a token may carry other claims) and, from the token,
into the introspection answers (RFC 7662 §2.2: "implementations MAY extend this
structure with their own service-specific response names").

A client's claims never take a name the dealer sets itself, in a token's payload or
header or in an introspection answer (``RESERVED``), so what a resource server reads
under a standard name is always the dealer's. They are bounded: at most ``MAX_CLAIMS``
of them, ``MAX_CLAIMS_SIZE`` bytes of JSON in all, nested at most ``MAX_DEPTH`` deep;
a token goes in an ``Authorization`` header, and servers and proxies limit the size of
headers (8 KiB is common).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

#: A private claim (RFC 7519 §4.3): the client's token epoch when the token was minted
#: (``Client.token_epoch``). The dealer honours only tokens of the current epoch.
EPOCH_CLAIM = "client_epoch"

#: Names a client's claims may not take: what the dealer sets in every token (RFC 7519
#: §4.1, RFC 9068 §2.2, its epoch), what it may set (``scope``; RFC 7800 ``cnf``, RFC 8693
#: ``act`` and ``may_act``, OpenID Connect's ``azp``), the names of the JWS header
#: (``typ``, ``alg``, ``kid``), and the members of an introspection answer (RFC 7662
#: §2.2: ``active``, ``token_type``, ``username``).
RESERVED = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "client_id",
        "scope",
        EPOCH_CLAIM,
        "cnf",
        "act",
        "may_act",
        "azp",
        "typ",
        "alg",
        "kid",
        "active",
        "token_type",
        "username",
    }
)

#: The most claims a client may have, the most bytes they take as the token carries them
#: (compact JSON, non-ASCII escaped), the longest name, and the deepest nesting.
MAX_CLAIMS = 20
MAX_CLAIMS_SIZE = 2048
MAX_CLAIM_NAME = 64
MAX_DEPTH = 8

CLAIM_NAME = re.compile(rf"[\x21-\x7e]{{1,{MAX_CLAIM_NAME}}}")

_SCALARS = (str, int, float, bool, type(None))


def parse_json(text: str) -> Any:
    """Claims typed as JSON text (the CLI's --claim-json, the console's field): strict
    JSON, so no NaN or Infinity, and no object giving a key twice (JSON leaves which one
    counts to the reader). ``ValueError`` says why not, in one line."""
    try:
        return json.loads(text, parse_constant=_not_json, object_pairs_hook=_object)
    except RecursionError:
        raise ValueError("it nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg}: line {exc.lineno}, column {exc.colno}") from None
    except _KeyTwice:
        raise
    except ValueError as exc:  # NaN, Infinity; a number of thousands of digits
        raise ValueError(str(exc).split(";")[0]) from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


class _KeyTwice(ValueError):
    """An object gives a key twice (the message whole: the key may hold a ';')."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _KeyTwice(f"an object gives the key {_short(key)} twice")
        value[key] = item
    return value


def claims_size(claims: Mapping[str, Any]) -> int:
    """The bytes ``claims`` take as a token's payload spells them (PyJWT's compact JSON)."""
    return len(json.dumps(dict(claims), separators=(",", ":")))


def claim_error(name: object, value: object) -> str | None:
    """A one-line reason why a client may not have the claim ``name`` with ``value``, or
    None when it may."""
    if not isinstance(name, str) or CLAIM_NAME.fullmatch(name) is None:
        return (
            f"claim name {_short(name)}: a claim name is 1-{MAX_CLAIM_NAME} printable ASCII "
            "characters without spaces"
        )
    if name in RESERVED:
        return f"claim {name!r} is set by the dealer; choose another name"
    reason = _value_error(value, MAX_DEPTH)
    return None if reason is None else f"claim {name!r}: {reason}"


def claims_error(claims: Mapping[str, Any]) -> str | None:
    """A one-line reason why a client may not have ``claims``, or None when it may."""
    for name, value in claims.items():
        if (reason := claim_error(name, value)) is not None:
            return reason
    if len(claims) > MAX_CLAIMS:
        return f"a client has at most {MAX_CLAIMS} claims"
    size = claims_size(claims)
    if size > MAX_CLAIMS_SIZE:
        return (
            f"the claims take {size} bytes; at most {MAX_CLAIMS_SIZE} "
            "(a token must stay small: headers have limits)"
        )
    return None


def _value_error(value: object, depth: int) -> str | None:
    """Why ``value`` is not a JSON value nested at most ``depth`` levels, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN and Infinity are not JSON numbers"
    if isinstance(value, str):
        return None if _unicode(value) else "the value is not valid Unicode text"
    if isinstance(value, _SCALARS):
        return None
    if not isinstance(value, (list, dict)):
        return "the value must be JSON: a string, number, true, false, null, array or object"
    if depth == 0:
        return f"the value nests more than {MAX_DEPTH} levels deep"
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                return "the keys of an object are strings"
            if not _unicode(key):
                return "the value is not valid Unicode text"
        items = list(value.values())
    else:
        items = value
    for item in items:
        if (reason := _value_error(item, depth - 1)) is not None:
            return reason
    return None


def _unicode(text: str) -> bool:
    """Whether ``text`` is Unicode text (no lone surrogate, which UTF-8 cannot carry)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(name: object) -> str:
    shown = repr(name)
    return shown if len(shown) <= MAX_CLAIM_NAME + 2 else shown[:MAX_CLAIM_NAME] + "..."


def with_client_claims(
    dealer_claims: Mapping[str, Any], client_claims: Mapping[str, Any]
) -> dict[str, Any]:
    """A token's payload: the dealer's claims, then the client's. The dealer's always
    win, and a reserved name is never taken from the client's (the admin service refuses
    them; this holds for a record written by other means too)."""
    payload = dict(dealer_claims)
    for name, value in client_claims.items():
        if name not in RESERVED and name not in payload:
            payload[name] = value
    return payload


def client_claims(token_claims: Mapping[str, Any]) -> dict[str, Any]:
    """The client's claims a verified token carries: every claim whose name the dealer
    does not reserve."""
    return {name: value for name, value in token_claims.items() if name not in RESERVED}
