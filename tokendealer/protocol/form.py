"""Strict parsing of ``application/x-www-form-urlencoded`` request bodies.

RFC 6749 §3.2 and §4.4.2: the token request is form-encoded in UTF-8. §3.1:
"Request and response parameters MUST NOT be included more than once" and "Parameters
sent without a value MUST be treated as if they were omitted from the request."
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from tokendealer.protocol.errors import InvalidRequest

MAX_PARAMETERS = 32
#: Longest parameter value accepted; checked before any hashing or parsing of the value.
MAX_VALUE_LENGTH = 4096
FORM_TYPE = "application/x-www-form-urlencoded"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_form(body: bytes, *, max_value_length: int = MAX_VALUE_LENGTH) -> dict[str, str]:
    """Decode a form body; any malformed, repeated or oversized parameter is a 400."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("The request body must be URL-encoded ASCII.") from None
    # Nothing to decode (the common case): what parse_qsl does, without it.
    plain = "%" not in text and "+" not in text
    pairs = _split_plain(text) if plain else _parse_encoded(text)
    params: dict[str, str] = {}
    for name, value in pairs:
        if len(name) > 64 or len(value) > max_value_length:
            raise InvalidRequest("A parameter is too long.")
        if name in params:
            raise InvalidRequest("A parameter is repeated.")
        params[name] = value
    # "Parameters sent without a value MUST be treated as if they were omitted."
    return {name: value for name, value in params.items() if value != ""}


def _split_plain(text: str) -> list[tuple[str, str]]:
    """The pairs of a body with no escape (no ``%``, no ``+``), as ``parse_qsl`` gives
    them with ``keep_blank_values``: split on ``&``, empty pieces skipped, a piece with
    no ``=`` a name with an empty value. Refused past ``MAX_PARAMETERS`` pieces, as it
    counts them (empty ones too)."""
    if not text:
        return []
    if text.count("&") + 1 > MAX_PARAMETERS:
        raise InvalidRequest("Too many parameters.")
    pairs = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((name, value))
    return pairs


def _parse_encoded(text: str) -> list[tuple[str, str]]:
    """The pairs of a body with escapes, decoded as UTF-8 (``parse_qsl``)."""
    try:
        return parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMETERS,
        )
    except UnicodeDecodeError:
        raise InvalidRequest("A parameter is not valid UTF-8.") from None
    except ValueError:
        raise InvalidRequest("Too many parameters.") from None


def require_form(content_type: str | None) -> None:
    if media_type(content_type) != FORM_TYPE:
        raise InvalidRequest(f"The request body must be {FORM_TYPE}.")
