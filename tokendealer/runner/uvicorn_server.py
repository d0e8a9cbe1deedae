"""uvicorn's server and supervisor with a graceful shutdown (``tokendealer.draining``).

uvicorn, on SIGTERM, closes its listener at once, closes every idle keep-alive connection
at once (with a request possibly just received, unread: the client gets a reset), leaves
the connections the kernel had queued for it to be reset, waits
``timeout_graceful_shutdown`` and re-raises the signal, so a single worker exits killed
by SIGTERM. ``DrainingServer`` replaces that:

* the stop signal marks the worker as stopping at once (``/readyz`` 503, every answer
  with ``Connection: close``) and the server goes on serving for ``shutdown_delay``;
* then it stops accepting: it closes its listener after accepting, and serving, every
  connection already queued in the kernel's accept queue; in-flight requests and
  requests arriving on open connections are answered and their connections closed
  (``GuardedHttpToolsProtocol.shutdown``);
* requests get ``shutdown_timeout`` seconds from that moment; past it, the remaining
  connections are closed and their requests cancelled;
* the lifespan shutdown runs (the app's ``after_serving`` closes the store) and the
  worker returns normally: exit status 0. A second SIGINT (Ctrl+C) still forces the exit.

With several workers, ``DrainingMultiprocess`` (uvicorn's supervisor) runs a
``DrainingServer`` in each and passes the stop signal on to every worker as it arrives.
Each worker listens on its own socket of one ``SO_REUSEPORT`` group
(``runner.server.listen``), which the supervisor holds too, so that a dead worker's
queue waits for its replacement. It closes its copies when the stop signal arrives: a
copy left open would go on completing connections into a queue after its worker stopped
accepting, to be reset when the supervisor exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from tokendealer import draining

#: Seconds the requests still running when ``shutdown_timeout`` is reached have to end
#: once their connections are closed (the app sees the client gone) before they are
#: cancelled.
CANCEL_GRACE = 0.5
#: Turns of the loop given to connections already accepted to get their transports.
ATTACH_TURNS = 2
#: uvicorn's own logger for its supervisor's lines.
logger = logging.getLogger("uvicorn.error")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ServeConfig(uvicorn.Config):
    """uvicorn's configuration with the two shutdown settings, for every worker (the
    configuration is what uvicorn's supervisor hands its workers)."""

    def __init__(self, *args: Any, shutdown_delay: float, shutdown_timeout: float, **kw: Any):
        super().__init__(*args, **kw)
        self.shutdown_delay = shutdown_delay
        self.shutdown_timeout = shutdown_timeout


class DrainingServer(uvicorn.Server):
    """A uvicorn server (one worker) whose stop signal starts a graceful shutdown."""

    config: ServeConfig

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config)
        self._signal: int | None = None
        self._stop_at: float | None = None
        self._announced = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the signal, and the delay --------------------------------------------------

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the main thread between two bytecodes of whatever it interrupted: it
        only assigns, and wakes the loop."""
        if self._signal is not None:
            if sig == signal.SIGINT:  # Ctrl+C twice: stop now (uvicorn's force_exit)
                self.force_exit = True
                self.should_exit = True
            return  # the signal passed on by the supervisor after the group's own
        self._signal = sig
        draining.begin()  # /readyz answers 503 from the next request on
        self._stop_at = time.monotonic() + self.config.shutdown_delay
        # Not recorded in _captured_signals: uvicorn raises those again once it has
        # stopped, which would kill the process by the signal instead of exiting 0.
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def main_loop(self) -> None:
        """uvicorn's loop (a tick every 0.1 s) that a stop signal wakes at once, and that
        ends ``shutdown_delay`` seconds after it."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            wait = 0.1
            if self._stop_at is not None:
                wait = min(wait, max(0.0, self._stop_at - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._signal is None or self._stop_at is None:
            return False
        if not self._announced:
            self._announced = True
            draining.log_started(
                self._signal, self.config.shutdown_delay, self.config.shutdown_timeout
            )
        return time.monotonic() >= self._stop_at

    # -- stopping ---------------------------------------------------------------------

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        draining.begin()  # already, after a signal; else stopped by uvicorn (max requests)
        state = self.server_state
        timeout = self.config.shutdown_timeout
        answered_before = state.total_requests
        # Logged before the listener closes: whatever connected before this line's
        # timestamp is in the accept queue, and is taken below.
        draining.log_stopped_accepting(
            connections=len(state.connections), requests_in_flight=len(state.tasks)
        )
        stopped = time.monotonic()
        queued = await self._stop_accepting(sockets or [])
        for connection in list(state.connections):
            connection.shutdown()
        connections = len(state.connections)
        timed_out = False
        if not self.force_exit:
            try:
                async with asyncio.timeout(max(0.0, stopped + timeout - time.monotonic())):
                    await self._wait_until_done()
            except TimeoutError:
                timed_out = True
                left = len(state.connections)
                draining.log_timeout_reached(
                    timeout, requests_cancelled=len(state.tasks), connections_closed=left
                )
                await self._end_remaining()
        if not self.force_exit:
            await self.lifespan.shutdown()
        draining.log_complete(
            time.monotonic() - stopped,
            requests_finished=state.total_requests - answered_before,
            connections_closed=connections,
            queued_connections_accepted=queued,
            timed_out=timed_out,
        )

    async def _stop_accepting(self, sockets: list[socket.socket]) -> int:
        """Close the listener, serving first every connection already in its accept
        queue; return how many there were. The queue belongs to the socket: the worker's
        own (or, shared by every worker, what another would have taken stays for it).

        The queue is emptied without yielding to the loop, then the listener closed:
        serving one connection before taking the next would let clients reconnecting
        meanwhile keep the listener open (the queue never empty)."""
        loop = asyncio.get_running_loop()
        held = [sock.dup() for sock in sockets]  # the queue outlives the servers' sockets
        # asyncio's loop accepts a batch of connections at once and gives each its
        # transport in a task of its own; closing the server before those tasks ran
        # fails them (the server is gone) and drops their connections, with the request
        # already sent: a reset. So: stop accepting, let the accepted ones attach, then
        # close. (uvloop attaches them at once; for it the reader is not ours to remove.)
        for sock in sockets:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
        for _ in range(ATTACH_TURNS):
            await asyncio.sleep(0)
        for server in self.servers:
            server.close()
        for sock in sockets:
            sock.close()
        queued: list[socket.socket] = []
        try:
            for listener in held:
                listener.setblocking(False)
                while len(queued) < self.config.backlog:
                    try:
                        conn, _ = listener.accept()
                    except OSError:  # empty (EAGAIN), or e.g. EMFILE: the rest is refused
                        break
                    queued.append(conn)
        finally:
            for listener in held:
                listener.close()
        for conn in queued:
            conn.setblocking(False)
            try:
                await loop.connect_accepted_socket(self._protocol, conn)
            except OSError:
                conn.close()
        return len(queued)

    def _protocol(self) -> asyncio.Protocol:
        """A connection's protocol, as uvicorn's ``startup`` makes them."""
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    async def _wait_until_done(self) -> None:
        """Until every connection is closed and every request task done (uvicorn's
        state has no event to wait for: polled, as uvicorn does)."""
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _end_remaining(self) -> None:
        """Past the timeout: close the connections left (their requests see the client
        gone and end), then cancel the requests that still run."""
        state = self.server_state
        for connection in list(state.connections):
            connection.transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_GRACE):
                while state.tasks:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class DrainingProcess(multiprocess.Process):
    """A uvicorn worker process that runs a ``DrainingServer``."""

    config: ServeConfig

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class DrainingMultiprocess(multiprocess.Multiprocess):
    """uvicorn's supervisor, with ``DrainingServer`` workers and the stop signal passed on
    to them as it arrives (not at the supervisor's next half-second check)."""

    def __init__(self, config: ServeConfig, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._spawning = 0
        self._close_pending = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        for process in list(self.processes):
            if process.pid is not None and process.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        if self._spawning:
            self._close_pending = True  # a worker is being given the socket right now
        else:
            self._close_sockets()
        self.signal_queue.append(sig)  # uvicorn's own handling: stop, join the workers

    def _close_sockets(self) -> None:
        self._close_pending = False
        for sock in self.sockets:
            sock.close()

    @contextlib.contextmanager
    def _spawning_workers(self) -> Iterator[None]:
        self._spawning += 1
        try:
            yield
        finally:
            self._spawning -= 1
            if not self._spawning and self._close_pending:
                self._close_sockets()

    def run(self) -> None:
        # uvicorn's supervisor makes its workers with the module's ``Process`` (no hook
        # for the server class): ours, while it runs.
        original = multiprocess.Process
        multiprocess.Process = DrainingProcess  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = original  # type: ignore[misc]

    def _sockets_of(self, index: int) -> list[socket.socket]:
        """The socket worker ``index`` listens on: its own when ``listen`` made one per
        worker (an ``SO_REUSEPORT`` group; the supervisor holds every one, so a worker's
        queue waits for its replacement instead of being reset), else the shared one.
        A worker added by SIGTTIN listens on all of them."""
        if len(self.sockets) > 1 and index < len(self.sockets):
            return [self.sockets[index]]
        return self.sockets

    def init_processes(self) -> None:
        with self._spawning_workers():
            for index in range(self.processes_num):
                process = DrainingProcess(self.config, self._sockets_of(index))
                process.start()
                self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        """uvicorn 0.55's, with each worker's replacement on the worker's own socket."""
        if self.should_exit.is_set() or any(s.fileno() == -1 for s in self.sockets):
            return
        with self._spawning_workers():
            for index, process in enumerate(self.processes):
                if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                    continue
                process.kill()  # hung: killed
                process.join()
                if process.exitcode == STARTUP_FAILURE:
                    # The app cannot start: every replacement would fail the same way.
                    logger.error(
                        f"Child process [{process.pid}] failed to start, "
                        "stopping the parent process."
                    )
                    self.should_exit.set()
                    return
                if self.should_exit.is_set():
                    return
                replacement = DrainingProcess(self.config, self._sockets_of(index))
                replacement.start()
                self.processes[index] = replacement

    def restart_all(self) -> None:
        """uvicorn 0.55's (SIGHUP): each worker replaced, its replacement ready on the
        same socket before the old one is stopped."""
        with self._spawning_workers():
            for index, old in enumerate(self.processes):
                if self.should_exit.is_set():
                    return
                new = DrainingProcess(self.config, self._sockets_of(index))
                new.start()
                healthcheck = self.config.timeout_worker_healthcheck
                if not new.wait_until_ready(healthcheck, self.should_exit):
                    new.kill()
                    new.join()
                    if not self.should_exit.is_set():
                        logger.error(
                            f"New child process [{new.pid}] was not ready in time; keeping "
                            f"worker [{old.pid}] and aborting the restart."
                        )
                    return
                old.terminate()
                old.join()
                self.processes[index] = new

    def handle_ttou(self) -> None:
        """uvicorn's (one worker fewer), except for a worker that owns its listening
        socket: the supervisor holds that socket, so the kernel would go on queueing a
        share of the connections on it, for no one to accept."""
        if len(self.sockets) > 1 and self.processes_num <= len(self.sockets):
            logger.warning("Each worker listens on a socket of its own: not removing one.")
            return
        super().handle_ttou()

    def handle_ttin(self) -> None:
        with self._spawning_workers():
            super().handle_ttin()
