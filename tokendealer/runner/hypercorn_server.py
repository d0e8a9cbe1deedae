"""Hypercorn's workers with a graceful shutdown (``tokendealer.draining``).

Hypercorn's own ``run`` cannot be given a shutdown trigger (only its in-process
``worker_serve`` can), and its workers die at once on a SIGTERM of their own (a process
group signal, ``docker stop`` of a shell). So ``run`` here is a small supervisor of the
same shape: it spawns the workers, each one running Hypercorn's ``worker_serve`` with a
trigger of ours, passes a stop signal on to them, and stops them all when one fails
(returning that worker's exit status: ``STARTUP_FAILURE`` when its app cannot start).

In a worker, the stop signal marks it stopping (``/readyz`` 503), the trigger waits
``shutdown_delay`` and returns; Hypercorn then closes idle connections and its listener,
lets requests in flight finish within its ``graceful_timeout`` (our ``shutdown_timeout``;
it cancels them past it), and runs the app's shutdown (the store closes). Less than with
uvicorn: no ``Connection: close`` on the answers (a keep-alive connection is closed
after its answer once the worker stops), no counts in the log lines, and connections
still in the kernel's accept queue when the listener closes are reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from tokendealer import draining

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets
    from hypercorn.typing import AppWrapper

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(config: Config, workers: int, delay: float, timeout: float) -> int:
    """Serve with ``workers`` processes until a stop signal; the exit status."""
    sockets = config.create_sockets()
    listening = [*sockets.secure_sockets, *sockets.insecure_sockets]
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    stopping = False
    spawned = False

    def stop_workers() -> None:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        # Our copy of the listening socket: left open, it would go on completing
        # connections into the queue after the workers stopped accepting.
        for sock in listening:
            sock.close()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if spawned:  # else once they are: a worker being given the socket needs it open
            stop_workers()

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        for _ in range(workers):
            worker = context.Process(target=_worker, args=(config, sockets, delay, timeout))
            worker.start()
            processes.append(worker)
    finally:
        spawned = True
    if stopping:
        stop_workers()
    status = 0
    while alive := [process for process in processes if process.exitcode is None]:
        wait([process.sentinel for process in alive])
        for process in processes:
            if process.exitcode not in (None, 0) and not stopping:
                # A worker failed (its app did not start, it crashed): stop them all.
                stopping = True
                status = process.exitcode if process.exitcode > 0 else 1
                stop_workers()
    for process in processes:
        process.join()
    for sock in listening:
        sock.close()
    return status


def _worker(config: Config, sockets: Sockets, delay: float, timeout: float) -> None:
    """One worker process: Hypercorn's ``uvloop_worker`` with our shutdown trigger."""
    import uvloop
    from hypercorn.utils import load_application

    app = load_application(config.application_path, config.wsgi_max_body_size)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(app, config, sockets, delay, timeout))


async def _serve(
    app: AppWrapper, config: Config, sockets: Sockets, delay: float, grace: float
) -> None:
    """``worker_serve`` with our trigger; ``grace`` is the shutdown timeout (Hypercorn's
    ``graceful_timeout``), for the log lines."""
    from hypercorn.asyncio.run import worker_serve

    loop = asyncio.get_running_loop()
    received: list[int] = []
    signalled = asyncio.Event()
    stopped: list[float] = []

    def on_signal(signum: int) -> None:
        if not received:  # later ones (the supervisor's, after the group's) change nothing
            received.append(signum)
            draining.begin()
            # Every answer from now on says Connection: close and ends its connection
            # (Hypercorn's HTTP/1.1 protocol reads this for each answer).
            config.keep_alive_max_requests = 0
            signalled.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)

    timed_out: list[bool] = []

    def timeout_reached() -> None:
        timed_out.append(True)
        draining.log_timeout_reached(grace)

    async def shutdown_trigger() -> None:
        await signalled.wait()
        draining.log_started(received[0], delay, grace)
        await asyncio.sleep(delay)
        draining.log_stopped_accepting()
        stopped.append(time.monotonic())
        # Hypercorn cancels the requests left at its graceful_timeout (= timeout).
        late.append(loop.call_later(grace, timeout_reached))

    late: list[asyncio.TimerHandle] = []
    await worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)
    for handle in late:
        handle.cancel()
    if stopped:
        draining.log_complete(time.monotonic() - stopped[0], timed_out=bool(timed_out))
