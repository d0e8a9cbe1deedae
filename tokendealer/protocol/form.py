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
    try:
        pairs = parse_qsl(
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
    params: dict[str, str] = {}
    for name, value in pairs:
        if len(name) > 64 or len(value) > max_value_length:
            raise InvalidRequest("A parameter is too long.")
        if name in params:
            raise InvalidRequest("A parameter is repeated.")
        params[name] = value
    # "Parameters sent without a value MUST be treated as if they were omitted."
    return {name: value for name, value in params.items() if value != ""}


def require_form(content_type: str | None) -> None:
    if media_type(content_type) != FORM_TYPE:
        raise InvalidRequest(f"The request body must be {FORM_TYPE}.")
