"""Rate-limit state and the client address, free of any web framework.

Limits use GCRA, the generic cell rate algorithm that quart-rate-limiter implements: each
key stores one number, its *theoretical arrival time* (TAT). An event at ``now`` is
admitted while ``TAT - now <= period - interval``; admitting it moves the TAT to
``max(TAT, now) + interval``. A key whose TAT is in the past is the same as no key, so
state can expire the moment its TAT passes. No write ever moves a TAT past
``now + period``: a key is back to empty at most one period after its last write, however
many events were counted against it.

quart-rate-limiter's store interface (``RateLimiterStoreABC``: ``get``/``set`` of a TAT)
reads, then writes: two replicas reading the same TAT both admit. ``LimitStore`` keeps
that interface and adds ``update``, which checks and advances several keys as one atomic
step; the OAuth pipeline (``tokendealer.http.limits.Limiter``) uses only ``update``, and
quart-rate-limiter, on the Quart routes, ``get`` and ``set``.

Usage::

    store = MemoryStore()
    slots = [Slot("client:abc", Rate(20, 60))]
    wait = await store.update(slots, Mode.ACQUIRE)   # 0.0: admitted; > 0: retry after
    await store.update(slots, Mode.RELEASE)          # give that admission back

"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tokendealer.settings import Rate

__all__ = [
    "LimitStore",
    "MemoryStore",
    "Mode",
    "Slot",
    "client_address",
    "digest_key",
]

#: Admission tolerates this much float error (seconds) so that N events in one instant
#: admit exactly N, not N - 1, when ``period / count`` is not exact in binary.
EPSILON = 1e-6


class Mode(enum.Enum):
    """What ``LimitStore.update`` does with its slots."""

    #: Check every slot; if all admit, advance all of them. A request on a limited route.
    ACQUIRE = "acquire"
    #: Check every slot, change nothing. "May this client try to authenticate?"
    PEEK = "peek"
    #: Advance every slot without checking (never past ``now + period``).
    HIT = "hit"
    #: Give back one event ACQUIRE counted: move every slot's TAT back by its interval
    #: (not before ``now``). "That attempt held a failure's place while its client was
    #: read, and authenticated: it was no failure."
    RELEASE = "release"


@dataclass(frozen=True)
class Slot:
    """One key limited to one rate."""

    key: str
    rate: Rate


def wait_time(tat: float, now: float, rate: Rate) -> float:
    """Seconds until an event at ``now`` would be admitted; 0 when it is admitted now."""
    wait = max(tat, now) - now - (rate.period - rate.interval)
    return wait if wait > EPSILON else 0.0


class LimitStore(ABC):
    """The state of the limits: quart-rate-limiter's store interface (``get``/``set`` of a
    TAT, ``before_serving``/``after_serving``), without importing it, plus an atomic
    multi-key GCRA ``update``."""

    @abstractmethod
    async def before_serving(self) -> None: ...

    @abstractmethod
    async def after_serving(self) -> None: ...

    @abstractmethod
    async def get(self, key: str, default: datetime) -> datetime:
        """The TAT stored under ``key``, else ``default``."""

    @abstractmethod
    async def set(self, key: str, tat: datetime) -> None: ...

    @abstractmethod
    async def update(self, slots: Sequence[Slot], mode: Mode) -> float:
        """Apply ``mode`` to ``slots`` atomically; return the seconds to wait (0: admitted).

        With ``Mode.ACQUIRE`` nothing changes unless every slot admits. ``Mode.RELEASE``
        undoes one ACQUIRE (or HIT) of the same slots and always returns 0.
        """


#: Keys a process keeps at most: about 170 bytes each (a key of about 60 characters, its
#: time, the dict's slot), so some 8 MiB when a flood of distinct ids or addresses fills
#: it, within a worker's 100 MiB (issue 16; 100,000 took 16 MiB).
MAX_KEYS = 50_000


class MemoryStore(LimitStore):
    """Per-process GCRA state; entries are dropped once their TAT has passed.

    The number of keys is bounded (``max_keys``): a flood of distinct keys (rotating
    client ids) evicts the oldest entries rather than growing without end. ``clock``
    (seconds, ``time.time`` by default) can be replaced, by tests for instance.
    """

    def __init__(self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.time) -> None:
        self._tats: dict[str, float] = {}
        self._max_keys = max_keys
        self._next_sweep = 0.0
        self._clock = clock

    async def before_serving(self) -> None:
        pass

    async def after_serving(self) -> None:
        pass

    async def get(self, key: str, default: datetime) -> datetime:
        tat = self._tats.get(key)
        if tat is None or tat <= self._clock():
            return default
        return datetime.fromtimestamp(tat, UTC)

    async def set(self, key: str, tat: datetime) -> None:
        self._store(key, tat.timestamp(), self._clock())

    async def update(self, slots: Sequence[Slot], mode: Mode) -> float:
        # No await in here: on one event loop this whole method is atomic. Written out
        # plainly: the token endpoint runs it three times per request (its limits, and
        # the failed-authentication counts before and after the client is checked).
        now = self._clock()
        known = self._tats
        if mode is Mode.RELEASE:
            for slot in slots:
                tat = known.get(slot.key)
                if tat is None:
                    continue
                tat -= slot.rate.interval
                if tat <= now:
                    del known[slot.key]
                else:
                    known[slot.key] = tat  # keeps its place: a release is not a new write
            return 0.0
        tats = []
        wait = 0.0
        checks = mode is not Mode.HIT
        for slot in slots:
            tat = known.get(slot.key, now)
            if tat < now:
                tat = now
            tats.append(tat)
            if checks:
                # wait_time, inline: the largest wait of the slots, 0 within EPSILON.
                rate = slot.rate
                slot_wait = tat - now - (rate.period - rate.interval)
                if slot_wait > wait:
                    wait = slot_wait
        if wait <= EPSILON:
            wait = 0.0
        if wait > 0 or mode is Mode.PEEK:
            return wait
        for tat, slot in zip(tats, slots, strict=True):
            rate = slot.rate
            # _store, inline: re-inserted, so the dict's order is oldest write first.
            known.pop(slot.key, None)
            known[slot.key] = min(tat + rate.interval, now + rate.period)
        if now >= self._next_sweep or len(known) > self._max_keys:
            self._sweep(now)
        return 0.0

    def __len__(self) -> int:
        return len(self._tats)

    def _store(self, key: str, tat: float, now: float) -> None:
        self._tats.pop(key, None)  # re-insert: dict order is then oldest write first
        self._tats[key] = tat
        if now >= self._next_sweep or len(self._tats) > self._max_keys:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 10.0
        for key in [k for k, tat in self._tats.items() if tat <= now]:
            del self._tats[key]
        while len(self._tats) > self._max_keys:
            del self._tats[next(iter(self._tats))]


def digest_key(value: str) -> str:
    """A short fixed-length stand-in for an untrusted string (a presented client id).

    Keys never carry raw request input: it may be long or contain anything.
    """
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted_proxies: int) -> str:
    """The address to limit: the connection's peer, or the X-Forwarded-For entry that the
    nearest of ``trusted_proxies`` proxies saw.

    Each proxy appends the address it received the request from, so with N trusted proxies
    the client is the Nth entry from the right. Entries further left were written by the
    client and prove nothing: never the leftmost. A header with fewer than N entries did
    not come through all the proxies, so the peer is used. IPv6 addresses are limited per
    /64, the block one subscriber usually holds.

    An entry may carry a port, as some proxies write it (``203.0.113.7:1234``,
    ``[2001:db8::1]:443``): it counts as its address. An IPv4-mapped IPv6 address
    (``::ffff:203.0.113.7``) counts as the IPv4 address. Anything that is no address
    counts as itself, digested.

    >>> client_address("10.0.0.2", ["6.6.6.6, 203.0.113.7"], 1)
    '203.0.113.7'
    >>> client_address("10.0.0.2", ["[::ffff:203.0.113.7]:443"], 1)
    '203.0.113.7'
    """
    address = peer
    if trusted_proxies > 0:
        hops = [hop.strip() for line in forwarded_for for hop in line.split(",")]
        if len(hops) >= trusted_proxies:
            address = hops[-trusted_proxies]
    return _normalize(address or "unknown")


@functools.lru_cache(maxsize=4096)
def _normalize(address: str) -> str:
    try:
        ip = ipaddress.ip_address(_without_port(address))
    except ValueError:
        return "other:" + digest_key(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def _without_port(entry: str) -> str:
    """``host`` of ``host:port`` and ``[host]:port`` (and ``[host]``); else ``entry``."""
    if entry.startswith("["):
        host, bracket, port = entry[1:].partition("]")
        if bracket and (not port or (port[0] == ":" and _is_port(port[1:]))):
            return host
        return entry
    host, colon, port = entry.partition(":")
    # One colon only: an IPv6 address without brackets has several, and no port.
    if colon and _is_port(port):
        return host
    return entry


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdecimal()


def retry_after(wait: float) -> int:
    """Whole seconds for a ``Retry-After`` header (at least 1 once refused)."""
    return max(1, math.ceil(wait))
