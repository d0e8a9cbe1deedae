"""What a form request presents: its parameters and client credentials, parsed once.

The per-client rate limit needs the presented client id before the request is answered,
and answering needs the same form and credentials; ``Presented`` holds both, parsed
once, and keeps a parse error to be raised when the part is asked for, so a malformed
request is still counted (by address) before it is refused.

The Quart routes get theirs with ``presented()`` (kept on ``quart.g`` for the request);
the token endpoint, served without Quart, builds its own with ``Presented.parse``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from quart import g, request
from werkzeug.exceptions import RequestTimeout

from tokendealer.protocol.errors import InvalidRequest, OAuthError
from tokendealer.protocol.form import MAX_VALUE_LENGTH, parse_form, require_form
from tokendealer.service.client_auth import Credentials, credentials_from


@dataclass(frozen=True)
class Presented:
    _params: dict[str, str] | OAuthError
    _credentials: Credentials | OAuthError

    @classmethod
    def parse(
        cls,
        content_type: str | None,
        authorizations: Sequence[str],
        body: bytes,
        *,
        max_value_length: int = MAX_VALUE_LENGTH,
    ) -> Presented:
        """``authorizations``: every Authorization header of the request. More than one
        is refused: which of them counts would depend on who reads it (a proxy may take
        another than this server does)."""
        try:
            require_form(content_type)
            params = parse_form(body, max_value_length=max_value_length)
        except OAuthError as exc:
            return cls(exc, exc)
        credentials: Credentials | OAuthError
        try:
            if len(authorizations) > 1:
                raise InvalidRequest("Send one Authorization header, not several.")
            credentials = credentials_from(authorizations[0] if authorizations else None, params)
        except OAuthError as exc:
            credentials = exc
        return cls(params, credentials)

    @property
    def client_id(self) -> str | None:
        """The client id the request presents, if its form and credentials parse."""
        if isinstance(self._credentials, Credentials):
            return self._credentials.client_id
        return None

    def params(self) -> dict[str, str]:
        """The form's parameters; a malformed form raises its error (400)."""
        if isinstance(self._params, OAuthError):
            raise self._params
        return self._params

    def credentials(self) -> Credentials:
        """The one client authentication method the request used (RFC 6749 §2.3.1);
        malformed or conflicting credentials raise their error (400 or 401)."""
        if isinstance(self._credentials, OAuthError):
            raise self._credentials
        return self._credentials


async def read_body() -> bytes:
    """The request body, waited for at most ``BODY_TIMEOUT`` seconds (then 408).

    ``asyncio.timeout`` rather than Quart's ``get_data``, whose ``asyncio.wait_for``
    creates a task per request. ``MAX_CONTENT_LENGTH`` still applies: the body raises
    413 once it grows past it.
    """
    try:
        async with asyncio.timeout(request.body_timeout):
            body: bytes = await request.body
            return body
    except TimeoutError:
        raise RequestTimeout() from None


async def presented() -> Presented:
    """The current Quart request's ``Presented``, parsed on first use.

    These routes (introspection, revocation) take a ``token`` that may be any size up to
    the body cap: one too large to be ours is an inactive token, not a malformed request.
    """
    cached: Presented | None = g.get("_td_presented")
    if cached is None:
        body = await read_body()
        cached = Presented.parse(
            request.content_type,
            request.headers.getlist("Authorization"),
            body,
            max_value_length=len(body),
        )
        g._td_presented = cached
    return cached


async def read_form() -> dict[str, str]:
    return (await presented()).params()


async def presented_credentials() -> Credentials:
    return (await presented()).credentials()
