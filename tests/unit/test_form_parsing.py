"""The form parser's plain-body path (no escapes) answers exactly what ``parse_qsl``
answers, for every body: the parameters, or the same 400."""

from __future__ import annotations

import itertools
import random
from urllib.parse import parse_qsl

import pytest

from tokendealer.protocol.errors import InvalidRequest
from tokendealer.protocol.form import MAX_PARAMETERS, MAX_VALUE_LENGTH, parse_form


def reference(body: bytes) -> dict[str, str] | str:
    """The parser as it was, through ``parse_qsl`` alone: the parameters or the error."""
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMETERS,
        )
    except UnicodeDecodeError:
        return "decode"
    except ValueError:
        return "Too many parameters."
    params: dict[str, str] = {}
    for name, value in pairs:
        if len(name) > 64 or len(value) > MAX_VALUE_LENGTH:
            return "A parameter is too long."
        if name in params:
            return "A parameter is repeated."
        params[name] = value
    return {name: value for name, value in params.items() if value}


def parsed(body: bytes) -> dict[str, str] | str:
    try:
        return parse_form(body)
    except InvalidRequest as error:
        description = error.description or ""
        return "decode" if "UTF-8" in description or "ASCII" in description else description


PLAIN = [
    b"",
    b"&",
    b"&&&",
    b"=",
    b"==",
    b"a",
    b"a=",
    b"=a",
    b"a=b=c",
    b"a=1&a=2",
    b"a=1&&b=2&",
    b"grant_type=client_credentials&scope=read",
    b"a=&b=1",
    b"&" * (MAX_PARAMETERS - 1),
    b"&" * MAX_PARAMETERS,
    b"&".join(b"p%d=1" % i for i in range(MAX_PARAMETERS)),
    b"&".join(b"p%d=1" % i for i in range(MAX_PARAMETERS + 1)),
    b"n" * 65 + b"=1",
    b"n" * 64 + b"=1",
    b"v=" + b"x" * (MAX_VALUE_LENGTH + 1),
    b"v=" + b"x" * MAX_VALUE_LENGTH,
    b"a;b=1",
]


@pytest.mark.parametrize("body", PLAIN)
def test_plain_bodies_parse_as_parse_qsl_parses_them(body: bytes) -> None:
    assert parsed(body) == reference(body)


def test_random_bodies_parse_as_parse_qsl_parses_them() -> None:
    """Bodies drawn from the characters that matter (with and without escapes: both
    paths), thousands of them, seeded so that a failure repeats."""
    pieces = [b"a", b"b", b"=", b"&", b"%41", b"+", b"%", b"%zz", b"%C3%A9", b"%FF", b";", b""]
    chooser = random.Random(16)  # noqa: S311  # nosec B311 - test data, not secrets
    for length in itertools.chain(range(1, 8), [12] * 20):
        for _ in range(300):
            body = b"".join(chooser.choice(pieces) for _ in range(length))
            assert parsed(body) == reference(body), body
