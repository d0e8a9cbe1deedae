"""One HTTP request at the ASGI level, for the routes served without Quart.

``Exchange`` reads what those routes need from the ASGI scope and ``receive``: a header,
the client address, and the body under the same size cap (413) and time limit (408) that
the Quart app applies. ``head_size`` is the request-head measure both kinds of route use
for the 431 guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from tokendealer.http.ratelimit import scope_address
from tokendealer.http.responses import Reply

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ClientDisconnected(Exception):
    """The client went away before its request was read: there is no one to answer."""


def head_size(scope: Scope) -> int:
    """Bytes of the request head as received: path, query string and header lines."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size


class Exchange:
    __slots__ = ("_body_timeout", "_headers", "_max_body", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, max_body: int, body_timeout: float) -> None:
        self.scope = scope
        self.receive = receive
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._headers: dict[bytes, list[bytes]] | None = None

    def header_values(self, name: bytes) -> list[str]:
        """Every value of the header ``name`` (lower case), decoded as Latin-1."""
        if self._headers is None:
            headers: dict[bytes, list[bytes]] = {}
            for key, value in self.scope["headers"]:
                headers.setdefault(key.lower(), []).append(value)
            self._headers = headers
        return [value.decode("latin-1") for value in self._headers.get(name, ())]

    def header(self, name: bytes) -> str | None:
        """The first value of the header ``name`` (lower case), if any."""
        values = self.header_values(name)
        return values[0] if values else None

    def address(self, trusted_proxies: int) -> str:
        """The client address to limit (see ``ratelimit.client_address``)."""
        return scope_address(self.scope, trusted_proxies)

    async def body(self) -> bytes:
        """The whole body: 413 past the size cap, 408 past the time limit."""
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise RequestEntityTooLarge()
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnected()
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > self._max_body:
                        raise RequestEntityTooLarge()
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError:
            raise RequestTimeout() from None


async def send_reply(send: Send, reply: Reply) -> None:
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": reply.asgi_headers()}
    )
    await send({"type": "http.response.body", "body": reply.body})
