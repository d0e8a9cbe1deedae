"""Running servers follow key changes without restart.

Each worker calls ``refresh`` every ``INTERVAL`` seconds (the dealer's ``refresh_keys``,
which checks the manifest's stamp); a changed manifest is loaded off the event loop and
swapped in one assignment. Activation needs no reload at all: a key's state is a function of the
clock, so rotations published ahead of time switch on every worker at the same moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tokendealer.log import get_logger

log = get_logger("tokendealer.keys")

INTERVAL = 1.0


async def watch_keys(refresh: Callable[[], Awaitable[bool]], interval: float = INTERVAL) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await refresh()
        except Exception as exc:  # the watcher must outlive any surprise
            log.error("keys_watch_error", error_type=type(exc).__name__)
