"""``serve --workers N`` (uvicorn) listens on one ``SO_REUSEPORT`` socket per worker, so
the kernel spreads connections evenly; the port stays closed to a second ``serve``.
Real ``serve`` processes; which process holds which socket is read from /proc (Linux)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.processes import free_port, tokendealer_executable
from tests.support.servers import ServerProcess, run_server, server_env, wait_until
from tokendealer.runner.server import bind, listen

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads sockets and their owners from /proc"
)

#: Keep-alive connections opened at once, as the benchmark's load generator opens them.
CONNECTIONS = 64


def _sockets(port: int, state: str) -> dict[int, tuple[int, int]]:
    """Socket inode -> (local port, remote port) of the TCP sockets on 127.0.0.1 in
    ``state`` (``0A`` listening, ``01`` established) whose local port is ``port``."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, st, inode = fields[1], fields[2], fields[3], int(fields[9])
        local_port, remote_port = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if st == state and local_port == port:
            found[inode] = (local_port, remote_port)
    return found


def _holders(pids: list[int]) -> dict[int, set[int]]:
    """Socket inode -> the pids among ``pids`` holding a descriptor of it."""
    held: dict[int, set[int]] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                held.setdefault(int(target[8:-1]), set()).add(pid)
    return held


def _workers(server: ServerProcess) -> list[int]:
    """The serving workers: the children of ``serve`` that hold a listening socket."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    listening = set(_sockets(server.port, "0A"))
    return [pid for pid in map(int, children.split()) if listening & set(_holders([pid]))]


def test_each_worker_listens_on_its_own_socket_and_connections_spread(tmp_path: Path) -> None:
    with run_server(tmp_path, workers=2) as server:
        workers = _workers(server)
        assert len(workers) == 2, workers
        listening = _sockets(server.port, "0A")
        assert len(listening) == 2  # one shared socket before: one line here
        holders = _holders([*workers, server.proc.pid])
        # Each worker holds one of them, not the other's; the parent holds both (a dead
        # worker's queue waits for its replacement).
        for worker in workers:
            assert [inode for inode in listening if worker in holders.get(inode, ())] != []
        assert all(len(holders[inode] & set(workers)) == 1 for inode in listening)
        assert all(server.proc.pid in holders[inode] for inode in listening)

        # 64 keep-alive connections at once, one request each: where did each land?
        connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(64)]
        try:
            for conn in connections:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            for conn in connections:
                assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            ports = {conn.getsockname()[1] for conn in connections}
            established = {
                inode: remote
                for inode, (_, remote) in _sockets(server.port, "01").items()
                if remote in ports
            }
            assert len(established) == CONNECTIONS
            owners = _holders(workers)
            spread = Counter(next(iter(owners[inode])) for inode in established)
        finally:
            for conn in connections:
                conn.close()
    # Even odds per connection: fewer than 16 of 64 on one worker has a chance of 3e-5.
    assert sorted(spread) == sorted(workers) and min(spread.values()) >= 16, spread


def test_a_second_serve_finds_the_port_taken(tmp_path: Path) -> None:
    """The group admits only sockets that ask to share the port: ``serve`` never asks,
    so a second one, with one worker or several, stops with one line."""
    with run_server(tmp_path / "first", workers=2) as server:
        for workers in ("2", "1"):
            second = subprocess.run(  # nosec B603 - our own CLI
                [
                    sys.executable,
                    "-m",
                    "tokendealer",
                    "serve",
                    "--workers",
                    workers,
                    "--port",
                    str(server.port),
                ],
                env=server.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert second.returncode == 1, second.stderr
            assert second.stderr.strip().splitlines() == [
                f"Error: cannot listen on 127.0.0.1:{server.port}: address already in use"
            ]
        # The first one still listens on both of its sockets.
        assert len(_sockets(server.port, "0A")) == 2


@pytest.mark.parametrize(("loop", "uvloop_loaded"), [(None, False), ("uvloop", True)])
def test_the_workers_run_the_configured_event_loop(
    tmp_path: Path, loop: str | None, uvloop_loaded: bool
) -> None:
    """``TOKENDEALER_EVENT_LOOP``: asyncio's by default, uvloop left unloaded in the
    worker (its shared library absent from the process's memory map); ``uvloop`` loads it."""
    env = {"TOKENDEALER_EVENT_LOOP": loop} if loop else {}
    with run_server(tmp_path, workers=2, env=env) as server:
        workers = _workers(server)
        maps = [Path(f"/proc/{pid}/maps").read_text() for pid in workers]
        assert server.token(*_client(server)) != ""
    assert len(workers) == 2
    assert [("uvloop" in text) for text in maps] == [uvloop_loaded] * 2


def _client(server: ServerProcess) -> tuple[str, str]:
    return "svc", server.add_client("svc")


@pytest.mark.parametrize("count", [1, 2])
async def test_connections_accepted_by_asyncio_on_our_sockets_send_at_once(count: int) -> None:
    """Nagle's algorithm is off on every connection the asyncio loop accepts from the
    sockets ``listen`` makes: asyncio turns it off only for a socket whose ``proto`` says
    TCP. With it on, a response written in two parts (head, then body) waited for the
    client's delayed ACK, about 40 ms a request."""
    sockets = listen(bind("127.0.0.1", 0), count)
    try:
        accepted: asyncio.Queue[int] = asyncio.Queue()

        async def on_connection(
            _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            sock = writer.get_extra_info("socket")
            await accepted.put(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        servers = [await asyncio.start_server(on_connection, sock=sock) for sock in sockets]
        port = sockets[0].getsockname()[1]
        for _ in range(8):  # spread over the group's sockets
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(accepted.get(), 5) != 0
            writer.close()
        for server in servers:
            server.close()
    finally:
        for sock in sockets:
            sock.close()


def test_of_two_serve_started_together_one_serves_and_one_stops(tmp_path: Path) -> None:
    """Two ``serve --workers 2`` on one port, started at once: both bind before either
    listens (SO_REUSEADDR allows that), and two SO_REUSEPORT groups would then both
    listen and split the connections. The address is claimed at bind: one serves, the
    other stops with one line."""
    port = free_port()
    procs = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        command = [tokendealer_executable(), "serve", "--workers", "2", "--port", str(port)]
        procs.append(
            subprocess.Popen(  # nosec B603 - our own CLI
                command,
                env=server_env(workdir, port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        loser_at = wait_until(
            lambda: any(proc.poll() is not None for proc in procs), timeout=60, what="one exit"
        )
        [loser] = [proc for proc in procs if proc.poll() is not None]
        [winner] = [proc for proc in procs if proc is not loser]
        assert loser_at >= 0 and loser.returncode == 1
        assert loser.communicate()[1].strip().splitlines() == [
            f"Error: cannot listen on 127.0.0.1:{port}: address already in use"
        ]
        wait_until(lambda: _healthy(port), timeout=60, what="the other one serving")
        assert winner.poll() is None
        assert len(_sockets(port, "0A")) == 2  # the winner's group alone
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=30)


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return conn.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_sigttou_keeps_every_worker_that_owns_a_socket(tmp_path: Path) -> None:
    """uvicorn's SIGTTOU removes a worker; one that owns its listening socket stays (the
    kernel would go on queueing a share of connections on it, for no one to accept)."""
    with run_server(tmp_path, workers=2) as server:
        before = sorted(_workers(server))
        os.kill(server.proc.pid, signal.SIGTTOU)
        wait_until(lambda: "not removing one" in server.log(), timeout=10, what="the refusal")
        assert sorted(_workers(server)) == before and len(before) == 2
        assert all(_healthy(server.port) for _ in range(8))
