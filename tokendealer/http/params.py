"""What a form request presents, parsed once per request.

The per-client rate limit needs the presented client id before the handler runs, and
the handler needs the same form and credentials: both call these, so the body is read,
parsed and its credentials decoded once (results, and errors, are kept on ``quart.g``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from quart import g, request
from werkzeug.exceptions import RequestTimeout

from tokendealer.client_auth import Credentials, credentials_from
from tokendealer.errors import OAuthError
from tokendealer.form import parse_form, require_form

T = TypeVar("T")


async def _once(name: str, compute: Callable[[], Awaitable[T]]) -> T:
    """``compute()`` once per request; a raised OAuthError is raised again on later calls."""
    cached: Any = g.get(name)
    if cached is None:
        try:
            cached = await compute()
        except OAuthError as exc:
            cached = exc
        setattr(g, name, cached)
    if isinstance(cached, OAuthError):
        raise cached
    return cached  # type: ignore[no-any-return]


async def read_body() -> bytes:
    """The request body, waited for at most ``BODY_TIMEOUT`` seconds (then 408).

    ``asyncio.timeout`` rather than Quart's ``get_data``, whose ``asyncio.wait_for``
    creates a task per request on the token endpoint's hot path. ``MAX_CONTENT_LENGTH``
    still applies: the body raises 413 once it grows past it.
    """
    try:
        async with asyncio.timeout(request.body_timeout):
            body: bytes = await request.body
            return body
    except TimeoutError:
        raise RequestTimeout() from None


async def read_form() -> dict[str, str]:
    async def parse() -> dict[str, str]:
        require_form(request.content_type)
        return parse_form(await read_body())

    return await _once("_td_params", parse)


async def presented_credentials() -> Credentials:
    """The one client authentication method the request used (RFC 6749 §2.3.1)."""

    async def parse() -> Credentials:
        return credentials_from(request.headers.get("Authorization"), await read_form())

    return await _once("_td_credentials", parse)
