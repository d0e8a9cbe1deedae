"""uvicorn's httptools protocol with the two guards it lacks.

uvicorn caps the request head only with its h11 parser (``h11_max_incomplete_event_size``)
and has no timeout for a request head that never completes: with httptools, a client
could send a megabyte of headers, or hold a connection open by sending a header byte now
and then (slowloris). This protocol, passed to uvicorn as ``http=``, adds:

* a request head (request line + headers) over ``max_head_bytes`` is answered 431 and the
  connection closed;
* a request head must be complete within ``head_timeout`` seconds of the connection
  opening or of the request's first byte, or the connection is closed;
* fields after a chunked body (trailers) are dropped: httptools reports them as headers,
  and uvicorn would add them to the request's, where ``Authorization`` or
  ``X-Forwarded-For`` would take effect unseen by a proxy that checks headers (RFC 9110
  §6.5.1: trailers are not to be merged into the header section);
* a request that is not HTTP/1.1 httptools can parse is answered 400 in the service's
  JSON error shape (uvicorn's own answer is plain text);
* a client that closes its sending side after its request (RFC 9112 §9.6: ``nc -N``,
  ``socat``) still gets its answer, then the connection is closed (uvicorn closed it at
  once, the answer lost).

Both come from the worker's settings (``TOKENDEALER_MAX_HEAD_BYTES``,
``TOKENDEALER_HEAD_TIMEOUT``), the environment its app reads too. Bodies are the app's
business (``max_body_bytes`` 413, ``body_timeout`` 408) and idle keep-alive connections
uvicorn's (``timeout_keep_alive``).

It also takes part in a graceful shutdown (``tokendealer.runner.uvicorn_server``):

* once the worker is stopping (``draining.stopping()``, from the stop signal on, delay
  included), every answer carries ``Connection: close`` and ends its connection, so
  keep-alive clients move to a new connection (through the load balancer, to another
  replica) between two requests rather than have one cut under a request;
* when the server stops accepting it calls ``shutdown()`` on each connection: a request
  in progress (even one whose head has only begun to arrive) is answered, then the
  connection closed; an idle connection is closed after ``IDLE_GRACE`` seconds unless a
  request arrives meanwhile, which is answered. Closing an idle connection at once
  would reset a request a client sent just before the stop and still on its way (or
  in the socket's buffer, unread), and the client could not know whether it was served.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import secrets
import struct
import termios

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokendealer import draining
from tokendealer.settings import Settings

#: Seconds a refused connection is drained before it is closed.
REFUSED_LINGER = 2.0
#: Seconds an idle connection stays open once the server stops accepting, for a request
#: already on its way; such a request is answered (with ``Connection: close``).
IDLE_GRACE = 0.5


def _refusal(status_line: bytes, description: str) -> tuple[bytes, bytes]:
    """The head (but for its request id and the blank line) and the body of an answer
    the protocol writes itself, in the service's error shape; it ends the connection."""
    body = json.dumps({"error": "invalid_request", "error_description": description}).encode()
    head = (
        status_line + b"\r\n"
        b"content-type: application/json\r\n"
        b"cache-control: no-store\r\n"
        b"connection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
    )
    return head, body


_HEAD_431, _BODY_431 = _refusal(
    b"HTTP/1.1 431 Request Header Fields Too Large", "The request headers are too large."
)
_HEAD_400, _BODY_400 = _refusal(b"HTTP/1.1 400 Bad Request", "The request is not valid HTTP/1.1.")


def response_431() -> bytes:
    """The 431 answer, with a request id of its own as every response has (the request's
    own cannot be trusted: its head was not read to the end)."""
    return _HEAD_431 + _request_id() + _BODY_431


def response_400() -> bytes:
    """The answer to bytes httptools cannot parse as a request, with a request id."""
    return _HEAD_400 + _request_id() + _BODY_400


def _request_id() -> bytes:
    return b"x-request-id: " + secrets.token_hex(16).encode() + b"\r\n\r\n"


@functools.cache
def _head_limits() -> tuple[int, float]:
    """This worker's ``max_head_bytes`` and ``head_timeout``, read once."""
    settings = Settings.from_env()
    return settings.max_head_bytes, settings.head_timeout


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Counts the bytes of a request head still incomplete after each read, and times it.

    A head that completes within one read (uvicorn reads at most 64 KiB) is measured
    exactly by the app instead (``tokendealer.http.app``), so memory stays bounded by
    the cap plus one read, at the cost of one check per read rather than per header.
    """

    _in_head = True
    _refused = False
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None
    #: When the connection's last response completed, while no request has arrived since.
    _idle_since: float | None = None
    _idle_timer: asyncio.TimerHandle | None = None
    #: The client closed its sending side: no request follows the one being answered.
    _peer_done = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_idle_timer()
        self._idle_since = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    # -- the keep-alive timeout, with one timer per connection rather than per request --
    #
    # uvicorn arms a timer when a response completes and cancels it when the next request
    # arrives: two heap operations and a handle per request. Here the timer armed after a
    # response is left running; the request that arrives marks the connection busy, and
    # when the timer fires it closes the connection only if it has been idle for the whole
    # keep-alive timeout since its last response, else waits for the rest of it.

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this when bytes arrive; a connection is busy only once a request
        # begins (on_message_begin). Bytes that begin none (CRLFs between requests, which
        # the parser skips, or the rest of a body answered early) must not keep an idle
        # connection open: no head timer runs for them.
        pass

    def on_response_complete(self) -> None:
        # uvicorn's own (0.55), but for the arming of the keep-alive timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._peer_done:
            self.transport.close()  # answered; nothing more can come
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # busy: armed again when its response completes
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused head: read and dropped
        super().data_received(data)
        if self._in_head and not self._refused and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > _head_limits()[0]:
                self._refuse()
            else:
                # A head begun in this read and still incomplete: its time starts now.
                # (One that completes within the read, the usual case, costs no timer.)
                self._arm_head_timer()

    def eof_received(self) -> bool | None:  # type: ignore[override] # asyncio's signature
        # The client sent all it will send. A request read whole and not yet answered is
        # answered before the connection closes (True keeps the transport's writing side
        # open); otherwise (idle, or a request cut short) the transport closes now.
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._peer_done = True
            return True
        return None

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to bytes httptools cannot parse, in the service's error shape.
        self._refuse(response_400())

    def _refuse(self, response: bytes | None = None) -> None:
        """Answer 431 (or ``response``) and end the connection gracefully: closing at
        once with the client's bytes unread would reset the connection and lose it."""
        self._refused = True
        self._cancel_head_timer()
        self.transport.write(response_431() if response is None else response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSED_LINGER, self.transport.close)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._idle_since = None  # busy until its response completes
        self._cancel_idle_timer()  # a request begins on a connection about to close
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()
        # The scope holds the list of the head's fields; httptools reports a chunked
        # body's trailer fields through on_header too, which appends to this list: a new
        # one takes them, and they are dropped with it (RFC 9110 §6.5.1).
        self.headers = []
        if draining.stopping() and self.cycle is not None and self.cycle.scope is self.scope:
            # Answered with Connection: close, and the connection closed after it.
            self.cycle.keep_alive = False

    def shutdown(self) -> None:
        """The server stops: answer what has arrived, then close (uvicorn's own closes an
        idle connection at once, with a request possibly unread in its buffer)."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # answered, then closed
        elif not self.transport.is_closing():
            # Idle, or a request head still arriving (it is answered once complete, or
            # closed by the head timer): closed after the grace unless a request begins.
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(IDLE_GRACE, self._close_if_idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing():
            return
        receiving = self._in_head and self._head_bytes > 0
        busy = self.cycle is not None and not self.cycle.response_complete
        if not receiving and not busy and not _unread_bytes(self.transport):
            self.transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(_head_limits()[1], self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes received on the connection's socket that the loop has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    count: int = struct.unpack("i", raw)[0]
    return count
