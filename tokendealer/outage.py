"""Tracking one backend's outage: fail fast while it is down, probe it now and then, and
log the outage once when it begins and once when it ends.

Framework- and driver-free; the SQL store uses it (and so may any other backend).

Usage::

    outage = Outage("store", retry_interval=1.0)
    if not outage.may_try():
        raise Unavailable()           # failing fast: no request waits on a dead backend
    try:
        result = await call_backend()
    except BackendDown as exc:
        outage.failed(exc)
        raise
    outage.succeeded()

"""

from __future__ import annotations

import time

from tokendealer.log import get_logger
from tokendealer.observe import metrics

log = get_logger("tokendealer.outage")


class Outage:
    def __init__(self, name: str, retry_interval: float, *, logged: bool = True) -> None:
        self.name = name
        self.retry_interval = retry_interval
        #: False for a one-shot command, whose failure is its one line of output.
        self.logged = logged
        #: ``time.monotonic()`` when the current outage began; None while the backend answers.
        self.down_since: float | None = None
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def may_try(self) -> bool:
        """True while the backend answers, and for one caller per ``retry_interval`` while
        it does not (that caller probes it; the others fail fast meanwhile)."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.retry_interval
        return True

    def failed(self, reason: str) -> None:
        if self.logged:
            metrics.backend_failed(self.name)
        now = time.monotonic()
        self._next_probe = now + self.retry_interval
        if self.down_since is None:
            self.down_since = now
            if self.logged:
                log.warning(f"{self.name}_unavailable", reason=reason[:200])

    def succeeded(self) -> None:
        if self.down_since is not None:
            if self.logged:
                metrics.backend_up(self.name)
                log.warning(
                    f"{self.name}_recovered",
                    down_seconds=round(time.monotonic() - self.down_since, 1),
                )
            self.down_since = None
