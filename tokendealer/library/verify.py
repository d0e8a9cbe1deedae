"""Verifying access tokens in a resource server: ``TokenVerifier``.

A service that receives tokens from the dealer verifies them locally against the
issuer's published keys (RFC 7517) with the same strict rules as the dealer itself: the
checks live in ``tokendealer.library.verification``, shared by both; this module adds only the
key set cache in front of it and the service's own policy (scopes, maximum token age).

>>> verifier = TokenVerifier("https://dealer.example", "orders-api")
>>> claims = await verifier.verify(token, scopes=["write"])

The key set cache:

* the JWKS URL is ``jwks_url`` when given, else the ``jwks_uri`` of the issuer's RFC 8414
  metadata (``/.well-known/oauth-authorization-server``), else
  ``{issuer}/.well-known/jwks.json``;
* a fetched set is kept for its ``Cache-Control: max-age``, clamped to
  ``[min_cache, max_cache]`` (default 300 s when the header is missing);
* a token naming an unknown ``kid`` triggers at most one refetch per
  ``refetch_cooldown`` seconds, so forged ``kid`` values cannot make the verifier hammer
  the issuer;
* once that time is up the set is stale, not gone (stale-while-revalidate): a token
  whose ``kid`` is in it verifies at once, while one refresh runs in the background (a
  task of the event loop for ``verify``; for ``verify_sync``, the one caller that takes
  the lock refreshes while the others go on with the stale set);
* when a refresh fails, the last good set stays in use (retried after the cooldown);
* one fetch at a time per event loop for ``verify``, per verifier for ``verify_sync``:
  only a caller that cannot do without a fetch (no set yet, or an unknown ``kid``) waits
  for the fetch in flight, and never longer than ``fetch_timeout``;
* a refresh (discovery and JWKS together) is given up after ``fetch_timeout`` seconds
  (default 5), however slowly the server trickles its body, and a document larger than
  ``max_document_bytes`` (default 1 MiB) is refused: both are failed refreshes.
  ``verify_sync`` checks the deadline between reads, each read bounded by the time left
  (``tokendealer.library.fetching``), so it may overrun by one read;
* when the application uses OpenTelemetry, each fetch carries the trace context
  (W3C ``traceparent``) of the span current where it started: the verifying call's, or
  for a background refresh, the call's that started it.

This module imports nothing of the server (no store, no app, no private keys).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tokendealer.library.algorithms import SIGNING_ALGORITHMS, PublicKey
from tokendealer.library.fetching import Document, Fetcher, FetchFailed
from tokendealer.library.jwk import verification_keys
from tokendealer.library.verification import (
    ExpiredToken,
    ImmatureToken,
    InvalidAudience,
    InvalidClaims,
    InvalidIssuer,
    InvalidSignature,
    InvalidToken,
    MalformedToken,
    RevokedToken,
    UnknownKey,
    verify_access_token,
)

__all__ = [
    "ExpiredToken",
    "ImmatureToken",
    "InsufficientScope",
    "InvalidAudience",
    "InvalidClaims",
    "InvalidIssuer",
    "InvalidSignature",
    "InvalidToken",
    "KeySetUnavailable",
    "MalformedToken",
    "RevokedToken",
    "TokenVerifier",
    "UnknownKey",
    "scope_tuple",
]

log = logging.getLogger("tokendealer.verify")

METADATA_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/.well-known/jwks.json"
#: A JWK Set or metadata document larger than this is refused (the default).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: A refresh (discovery and JWKS) taking longer than this is given up (the default).
FETCH_TIMEOUT = 5.0
DEFAULT_CACHE = 300.0
#: Without any key set, a failed fetch is retried after this many seconds.
RETRY_WITHOUT_KEYS = 1.0

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)

Keys = Mapping[str, tuple[str, PublicKey]]


class InsufficientScope(InvalidToken):
    """The token is valid but lacks a scope the caller requires (RFC 6750 §3.1).

    A subclass of ``InvalidToken`` so that code catching only ``InvalidToken`` still
    denies; catch it first to answer 403 ``insufficient_scope`` rather than 401.
    """

    description = "The token lacks a required scope."

    def __init__(self, required: Iterable[str], description: str | None = None) -> None:
        super().__init__(description)
        self.required = tuple(required)


class KeySetUnavailable(Exception):
    """No key set could be fetched from the issuer and none is cached.

    Not the token's fault: a service should answer 503, not 401.
    """


class _FetchError(Exception):
    pass


def scope_tuple(scopes: str | Iterable[str]) -> tuple[str, ...]:
    """Required scopes as a tuple: a string is space-separated scopes (RFC 6749 §3.3),
    as in the token's own claim, not a sequence of one-letter scopes.

    >>> scope_tuple("read write"), scope_tuple(["read"])
    (('read', 'write'), ('read',))
    """
    return tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)


def cache_seconds(
    cache_control: str | None, minimum: float, maximum: float, default: float = DEFAULT_CACHE
) -> float:
    """The ``max-age`` of a ``Cache-Control`` header, clamped to ``[minimum, maximum]``."""
    match = _MAX_AGE.search(cache_control or "")
    seconds = float(match.group(1)) if match else default
    return min(max(seconds, minimum), maximum)


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, METADATA_PATH + path, "", ""))


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _FetchError("not JSON") from None


def _jwks_uri_from_metadata(issuer: str, status: int, body: bytes) -> str | None:
    """The metadata's ``jwks_uri``, or None when the issuer publishes no usable metadata."""
    if status != 200:
        return None
    try:
        document = _decode_json(body)
    except _FetchError:
        return None
    if not isinstance(document, dict):
        return None
    # RFC 8414 §3.3: "The "issuer" value returned MUST be identical to the authorization
    # server's issuer identifier value ... If these values are not identical, the data
    # contained in the response MUST NOT be used."
    if document.get("issuer") != issuer:
        log.warning("jwks_metadata_issuer_mismatch", extra={"issuer": issuer})
        return None
    uri = document.get("jwks_uri")
    if not isinstance(uri, str) or urlsplit(uri).scheme not in ("https", "http"):
        return None
    return uri


def _key_set(
    status: int, headers: httpx.Headers, body: bytes, algorithms: tuple[str, ...]
) -> dict[str, tuple[str, PublicKey]]:
    if status != 200:
        raise _FetchError(f"HTTP {status}")
    try:
        keys = verification_keys(_decode_json(body), algorithms)
    except ValueError:
        raise _FetchError("not a JWK Set") from None
    if not keys:
        # An empty set would reject every token; keeping the last good one is safer.
        raise _FetchError("no usable signing key")
    return keys


@dataclass
class _KeyCache:
    """The cache's state and decisions, shared by the async and sync paths (no I/O)."""

    clock: Callable[[], float]
    cooldown: float
    keys: dict[str, tuple[str, PublicKey]] | None = None
    fresh_until: float = -math.inf
    last_unknown_refetch: float = -math.inf
    fetches: int = field(default=0)
    #: A background refresh was cancelled before it ended (its event loop closed, as with
    #: one ``asyncio.run`` per call): the next stale caller refreshes in the foreground.
    interrupted: bool = False
    #: When the background refresh of the stale set began (None: none is pending). A
    #: refresh ends, stored or failed, within its deadline; one pending for longer has
    #: died with its event loop unannounced (a loop closed without cancelling its tasks),
    #: and the stale set must not keep serving on its account.
    refreshing_since: float | None = None

    def stale(self) -> bool:
        return self.clock() >= self.fresh_until

    def refresh_overdue(self, deadline: float) -> bool:
        """True when the stale set may no longer serve while a refresh runs elsewhere."""
        if self.interrupted:
            return True
        if self.refreshing_since is None:
            self.refreshing_since = self.clock()
            return False
        return self.clock() - self.refreshing_since > deadline

    def store(self, keys: dict[str, tuple[str, PublicKey]], ttl: float) -> None:
        self.keys = keys
        self.fresh_until = self.clock() + ttl
        self.interrupted = False
        self.refreshing_since = None

    def failed(self) -> None:
        # Keep the last good set; try again after the cooldown (or soon, with no set).
        retry = self.cooldown if self.keys is not None else RETRY_WITHOUT_KEYS
        self.fresh_until = self.clock() + retry
        self.interrupted = False
        self.refreshing_since = None

    def claim_unknown_kid_refetch(self) -> bool:
        """True (once per cooldown) when an unknown ``kid`` may trigger a refetch."""
        now = self.clock()
        if now - self.last_unknown_refetch < self.cooldown:
            return False
        self.last_unknown_refetch = now
        return True


class TokenVerifier(Fetcher):
    """Verify the dealer's JWT access tokens against its published keys.

    ``issuer`` must equal the tokens' ``iss`` exactly; ``audience`` is this service's
    identifier, which the tokens' ``aud`` must contain (RFC 9068 §4). ``algorithms``
    limits the accepted algorithms (default all the dealer signs with: RS256, RS384,
    RS512, PS256, PS384, PS512, ES256, ES384 and EdDSA); the algorithm of a token is
    always the one its key is published for, and the key must be of its type.
    ``require_scopes`` are checked on every call, ``scopes`` passed to ``verify`` in
    addition. ``max_token_age`` (seconds), when set, refuses tokens issued longer ago
    than that, even if not yet expired.

    >>> verifier = TokenVerifier("https://dealer.example", "orders-api")
    >>> claims = await verifier.verify(token, scopes=["write"])

    ``http_client`` / ``sync_http_client`` may be given (for proxies, TLS settings,
    tests); without them each fetch uses a short-lived client of its own, so there is
    nothing to close. ``timeout`` bounds each network operation of such a client;
    ``fetch_timeout`` a whole refresh, however slowly the server sends;
    ``max_document_bytes`` the size of the metadata and JWK Set documents. One verifier
    may serve any number of threads (``verify_sync``) and event loops (``verify``).
    ``clock`` is a monotonic clock in seconds for the cache, replaceable in tests (the
    fetch deadline is always real time).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str | None = None,
        algorithms: Iterable[str] | None = None,
        leeway: float = 30,
        require_scopes: Iterable[str] = (),
        max_token_age: float | None = None,
        min_cache: float = 60,
        max_cache: float = 86400,
        refetch_cooldown: float = 30,
        timeout: float = 5,
        fetch_timeout: float = FETCH_TIMEOUT,
        max_document_bytes: int = MAX_DOCUMENT_BYTES,
        http_client: httpx.AsyncClient | None = None,
        sync_http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(SIGNING_ALGORITHMS if algorithms is None else algorithms)
        refused = [alg for alg in self.algorithms if alg not in SIGNING_ALGORITHMS]
        if refused or not self.algorithms:
            # RFC 8725 §3.1: no "none", no HMAC keyed with a public key.
            raise ValueError(f"algorithms must be among {', '.join(SIGNING_ALGORITHMS)}: {refused}")
        self.leeway = leeway
        self.require_scopes = scope_tuple(require_scopes)
        self.max_token_age = max_token_age
        self.min_cache = min_cache
        self.max_cache = max_cache
        self.fetch_timeout = fetch_timeout
        self.max_document_bytes = max_document_bytes
        Fetcher.__init__(self, timeout, http_client, sync_http_client)
        self._jwks_url = jwks_url
        self._discovered_url: str | None = None
        self._cache = _KeyCache(clock=clock, cooldown=refetch_cooldown)
        self._sync_lock = threading.Lock()

    # -- public API ----------------------------------------------------------------------

    @property
    def fetches(self) -> int:
        """How many key set fetches were attempted (successful or not)."""
        return self._cache.fetches

    async def verify(self, token: str | bytes, *, scopes: Iterable[str] = ()) -> dict[str, Any]:
        """Return the verified claims of ``token``, or raise an ``InvalidToken``.

        Raises ``InsufficientScope`` (an ``InvalidToken``) when a required scope is
        missing and ``KeySetUnavailable`` when the issuer's keys cannot be had.
        """
        keys: Keys | None = self._cache.keys
        if keys is None or self._cache.stale():  # else a fresh set at hand: no await
            keys = await self._current_keys()
        try:
            claims = self._verify(token, keys)
        except UnknownKey:
            newer = await self._keys_for_unknown_kid(keys)
            if newer is None:
                raise
            claims = self._verify(token, newer)
        return self._check_policy(claims, scopes)

    def verify_sync(self, token: str | bytes, *, scopes: Iterable[str] = ()) -> dict[str, Any]:
        """The blocking counterpart of ``verify`` (for threads, WSGI apps, scripts)."""
        keys = self._current_keys_sync()
        try:
            claims = self._verify(token, keys)
        except UnknownKey:
            newer = self._keys_for_unknown_kid_sync(keys)
            if newer is None:
                raise
            claims = self._verify(token, newer)
        return self._check_policy(claims, scopes)

    async def refresh(self) -> None:
        """Fetch the key set now (e.g. at startup), or wait for the fetch in flight;
        raises ``KeySetUnavailable`` when no key set could be had."""
        await asyncio.shield(self._start_refresh())
        if self._cache.keys is None:
            raise KeySetUnavailable("the issuer's key set could not be fetched")

    def refresh_sync(self) -> None:
        """The blocking counterpart of ``refresh``."""
        self._refresh_sync_unless_busy(lambda: True, wait=True)
        if self._cache.keys is None:
            raise KeySetUnavailable("the issuer's key set could not be fetched")

    # -- verification ----------------------------------------------------------------------

    def _verify(self, token: str | bytes, keys: Keys) -> dict[str, Any]:
        # Every token check is the shared core's; nothing is re-implemented here.
        return verify_access_token(
            token, keys, issuer=self.issuer, audience=self.audience, leeway=self.leeway
        )

    def _check_policy(self, claims: dict[str, Any], scopes: Iterable[str]) -> dict[str, Any]:
        if not (scopes or self.require_scopes or self.max_token_age is not None):
            return claims  # no policy to apply
        if self.max_token_age is not None and time.time() - claims["iat"] > self.max_token_age:
            raise ExpiredToken("The token is older than this service accepts.")
        required = dict.fromkeys((*self.require_scopes, *scope_tuple(scopes)))
        granted = set(claims.get("scope", "").split())
        if not granted.issuperset(required):
            raise InsufficientScope(required)
        return claims

    # -- the key set, async ------------------------------------------------------------------

    async def _current_keys(self) -> Keys:
        if self._cache.stale():
            fetch = self._start_refresh()
            if self._cache.keys is None or self._cache.refresh_overdue(self.fetch_timeout):
                await asyncio.shield(fetch)  # nothing to verify with, or no background
            # else: the stale set serves while the fetch runs in the background.
        if self._cache.keys is None:
            raise KeySetUnavailable("the issuer's key set could not be fetched")
        return self._cache.keys

    async def _keys_for_unknown_kid(self, seen: Keys) -> Keys | None:
        fetch = self._fetch_in_flight()
        if fetch is None and self._cache.keys is seen and self._cache.claim_unknown_kid_refetch():
            fetch = self._start_refresh()
        if fetch is not None:
            # Wait for the fetch in flight rather than start a second one: its set is the
            # issuer's current one, and it ends within the deadline.
            await asyncio.shield(fetch)
        return None if self._cache.keys is seen else self._cache.keys

    def _start_refresh(self) -> asyncio.Task[None]:
        """This event loop's refresh in flight, or a new one running in the background."""
        return self._start_fetch(self._refresh)

    async def _refresh(self) -> None:
        """Fetch and store the key set within the deadline; on failure keep the last good one."""
        self._cache.fetches += 1
        try:
            async with asyncio.timeout(self.fetch_timeout):
                url = self._jwks_url or self._discovered_url or await self._discover()
                status, headers, body = await self._get(url)
            keys = _key_set(status, headers, body, self.algorithms)
        except (httpx.HTTPError, FetchFailed, _FetchError, TimeoutError) as exc:
            self._fetch_failed(exc)
            return
        except asyncio.CancelledError:
            self._cache.interrupted = True
            raise
        self._cache.store(keys, self._ttl(headers))

    async def _discover(self) -> str:
        fallback = self.issuer.rstrip("/") + JWKS_PATH
        status, _, body = await self._get(metadata_url(self.issuer))
        return self._remember(_jwks_uri_from_metadata(self.issuer, status, body) or fallback)

    async def _get(self, url: str) -> Document:
        return await self._get_document(url, self.max_document_bytes)

    # -- the key set, sync -------------------------------------------------------------------

    def _current_keys_sync(self) -> Keys:
        if self._cache.stale():
            # Without a set, wait for the fetch in flight; with one, a caller that finds
            # the lock taken goes on with the stale set.
            self._refresh_sync_unless_busy(self._cache.stale, wait=self._cache.keys is None)
        if self._cache.keys is None:
            raise KeySetUnavailable("the issuer's key set could not be fetched")
        return self._cache.keys

    def _keys_for_unknown_kid_sync(self, seen: Keys) -> Keys | None:
        self._refresh_sync_unless_busy(
            lambda: self._cache.keys is seen and self._cache.claim_unknown_kid_refetch(),
            wait=True,
        )
        return None if self._cache.keys is seen else self._cache.keys

    def _refresh_sync_unless_busy(self, needed: Callable[[], bool], *, wait: bool) -> None:
        """Refresh if ``needed()`` (decided under the lock). When another thread holds the
        lock, its fetch is the one in flight: never start a second one, and with ``wait``
        wait for it, at most ``fetch_timeout`` seconds (the fetch's own bound)."""
        if self._sync_lock.acquire(blocking=False):
            try:
                if needed():
                    self._refresh_sync()
            finally:
                self._sync_lock.release()
        elif wait and self._sync_lock.acquire(timeout=self.fetch_timeout):
            self._sync_lock.release()

    def _refresh_sync(self) -> None:
        self._cache.fetches += 1
        deadline = time.monotonic() + self.fetch_timeout
        try:
            url = self._jwks_url or self._discovered_url or self._discover_sync(deadline)
            status, headers, body = self._get_document_sync(url, self.max_document_bytes, deadline)
            keys = _key_set(status, headers, body, self.algorithms)
        except (httpx.HTTPError, FetchFailed, _FetchError) as exc:
            self._fetch_failed(exc)
            return
        self._cache.store(keys, self._ttl(headers))

    def _discover_sync(self, deadline: float) -> str:
        fallback = self.issuer.rstrip("/") + JWKS_PATH
        status, _, body = self._get_document_sync(
            metadata_url(self.issuer), self.max_document_bytes, deadline
        )
        return self._remember(_jwks_uri_from_metadata(self.issuer, status, body) or fallback)

    # -- shared helpers ----------------------------------------------------------------------

    def _remember(self, url: str) -> str:
        self._discovered_url = url
        return url

    def _ttl(self, headers: httpx.Headers) -> float:
        return cache_seconds(headers.get("cache-control"), self.min_cache, self.max_cache)

    def _fetch_failed(self, exc: Exception) -> None:
        # Discover again next time: the issuer may have moved its keys.
        self._discovered_url = None
        self._cache.failed()
        log.warning(
            "jwks_fetch_failed",
            extra={
                "issuer": self.issuer,
                "error": type(exc).__name__,
                "detail": str(exc),
                "keeping_previous": self._cache.keys is not None,
            },
        )
