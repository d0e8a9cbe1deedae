"""The real servers enforce request-head limits and time out slow clients (issue 6)."""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import ServerProcess, run_server
from tokendealer.settings import Settings

#: The limits, shrunk through the settings so that slow clients time out quickly. Hypercorn
#: reads in whole seconds (its read timeout is the head timeout rounded up), and closes a
#: connection whose request head has not completed when the keep-alive timeout, which
#: starts while it waits for a request, runs out: that one is shrunk as well.
READ_TIMEOUT = 1
MAX_HEADER_BYTES = Settings().max_head_bytes
LIMITS = {
    "TOKENDEALER_HEAD_TIMEOUT": str(READ_TIMEOUT),
    "TOKENDEALER_BODY_TIMEOUT": str(READ_TIMEOUT),
    # Longer than the head timeout: a trickled head must be cut by the head timeout,
    # not by the idle keep-alive timer.
    "TOKENDEALER_KEEP_ALIVE": str(KEEP_ALIVE := READ_TIMEOUT * 4),
}
#: A trickling client sends its next byte this soon, well inside the read timeout, so that
#: no per-read timeout is what stops it.
TRICKLE_INTERVAL = READ_TIMEOUT / 4
#: How much later than its timeout a slow client may be disconnected, on a busy machine.
SLACK = 8

pytestmark = pytest.mark.e2e


@pytest.fixture(name="server", scope="module", params=["uvicorn", "hypercorn"])
def _server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp(request.param)
    with run_server(workdir, server=request.param, env=LIMITS) as server:
        yield server


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT + SLACK)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1024, 1024 * 1024])
@pytest.mark.parametrize("request_line", [b"GET /healthz", b"POST /oauth/token"])
def test_oversized_request_head_is_refused(
    server: ServerProcess, size: int, request_line: bytes, request: pytest.FixtureRequest
) -> None:
    """A request head over the cap, just over or a megabyte, is answered 431 (never 2xx
    or 5xx) and the connection closed: on a Quart route and on the token endpoint,
    which is served in front of Quart."""
    with _connect(server) as sock:
        try:
            sock.sendall(
                request_line + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"X-Padding: " + b"a" * size + b"\r\n\r\n"
            )
            response = _read_all(sock)
        except (BrokenPipeError, ConnectionResetError):
            # Hypercorn answers 431 and closes at once, while the client is still
            # sending: the rest of the megabyte then meets a reset, which can discard the
            # answer before it is read (uvicorn drains first, see uvicorn_protocol).
            assert request.node.callspec.params["server"] == "hypercorn"
            assert size > MAX_HEADER_BYTES + 1024
            return
    assert response.startswith(b"HTTP/1.1 431"), response[:200]
    if request.node.callspec.params["server"] == "uvicorn":  # Hypercorn answers it itself
        assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", response), response[:300]


def test_keep_alive_connection_serves_several_requests(server: ServerProcess) -> None:
    """The guards leave ordinary keep-alive traffic alone: three requests, one connection."""
    with _connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b'"ok"' not in data:
                data += sock.recv(4096)
            assert data.startswith(b"HTTP/1.1 200")


def test_slow_and_silent_clients_are_disconnected(server: ServerProcess) -> None:
    """A client that trickles its request head, and one that sends nothing, are both
    disconnected within the read timeout (plus slack), not held open indefinitely."""
    trickle, silent = _connect(server), _connect(server)
    try:
        trickle.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = {"trickle": None, "silent": None}
        trickle.settimeout(TRICKLE_INTERVAL)
        silent.settimeout(0.01)
        while time.monotonic() - started < READ_TIMEOUT + SLACK and None in closed.values():
            if closed["trickle"] is None:
                try:
                    trickle.sendall(b"X")  # a header byte now and then, never the end
                    if trickle.recv(4096) == b"":
                        closed["trickle"] = time.monotonic() - started
                except TimeoutError:
                    pass
                except OSError:
                    closed["trickle"] = time.monotonic() - started
            if closed["silent"] is None:
                try:
                    if silent.recv(4096) == b"":
                        closed["silent"] = time.monotonic() - started
                except TimeoutError:
                    pass
                except OSError:
                    closed["silent"] = time.monotonic() - started
        assert None not in closed.values(), closed
        assert all(elapsed <= READ_TIMEOUT + SLACK for elapsed in closed.values())
        # Cut by the head timeout, well before the idle keep-alive timer could have.
        assert closed["trickle"] < KEEP_ALIVE - 1, closed
    finally:
        trickle.close()
        silent.close()


# Hypercorn closes an idle connection by its read timeout (the head timeout) instead.
@pytest.mark.parametrize("server", ["uvicorn"], indirect=True)
def test_an_idle_connection_is_closed_a_keep_alive_timeout_after_its_last_response(
    server: ServerProcess,
) -> None:
    """The keep-alive timeout counts from a connection's last response: a second request
    sent before the first response's timeout ran out keeps the connection open for a
    whole timeout after its own response, and then it is closed."""

    def healthz(sock: socket.socket) -> None:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b'"ok"' not in data:
            chunk = sock.recv(4096)
            assert chunk, f"closed before the answer: {data[:300]!r}"
            data += chunk

    with _connect(server) as sock:
        healthz(sock)
        time.sleep(KEEP_ALIVE * 0.6)
        healthz(sock)  # the first response's timeout would run out 0.4 of it from now
        answered = time.monotonic()
        assert sock.recv(4096) == b""  # blocks until the server closes
        idle = time.monotonic() - answered
    assert KEEP_ALIVE - 0.5 <= idle <= KEEP_ALIVE + SLACK, idle


def _trickle_until_closed(sock: socket.socket, data: bytes, within: float) -> float | None:
    """Send ``data`` every ``TRICKLE_INTERVAL`` until the server closes the connection:
    the seconds that took, or None if it was still open after ``within`` seconds."""
    started = time.monotonic()
    sock.settimeout(TRICKLE_INTERVAL)
    while time.monotonic() - started < within:
        try:
            sock.sendall(data)
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


@pytest.mark.parametrize(
    "after",
    [
        # Line breaks, which the parser skips before a request line.
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n"),
        # The rest of a body answered before it was read (405 for the method).
        (b"GET /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b"x"),
    ],
    ids=["line-breaks", "answered-body"],
)
def test_bytes_that_begin_no_request_do_not_keep_a_connection_open(
    server: ServerProcess, after: tuple[bytes, bytes]
) -> None:
    """After a response, bytes that begin no request, sent now and then, do not hold
    the connection: it is closed within the keep-alive timeout (plus slack)."""
    request, trickle = after
    with _connect(server) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        closed_after = _trickle_until_closed(sock, trickle, KEEP_ALIVE + SLACK)
    assert closed_after is not None, f"still open {KEEP_ALIVE + SLACK} s after the answer"


def test_a_later_request_head_that_trickles_is_cut_too(server: ServerProcess) -> None:
    """The head timer also times a request that follows another on a keep-alive
    connection: its head, begun in one read and never completed, is cut by the head
    timeout (the idle keep-alive timer stops once bytes arrive)."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b'"ok"' not in data:
            data += sock.recv(4096)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed_after = _trickle_until_closed(sock, b"X", READ_TIMEOUT + SLACK)
    assert closed_after is not None, "a trickled second head kept its connection open"
    assert closed_after < KEEP_ALIVE - 1, closed_after


def test_a_request_that_arrives_in_parts_within_the_limits_is_answered(
    server: ServerProcess,
) -> None:
    """A head and a body each split over two reads with a pause between them, well
    inside the limits, are read whole: the token request without credentials is answered
    401 invalid_client (a truncated body would be an unsupported grant type, 400)."""
    head = (
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n"
    )
    with _connect(server) as sock:
        for part in (head[:20], head[20:] + b"grant_type=client_", b"credentials"):
            sock.sendall(part)
            time.sleep(TRICKLE_INTERVAL)
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 401"), response[:300]
    assert b'"error":"invalid_client"' in response


TOKEN_HEAD = (
    b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
)


@pytest.mark.parametrize("path", [b"/oauth/token", b"/verify_token"])
def test_body_that_never_completes_is_408_then_closed(server: ServerProcess, path: bytes) -> None:
    """A request whose body trickles in (a byte every quarter of the read timeout, well
    inside the server's read timeout, so that one never fires) is
    answered 408 with the JSON error once the body time limit passes, and the connection
    is then closed although the client keeps trickling: on the token endpoint (served in
    front of Quart) and on a Quart route."""
    with _connect(server) as sock:
        sock.sendall(TOKEN_HEAD.replace(b"/oauth/token", path) + b"grant_type")
        started = time.monotonic()
        sock.settimeout(TRICKLE_INTERVAL)
        response = b""
        closed_at = None
        while time.monotonic() - started < READ_TIMEOUT + SLACK + 4:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                try:
                    sock.sendall(b"_")
                except OSError:
                    closed_at = time.monotonic()
                    break
                continue
            except OSError:
                closed_at = time.monotonic()
                break
            if not chunk:
                closed_at = time.monotonic()
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 408"), response[:300]
    assert b'"error":"invalid_request"' in response
    assert closed_at is not None, "the connection stayed open after the 408"
    assert READ_TIMEOUT / 2 <= closed_at - started <= READ_TIMEOUT + SLACK


@pytest.mark.parametrize("path", [b"/oauth/token", b"/verify_token"])
def test_content_length_and_transfer_encoding_together_are_refused(
    server: ServerProcess, path: bytes
) -> None:
    """Both framings at once (the request-smuggling setup) are refused with 400 and the
    connection closed, so a request hidden behind them is never answered (RFC 9112 §6.1:
    the server "MUST close the connection after responding to such a request")."""
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(5 + len(smuggled)).encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
        )
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 400"), response[:300]
    assert response.count(b"HTTP/1.1 ") == 1, response[:600]


@pytest.mark.parametrize("path", [b"/oauth/token", b"/verify_token"])
def test_content_length_of_thousands_of_digits_is_refused(
    server: ServerProcess, path: bytes
) -> None:
    """A Content-Length too long for int() (over 4300 digits) is refused (413, or 400 by
    the server's own parser), never a 500."""
    with _connect(server) as sock:
        sock.sendall(
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1" + b"0" * 5000 + b"\r\n\r\nabcde"
        )
        response = _read_all(sock)
    status = response.split(b"\r\n", 1)[0]
    # Hypercorn's h11 refuses the header itself (400); uvicorn passes it on (413).
    assert status.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400")), response[:300]
    assert "unhandled_error" not in server.log()


def test_client_gone_mid_body_leaves_the_server_serving(server: ServerProcess) -> None:
    """Clients that hang up half way through a token request's body get no answer but a
    400 at most, cost no error in the log, and the server goes on answering token
    requests."""
    for _ in range(5):
        with _connect(server) as sock:
            sock.sendall(TOKEN_HEAD + b"grant_type=client_")
            # Hang up (the FIN that close() sends), and read until the server closes its end
            # too: then it is done with this request. It may answer the truncated request
            # on the half still open (Hypercorn's h11 does, 400), never with a 5xx.
            sock.shutdown(socket.SHUT_WR)
            answer = _read_all(sock)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    with _connect(server) as sock:
        sock.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n"
            b"grant_type=client_credentials"
        )
        response = _read_all(sock)
    # No credentials: the complete request is answered, as RFC 6749 §5.2 says.
    assert response.startswith(b"HTTP/1.1 401"), response[:300]
    assert "unhandled_error" not in server.log()
    assert "Traceback" not in server.log()


def _basic(client_id: str, secret: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{client_id}:{secret}".encode())


def test_trailer_fields_are_not_request_headers(server: ServerProcess) -> None:
    """Credentials sent only as a trailer field after a chunked body do not authenticate
    (RFC 9110 §6.5.1: trailer fields are not merged into the header section): a proxy
    that checks or sets headers never sees them. httptools reports trailers as headers,
    and uvicorn added them to the request's."""
    name = "trailer-" + secrets.token_hex(4)
    secret = server.add_client(name)
    body = b"grant_type=client_credentials"
    with _connect(server) as sock:
        sock.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n"
            b"Authorization: " + _basic(name, secret) + b"\r\n\r\n"
        )
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 401"), response[:300]
    assert b'"error":"invalid_client"' in response
    # The same credentials in the header section get a token: the request is otherwise fine.
    with _connect(server) as sock:
        sock.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Authorization: " + _basic(name, secret) + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        assert _read_all(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"identity, chunked", b"CHUNKED"])
def test_a_transfer_coding_other_than_chunked_is_501(server: ServerProcess, coding: bytes) -> None:
    """RFC 9112 §6.1: a server that does not understand a transfer coding answers 501;
    passing a gzip-coded body on undecoded would read another body than a proxy that
    decodes it. ``chunked`` in any case is the one coding (RFC 9112 §7: case-insensitive)."""
    body = b"grant_type=client_credentials"
    with _connect(server) as sock:
        sock.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: "
            + coding
            + b"\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        response = _read_all(sock)
    expected = b"HTTP/1.1 401" if coding == b"CHUNKED" else b"HTTP/1.1 501"
    assert response.startswith(expected), response[:300]


@pytest.mark.parametrize("server", ["uvicorn"], indirect=True)
@pytest.mark.parametrize(
    "garbage", [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\r\nA\0: b\r\n\r\n"]
)
def test_what_is_no_http_request_gets_a_json_400_and_a_json_log_line(
    server: ServerProcess, garbage: bytes
) -> None:
    """Bytes httptools cannot parse are answered 400 in the service's error shape (with
    a request id, as every answer), and uvicorn's warning about them is a JSON line of
    the log like every other, not ``WARNING:  Invalid HTTP request received.``"""
    with _connect(server) as sock:
        sock.sendall(garbage)
        response = _read_all(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), response[:300]
    assert b"\r\ncontent-type: application/json" in head
    assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}", head), head
    assert json.loads(body)["error"] == "invalid_request"
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert any("Invalid HTTP request" in line for line in lines)
    for line in lines:
        assert isinstance(json.loads(line), dict), line


@pytest.mark.parametrize("path", [b"GET /healthz", b"POST /oauth/token"])
def test_a_client_that_closes_its_sending_side_gets_its_answer(
    server: ServerProcess, path: bytes
) -> None:
    """RFC 9112 §9.6: a client may close its sending side once its request is sent (as
    ``nc -N`` does) and read the answer; then the connection closes. uvicorn closed it
    at once, losing the answer of any request that awaited something."""
    name = "half-" + secrets.token_hex(4)
    secret = server.add_client(name)
    body = b"grant_type=client_credentials"
    for _ in range(3):
        with _connect(server) as sock:
            sock.sendall(
                path + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Authorization: " + _basic(name, secret) + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            sock.shutdown(socket.SHUT_WR)
            response = _read_all(sock)
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
