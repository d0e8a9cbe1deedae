"""One HTTP request at the ASGI level: its head, its body, its client address.

``Exchange`` reads what the OAuth pipeline needs from the ASGI scope and ``receive``: a
header, the client address, and the body under the size cap (413) and time limit (408)
of the settings. ``check_head`` is the request-head guard every route goes through, the
Quart ones included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping, MutableMapping
from typing import Any

from werkzeug.exceptions import (
    BadRequest,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
)
from werkzeug.exceptions import (
    NotImplemented as TransferCodingNotImplemented,
)

from tokendealer.http.responses import Reply
from tokendealer.ratelimit.gcra import client_address

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ClientDisconnected(Exception):
    """The client went away before its request was read: there is no one to answer."""


def check_head(scope: Scope, max_head_bytes: int) -> None:
    """Refuse a request head that no route should read, whichever server parsed it.

    * over ``max_head_bytes`` (path, query string and header lines): 431. The uvicorn
      protocol refuses such heads itself; Hypercorn's h11 cap only bounds an incomplete
      head, so a large head arriving in one piece would pass without this;
    * both Content-Length and Transfer-Encoding: 400. httptools refuses that; h11
      (Hypercorn) accepts it, and a proxy that frames by Content-Length would then see
      another request boundary than this server (request smuggling). RFC 9112 §6.1: the
      server "MUST close the connection after responding to such a request", which the
      error reply asks for;
    * a transfer coding other than ``chunked`` alone (``gzip, chunked``): 501, which RFC
      9112 §6.1 asks of a server that does not understand a coding. httptools frames
      such a body by its chunks and would pass it on undecoded; a proxy that decodes it
      would see another body.
    """
    read_head(scope, max_head_bytes)


def read_head(scope: Scope, max_head_bytes: int) -> dict[bytes, list[bytes]]:
    """``check_head``'s checks, and the request's headers by lower-case name, in one pass
    (what ``Exchange`` reads its headers from)."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
    headers: dict[bytes, list[bytes]] = {}
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
        lowered = name.lower()
        values = headers.get(lowered)
        if values is None:
            headers[lowered] = [value]
        else:
            values.append(value)
    if size > max_head_bytes:
        raise RequestHeaderFieldsTooLarge()
    codings = headers.get(b"transfer-encoding")
    if codings is not None:
        if b"content-length" in headers:
            raise BadRequest()
        if [c.strip().lower() for value in codings for c in value.split(b",")] != [b"chunked"]:
            raise TransferCodingNotImplemented()
    return headers


def scope_address(scope: Scope, trusted_proxies: int) -> str:
    """The client address of an ASGI request (see ``ratelimit.gcra.client_address``)."""
    peer = scope.get("client")
    forwarded: list[str] = []
    if trusted_proxies:  # not even read when no proxy is trusted: it then proves nothing
        forwarded = [
            value.decode("latin-1")
            for name, value in scope["headers"]
            if name.lower() == b"x-forwarded-for"
        ]
    return client_address(peer[0] if peer else None, forwarded, trusted_proxies)


class Exchange:
    __slots__ = ("_body_timeout", "_headers", "_max_body", "receive", "scope")

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        max_body: int,
        body_timeout: float,
        headers: dict[bytes, list[bytes]],
    ) -> None:
        self.scope = scope
        self.receive = receive
        self._max_body = max_body
        self._body_timeout = body_timeout
        #: By lower-case name, as ``read_head`` returns them.
        self._headers = headers

    def header_values(self, name: bytes) -> list[str]:
        """Every value of the header ``name`` (lower case), decoded as Latin-1."""
        return [value.decode("latin-1") for value in self._headers.get(name, ())]

    def header(self, name: bytes) -> str | None:
        """The first value of the header ``name`` (lower case), if any."""
        values = self.header_values(name)
        return values[0] if values else None

    async def body(self) -> bytes:
        """The whole body: 413 past the size cap, 408 past the time limit.

        The time limit runs from the first wait for the body. A message the server
        already holds (a body that came with its head: the usual case) is taken without
        waiting, and so without arming the limit's timer."""
        if _declares_more(self.header(b"content-length"), self._max_body):
            raise RequestEntityTooLarge()
        chunks: list[bytes] = []
        size = 0
        deadline: float | None = None
        while True:
            waiting = self.receive().__await__()
            try:
                pending = waiting.send(None)
            except StopIteration as ready:
                message = ready.value
            else:
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + self._body_timeout
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await _Resumed(waiting, pending)
                except TimeoutError:
                    raise RequestTimeout() from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise RequestEntityTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Resumed:
    """An awaitable that goes on with an awaitable's iterator already started: ``first``
    is what it yielded (the future it waits for). Values sent and exceptions thrown in
    (a cancellation, the time limit's) are passed on to it, as ``await`` would."""

    __slots__ = ("_first", "_waiting")

    def __init__(self, waiting: Generator[Any, Any, Any], first: Any) -> None:
        self._waiting = waiting
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        waiting, pending = self._waiting, self._first
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                waiting.close()
                raise
            except BaseException as thrown:  # passed on, as await does
                try:
                    pending = waiting.throw(thrown)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = waiting.send(sent)
                except StopIteration as done:
                    return done.value


def _declares_more(content_length: str | None, limit: int) -> bool:
    """Whether a Content-Length value declares more than ``limit`` bytes. Digits are
    counted first: ``int()`` refuses strings of over 4300 digits."""
    if content_length is None or not (content_length.isascii() and content_length.isdigit()):
        return False
    digits = content_length.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit


async def send_reply(send: Send, reply: Reply) -> None:
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": reply.asgi_headers()}
    )
    await send({"type": "http.response.body", "body": reply.body})
