"""The public keys a client signs its assertions with: registered with the client (a JWK
Set in its record), or published by it at its ``jwks_uri``; and the keys of a trusted
issuer (workload identity), published at the trust's ``jwks_uri``.

A published set is fetched with the client library's discipline (``Fetcher``): its
``Cache-Control: max-age`` kept within ``[MIN_CACHE, MAX_CACHE]``; an unknown ``kid``
fetches again at most once per ``COOLDOWN``; the whole fetch bounded by a deadline and a
size cap; after a failure the last good set stays in use, and the next try waits
``COOLDOWN``. A set that cannot be had is no key at all: the assertion fails as
``invalid_client`` (401), never as a server error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from jwt import PyJWK

from tokendealer.library.fetching import Fetcher, FetchFailed
from tokendealer.library.verify import cache_seconds
from tokendealer.log import get_logger
from tokendealer.protocol.assertions import parse_key_set
from tokendealer.protocol.clients import Client
from tokendealer.service.flights import SharedTasks

log = get_logger("tokendealer.client_keys")

MIN_CACHE = 60.0
MAX_CACHE = 3600.0
COOLDOWN = 30.0
MAX_DOCUMENT_BYTES = 64 * 1024
#: Published sets kept; past it the cache starts over (ids rotating must not grow it).
MAX_SETS = 1024


@dataclass
class _Published:
    keys: list[PyJWK]
    fresh_until: float
    #: No fetch before this time after a failed one.
    retry_at: float = 0.0
    #: No fetch for an unknown ``kid`` before this time (one per cooldown).
    unknown_kid_at: float = 0.0


class ClientKeys(Fetcher):
    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(timeout, None, None)
        self._sets: dict[str, _Published] = {}
        #: Registered sets, parsed once per record's text (not per request).
        self._registered: dict[str, list[PyJWK]] = {}
        #: The fetch in flight for each URI: concurrent requests share it.
        self._fetching: SharedTasks[str, list[PyJWK]] = SharedTasks()
        self._clock = clock

    async def keys(self, client: Client, kid: str | None) -> list[PyJWK]:
        """The client's keys; a published set is fetched again when stale, or when
        ``kid`` is not in it (at most once per cooldown), but not within the cooldown
        after a failed fetch."""
        if client.jwks:
            return self._parsed(client.jwks)
        if not client.jwks_uri:
            return []
        return await self.published(client.jwks_uri, kid)

    async def published(self, uri: str, kid: str | None) -> list[PyJWK]:
        """The keys published at ``uri`` (a client's, or a trusted issuer's), fetched
        as ``keys`` says."""
        now = self._clock()
        known = self._sets.get(uri)
        if known is None:
            return await self._fetch(uri, None, now)
        if now < known.retry_at:
            return known.keys
        if now >= known.fresh_until:
            return await self._fetch(uri, known, now)
        unknown = kid is not None and all(key.key_id != kid for key in known.keys)
        if unknown and now >= known.unknown_kid_at:
            known.unknown_kid_at = now + COOLDOWN
            return await self._fetch(uri, known, now)
        return known.keys

    def _parsed(self, text: str) -> list[PyJWK]:
        keys = self._registered.get(text)
        if keys is None:
            try:
                keys = parse_key_set(text)
            except ValueError:
                keys = []  # registration checks the set; a bad one is no key at all
            if len(self._registered) >= MAX_SETS:
                self._registered.clear()
            self._registered[text] = keys
        return keys

    async def _fetch(self, uri: str, known: _Published | None, now: float) -> list[PyJWK]:
        """One fetch of ``uri`` at a time: a request arriving while one runs waits for it
        (shielded: a caller that goes away does not cancel it for the others)."""
        return await self._fetching.join(uri, lambda: self._get(uri, known, now))

    async def _get(self, uri: str, known: _Published | None, now: float) -> list[PyJWK]:
        try:
            async with asyncio.timeout(self.timeout):
                status, headers, body = await self._get_document(uri, MAX_DOCUMENT_BYTES)
            if status != 200:
                raise FetchFailed(f"HTTP {status}")
            keys = parse_key_set(body.decode("utf-8", "replace"))
        except Exception as exc:
            log.warning("client_jwks_fetch_failed", jwks_uri=uri, reason=_reason(exc))
            if known is None:
                known = _Published([], now)
                self._remember(uri, known)
            known.retry_at = now + COOLDOWN  # whatever fails, not again before the cooldown
            return known.keys
        ttl = cache_seconds(headers.get("cache-control"), MIN_CACHE, MAX_CACHE, MIN_CACHE * 5)
        unknown_kid_at = known.unknown_kid_at if known is not None else 0.0
        self._remember(uri, _Published(keys, now + ttl, unknown_kid_at=unknown_kid_at))
        return keys

    def _remember(self, uri: str, published: _Published) -> None:
        if uri not in self._sets and len(self._sets) >= MAX_SETS:
            self._sets.clear()
        self._sets[uri] = published


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
