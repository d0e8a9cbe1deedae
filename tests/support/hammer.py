"""Keep-alive clients hammering a real server over raw sockets, recording every request.

``hammer(host, port, request, clients=32, until=...)`` runs ``clients`` loops, each on its
own keep-alive connection: send ``request``, read the whole answer (status line, headers,
``Content-Length`` body), send the next one; a new connection when the server answered
``Connection: close`` or closed it. Each request becomes a ``Sent``: when its last byte
was written (``time.time()``, comparable with the server's log timestamps) and what came
back, classified without retrying anything:

* ``complete``: a status and the whole body;
* ``reset``: the connection was reset (``ECONNRESET``/``EPIPE``) before the answer;
* ``empty``: the server closed the connection without a byte of an answer;
* ``partial``: the answer stopped in the middle.

A loop stops once connecting is refused (the server stopped listening) or ``until()``
is true. Raw sockets, not an HTTP client, so that nothing is retried or hidden.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

OUTCOMES = ("complete", "reset", "empty", "partial")


@dataclass(frozen=True)
class Sent:
    """One request: when it was sent, and what came back."""

    sent_at: float
    outcome: str
    status: int | None = None
    connection_close: bool = False


@dataclass
class Hammered:
    """Everything the clients did."""

    requests: list[Sent] = field(default_factory=list)
    connects: int = 0
    refused: int = 0

    def outcomes(self, before: float | None = None) -> dict[str, int]:
        """How many requests (sent before ``before``, if given) ended each way."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for sent in self.requests:
            if before is None or sent.sent_at < before:
                counts[sent.outcome] += 1
        return counts

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for sent in self.requests:
            if sent.status is not None:
                counts[sent.status] = counts.get(sent.status, 0) + 1
        return counts


class _Incomplete(Exception):
    def __init__(self, received: int) -> None:
        self.received = received


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one answer: (status, whether it says ``Connection: close``)."""
    head = b""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise _Incomplete(len(exc.partial)) from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    try:
        await reader.readexactly(int(headers.get("content-length", "0")))
    except asyncio.IncompleteReadError:
        raise _Incomplete(len(head) + 1) from None
    return status, headers.get("connection") == "close"


async def _client(
    host: str, port: int, request: bytes, until: Callable[[], bool], result: Hammered
) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while not until():
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:  # refused: the server no longer listens
                    result.refused += 1
                    return
                result.connects += 1
            assert reader is not None
            try:
                writer.write(request)
                await writer.drain()
            except OSError:
                # The server closed the connection before this request was written
                # whole: nothing was sent, as far as the client can know. Reconnect.
                writer.close()
                writer = None
                continue
            sent_at = time.time()
            try:
                status, close = await _answer(reader)
            except _Incomplete as exc:
                outcome = "partial" if exc.received else "empty"
                result.requests.append(Sent(sent_at, outcome))
                writer.close()
                writer = None
                continue
            except (ConnectionResetError, BrokenPipeError):
                result.requests.append(Sent(sent_at, "reset"))
                writer.close()
                writer = None
                continue
            result.requests.append(Sent(sent_at, "complete", status, close))
            if close:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def hammer(
    host: str,
    port: int,
    request: bytes,
    *,
    clients: int,
    until: Callable[[], bool],
    into: Hammered | None = None,
) -> Hammered:
    """Run ``clients`` keep-alive loops until each is refused or ``until()`` is true;
    their record (``into``, which a caller may watch fill, or a new one)."""
    result = into if into is not None else Hammered()
    await asyncio.gather(*(_client(host, port, request, until, result) for _ in range(clients)))
    return result


def token_request(host: str, port: int, authorization: str) -> bytes:
    """A client-credentials token request, keep-alive, as raw bytes."""
    body = b"grant_type=client_credentials"
    return (
        f"POST /oauth/token HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: {authorization}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
