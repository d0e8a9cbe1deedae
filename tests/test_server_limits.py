"""The real servers enforce request-head limits and time out slow clients (issue 6)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServerProcess, run_server
from tokendealer.server import MAX_HEADER_BYTES, READ_TIMEOUT

pytestmark = pytest.mark.e2e


@pytest.fixture(name="server", scope="module", params=["uvicorn", "hypercorn"])
def _server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp(request.param)
    with run_server(workdir, server=request.param) as server:
        yield server


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT + 10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1024, 1024 * 1024])
def test_oversized_request_head_is_refused(server: ServerProcess, size: int) -> None:
    """A request head over the cap, just over or a megabyte, is answered 431 (never 2xx
    or 5xx) and the connection closed."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * size + b"\r\n\r\n")
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 431"), response[:200]


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
        trickle.settimeout(1.0)
        silent.settimeout(0.05)
        while time.monotonic() - started < READ_TIMEOUT + 8 and None in closed.values():
            if closed["trickle"] is None:
                try:
                    trickle.sendall(b"X")  # one header byte a second, never the end
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
        assert all(elapsed <= READ_TIMEOUT + 8 for elapsed in closed.values())
    finally:
        trickle.close()
        silent.close()
