"""Graceful shutdown (issue 14): a SIGTERM to ``tokendealer serve`` turns ``/readyz`` 503,
keeps serving for ``TOKENDEALER_SHUTDOWN_DELAY``, stops accepting, finishes the requests
in flight within ``TOKENDEALER_SHUTDOWN_TIMEOUT``, and exits 0, logging each phase.

Real ``serve`` processes, started together by one module fixture (a cold start is
seconds of imports, mostly CPU: two at a time); each test stops its own. The signal goes to
the parent only, as Kubernetes or ``docker stop`` send it (the supervisor passes it on to
its workers). The load is 32 keep-alive
clients on raw sockets (``tests.support.hammer``): nothing retried, every request's fate
recorded with the time it was sent, compared with the time the workers logged
``shutdown_stopped_accepting`` (just before their listener closed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support.environment import QuartClient
from tests.support.hammer import Hammered, hammer, token_request
from tests.support.openapi import SpecChecker, exchange, load_spec
from tests.support.servers import ServerProcess, run_server, wait_until
from tests.support.tokens import basic_credentials, post_token
from tokendealer import draining

#: 32 concurrent clients of one id from one address must not be limited: the per-client
#: limit, and the failed-authentication one (an attempt counts while it is checked).
UNLIMITED = {
    "TOKENDEALER_RATE_LIMIT": "1000000/minute",
    "TOKENDEALER_AUTH_FAILURE_LIMIT": "1000000/minute",
}
CLIENTS = 32
#: Requests answered before the signal: every client is busy by then.
WARM_UP = 4 * CLIENTS
#: Bound on the exit once signalled, without delay, timeout or hung request (the load
#: alone, on a loaded 2-core machine).
EXIT_BOUND = 8.0
PHASES = ("shutdown_started", "shutdown_stopped_accepting", "shutdown_complete")

DELAY = 0.6
TIMEOUT = 0.5
#: Beyond the delay and the timeout: a worker's stop, the app's shutdown and the exit.
MARGIN = 2.5
DELAYED = {
    **UNLIMITED,
    "TOKENDEALER_SHUTDOWN_DELAY": str(DELAY),
    "TOKENDEALER_SHUTDOWN_TIMEOUT": str(TIMEOUT),
    "TOKENDEALER_BODY_TIMEOUT": "60",
}
#: Each test's server: name -> (workers, server, environment).
SERVERS: dict[str, tuple[int, str, dict[str, str]]] = {
    "load-1": (1, "uvicorn", UNLIMITED),
    "load-2": (2, "uvicorn", UNLIMITED),
    "delayed-uvicorn": (2, "uvicorn", DELAYED),
    "delayed-hypercorn": (1, "hypercorn", DELAYED),
}


@pytest.fixture(name="servers", scope="module")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """Every server of the module, started two at a time, each with a client ``svc``
    (its secret in ``server.env["SECRET"]``); whatever a test left running is stopped."""
    workdirs = {name: tmp_path_factory.mktemp(name) for name in SERVERS}
    contexts: dict[str, AbstractContextManager[ServerProcess]] = {}
    started: dict[str, ServerProcess] = {}

    def start(name: str) -> None:
        workers, server, env = SERVERS[name]
        context = run_server(workdirs[name], workers=workers, server=server, env=env)
        started[name] = context.__enter__()
        contexts[name] = context

    try:
        with ThreadPoolExecutor(max_workers=len(SERVERS)) as pool:
            for future in [pool.submit(start, name) for name in SERVERS]:
                future.result()
        for server in started.values():
            server.env["SECRET"] = server.add_client("svc")
        yield started
    finally:
        for context in contexts.values():
            context.__exit__(None, None, None)


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def _phases(server: ServerProcess) -> dict[str, list[dict[str, Any]]]:
    """The shutdown lines of every worker, by event."""
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in _log_lines(server):
        event = str(entry.get("event", ""))
        if event.startswith("shutdown_"):
            found.setdefault(event, []).append(entry)
    return found


def _time(entry: dict[str, Any]) -> float:
    """A log line's timestamp (ISO 8601, UTC) as ``time.time()`` counts."""
    return datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()


def _signal(server: ServerProcess) -> float:
    """SIGTERM to the ``serve`` process (the parent) alone; when."""
    signalled = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    return signalled


async def _load_and_stop(server: ServerProcess, request: bytes) -> tuple[Hammered, int]:
    """Hammer the server, SIGTERM it once every client is busy, go on until it exits
    (each client stops once connecting is refused); the requests and the exit status."""
    result = Hammered()
    load = asyncio.create_task(
        hammer("127.0.0.1", server.port, request, clients=CLIENTS, until=lambda: False, into=result)
    )
    deadline = time.monotonic() + 30
    while len(result.requests) < WARM_UP:
        assert not load.done() and time.monotonic() < deadline, "the load did not get going"
        await asyncio.sleep(0.02)
    _signal(server)
    status = await asyncio.to_thread(server.proc.wait, EXIT_BOUND)
    await asyncio.wait_for(load, 10)
    return result, status


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_answers_every_request_sent_before_the_listener_closed(
    servers: dict[str, ServerProcess], workers: int
) -> None:
    """32 keep-alive clients on the token endpoint, SIGTERM: every request sent before
    the last worker logged ``shutdown_stopped_accepting`` gets its whole answer (no reset,
    no empty or cut reply), no answer at all is a 5xx (all are 200), the process exits 0,
    and each worker logs the phases in order, without reaching the timeout."""
    server = servers[f"load-{workers}"]
    authorization = basic_credentials("svc", server.env["SECRET"])
    request = token_request("127.0.0.1", server.port, authorization)
    result, status = asyncio.run(_load_and_stop(server, request))
    phases = _phases(server)
    assert status == 0, server.log()[-3000:]
    assert result.statuses().keys() == {200}, result.statuses()
    for event in PHASES:
        assert len(phases.get(event, [])) == workers, (event, phases)
        assert len({entry["pid"] for entry in phases[event]}) == workers
    assert "shutdown_timeout_reached" not in phases
    started = phases["shutdown_started"][0]
    assert (started["signal"], started["delay"], started["timeout"]) == ("SIGTERM", 0.0, 10.0)
    for entry in phases["shutdown_complete"]:
        assert entry["timed_out"] is False
        assert entry["requests_finished"] >= 0 and entry["connections_closed"] >= 0
    closed = max(_time(entry) for entry in phases["shutdown_stopped_accepting"])
    before = result.outcomes(before=closed)
    assert before["complete"] >= WARM_UP
    assert before == {"complete": before["complete"], "reset": 0, "empty": 0, "partial": 0}
    assert result.outcomes()["partial"] == 0
    # The clients stopped because the listener was gone, not for lack of answers.
    assert result.refused == CLIENTS


def _half_request(port: int, authorization: str) -> socket.socket:
    """A token request whose body is half sent: the server waits for the rest."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: {authorization}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 58\r\n\r\n"
        + b"grant_type=client_"
    )
    return sock


@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn"])
def test_delay_keeps_serving_with_readyz_503_and_timeout_bounds_a_hung_request(
    servers: dict[str, ServerProcess], server_name: str
) -> None:
    """``SHUTDOWN_DELAY=0.6``, ``SHUTDOWN_TIMEOUT=0.5`` (uvicorn with two workers, Hypercorn
    with one), and a client that sent half a request body before the signal (the body
    timeout is far longer). From the signal on, every ``/readyz`` answer is 503
    (``"shutdown": "stopping"``, Retry-After), whichever worker accepts the probe's
    connection, while token requests are still answered 200, until the delay is over.
    The hung request then holds the shutdown for the timeout and no longer: ``serve``
    exits 0 within delay + timeout + a margin, having logged
    ``shutdown_timeout_reached``."""
    server = servers[f"delayed-{server_name}"]
    workers = SERVERS[f"delayed-{server_name}"][0]
    secret = server.env["SECRET"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        hung = _half_request(server.port, basic_credentials("svc", secret))
        try:
            signalled = _signal(server)
            # The signal reaches the workers through the parent: at once, not "soon".
            wait_until(
                lambda: http.get("/readyz").status_code == 503,
                timeout=0.5,
                what="/readyz 503 after SIGTERM",
            )
            probes = tokens = 0
            while time.monotonic() < signalled + DELAY - 0.3:
                ready = http.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert ready.json()["checks"]["shutdown"] == "stopping"
                assert ready.headers["Retry-After"]
                answer = post_token(server.url, "svc", secret, http=http)
                assert answer.status_code == 200, answer.text
                probes, tokens = probes + 1, tokens + 1
            status = server.proc.wait(DELAY + TIMEOUT + MARGIN)
            seconds = time.monotonic() - signalled
            try:
                hung_answer = hung.recv(4096)
            except ConnectionResetError:
                hung_answer = b""
        finally:
            hung.close()
    phases = _phases(server)
    assert probes >= 3 and tokens >= 3
    assert status == 0, server.log()[-3000:]
    assert DELAY + TIMEOUT - 0.2 <= seconds <= DELAY + TIMEOUT + MARGIN
    if server_name == "uvicorn":  # the connection closed, the request cancelled
        assert hung_answer == b"", hung_answer
    else:  # Hypercorn answers a request it cancels 500 (``_handle`` in its task_group)
        assert hung_answer == b"" or hung_answer.startswith(b"HTTP/1.1 500 "), hung_answer
    assert phases.get("shutdown_timeout_reached"), phases
    for entry in phases["shutdown_started"]:
        assert (entry["delay"], entry["timeout"]) == (DELAY, TIMEOUT)
    for started, stopped in zip(
        sorted(phases["shutdown_started"], key=lambda e: e["pid"]),
        sorted(phases["shutdown_stopped_accepting"], key=lambda e: e["pid"]),
        strict=True,
    ):
        assert _time(stopped) - _time(started) >= DELAY - 0.05
    assert len(phases["shutdown_complete"]) == workers


async def test_readyz_once_stopping_is_503_naming_the_shutdown(client: QuartClient) -> None:
    """In the app (what each worker's ``/readyz`` does once signalled): 503 with Retry-After,
    the other checks still reported, ``"shutdown": "stopping"``, as the spec describes;
    ``/healthz`` stays 200 (a liveness probe failing would have the process killed)."""
    checker = SpecChecker(load_spec())
    draining.begin()
    try:
        ready = await exchange(checker, client, "GET", "/readyz")
        alive = await exchange(checker, client, "GET", "/healthz")
    finally:
        draining.reset()
    assert (ready.status, ready.body) == (
        503,
        {"status": "unavailable", "checks": {"store": "ok", "keys": "ok", "shutdown": "stopping"}},
    )
    assert ready.headers["Retry-After"]
    assert alive.status == 200
    assert (await exchange(checker, client, "GET", "/readyz")).status == 200
