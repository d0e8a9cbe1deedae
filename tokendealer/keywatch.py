"""Running servers follow key changes without restart.

Each worker polls the manifest's stamp (inode, size, mtime) every ``interval`` seconds.
Writers replace the manifest atomically, so a changed stamp means a complete new
manifest; the key set is then loaded off the event loop and swapped in one assignment.
A key set that fails to load is logged (once per change) and the last good one is kept.
Activation needs no reload at all: a key's state is a function of the clock.
"""

from __future__ import annotations

import asyncio

from tokendealer.dealer import Dealer
from tokendealer.keys import KeyFileError, load_keyset, manifest_stamp
from tokendealer.log import get_logger

log = get_logger("tokendealer.keys")

INTERVAL = 1.0


async def reload_if_changed(dealer: Dealer, failed_stamp: object = None) -> object:
    """One poll; returns the stamp of a change that failed to load (to log it once)."""
    keys_dir = dealer.settings.keys_dir
    stamp = manifest_stamp(keys_dir)
    if stamp == dealer.keys_stamp:
        return None
    try:
        keyset = await asyncio.to_thread(load_keyset, keys_dir)
    except KeyFileError as exc:
        if stamp != failed_stamp:
            log.error("keys_reload_failed_keeping_last_good_set", reason=str(exc))
        return stamp
    dealer.use_keyset(keyset, stamp)
    log.info("keys_reloaded", kids=[key.kid for key in keyset.keys])
    return None


async def watch_keys(dealer: Dealer, interval: float = INTERVAL) -> None:
    failed: object = None
    while True:
        await asyncio.sleep(interval)
        try:
            failed = await reload_if_changed(dealer, failed)
        except Exception as exc:  # the watcher must outlive any surprise
            log.error("keys_watch_error", error_type=type(exc).__name__)
