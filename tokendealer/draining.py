"""Whether this worker process is stopping, and the log lines of its shutdown.

A stop signal (SIGTERM, or SIGINT) starts a worker's shutdown in phases, the same with
either server (``tokendealer.runner.uvicorn_server``, ``tokendealer.runner.hypercorn_server``):

1. ``begin()``, at once, from the signal: ``/readyz`` answers 503 from now on
   (``tokendealer.http.documents`` reads ``stopping()``); ``shutdown_started``.
2. The service keeps answering for ``TOKENDEALER_SHUTDOWN_DELAY`` seconds, time for a
   load balancer to see the 503 and take this replica out of rotation.
3. It stops accepting connections (``shutdown_stopped_accepting``, logged just before the
   listener closes) and gives the requests in flight ``TOKENDEALER_SHUTDOWN_TIMEOUT``
   seconds to finish (``shutdown_timeout_reached`` if they do not).
4. The app's ``after_serving`` closes the store; ``shutdown_complete``; exit status 0.

This module holds no protocol: a flag, set once per process, and the phase lines, so that
both servers log the same events with the same fields. ``begin`` only assigns, so that a
signal handler may call it.
"""

from __future__ import annotations

import os
import signal
import time

from tokendealer.log import get_logger

log = get_logger("tokendealer.shutdown")

_began: float | None = None


def begin() -> bool:
    """Mark this process as stopping; False if it already was."""
    global _began
    if _began is not None:
        return False
    _began = time.monotonic()
    return True


def stopping() -> bool:
    """True once ``begin`` was called: ``/readyz`` answers 503."""
    return _began is not None


def reset() -> None:
    """Forget a ``begin`` (tests that run an app in their own process)."""
    global _began
    _began = None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def log_started(signum: int, delay: float, timeout: float) -> None:
    log.info(
        "shutdown_started",
        signal=signal_name(signum),
        delay=delay,
        timeout=timeout,
        pid=os.getpid(),
    )


def log_stopped_accepting(**fields: object) -> None:
    """Logged just before the listener closes: a request sent before this line's time has
    its connection accepted, and is answered."""
    log.info("shutdown_stopped_accepting", pid=os.getpid(), **fields)


def log_timeout_reached(timeout: float, **fields: object) -> None:
    log.warning("shutdown_timeout_reached", timeout=timeout, pid=os.getpid(), **fields)


def log_complete(seconds: float, **fields: object) -> None:
    """The last line of a worker: requests finished, store closed, exiting."""
    log.info("shutdown_complete", seconds=round(seconds, 3), pid=os.getpid(), **fields)
