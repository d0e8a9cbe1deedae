"""Rate limits on the routes, with quart-rate-limiter (RFC 6749 §2.3.1 brute force).

"Since this client authentication method involves a password, the authorization server
MUST protect any endpoint utilizing it against brute force attacks." (RFC 6749 §2.3.1)

* Routes carry quart-rate-limiter's own markers: ``@limits(PER_CLIENT, PER_ADDRESS)``
  (``rate_limit``) or ``@rate_exempt``. The markers name a setting; ``Limiter`` sizes them
  from the app's ``Settings``, so one module-level route serves apps with any limits.
* ``failure_limit(client_id)`` guards client authentication: failed attempts are counted
  per (presented client id, client address) and per client address, each limited to
  ``auth_failure_limit``, and per presented client id across all addresses, limited to
  ``FAILURE_CEILING`` (10) times that. An attempt over any of the three is refused with
  429 before any secret is checked or any client is read. Each attempt is counted as a
  failure *before* it is checked (one atomic step, so concurrent attempts cannot all pass
  one check) and given back when it authenticates: successful attempts count nothing, and
  a client's right secret from an address that has not failed is refused only once its
  id reached the ceiling. A lock-out ends at most one ``auth_failure_limit`` period after
  the failures stop, however many there were.
* Keys come from our own functions: the client address is the connection's peer, or an
  X-Forwarded-For entry only through ``trusted_proxies`` hops (quart-rate-limiter's
  default key takes the leftmost entry, which the client writes).

* The token endpoint, served without Quart (``tokendealer.http.token``), carries the
  same marker; ``Limiter.acquire_for`` applies a marked view's limits from keys the caller
  passes, and ``Limiter.failures`` is ``failure_limit`` with the address passed in.

Usage::

    @blueprint.post("/oauth/introspect")
    @limits(PER_CLIENT, PER_ADDRESS)
    async def introspect() -> Response: ...

"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from quart import Quart, Response, current_app, g, request
from quart_rate_limiter import (
    QUART_RATE_LIMITER_EXEMPT_ATTRIBUTE,
    QUART_RATE_LIMITER_LIMITS_ATTRIBUTE,
    RateLimit,
    RateLimiter,
    RateLimitExceeded,
    rate_exempt,
    rate_limit,
)
from werkzeug.exceptions import HTTPException

from tokendealer.http.params import presented
from tokendealer.protocol.errors import InvalidClient
from tokendealer.ratelimit.gcra import (
    LimitStore,
    MemoryStore,
    Mode,
    Slot,
    client_address,
    digest_key,
)
from tokendealer.ratelimit.gcra import retry_after as whole_seconds
from tokendealer.settings import Rate, Settings

__all__ = [
    "FAILURE_CEILING",
    "PER_ADDRESS",
    "PER_CLIENT",
    "Limiter",
    "address_key",
    "client_key",
    "failure_limit",
    "is_exempt",
    "limits",
    "rate_exempt",
    "route_limits",
    "scope_address",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Failures per presented client id from all addresses together, as a multiple of
#: ``auth_failure_limit``: many addresses may lock an id, one address never can.
FAILURE_CEILING = 10

#: (client id, address) pairs whose failure slots ``Limiter`` keeps ready.
FAILURE_SLOTS_CACHED = 1024

EXTENSION = "tokendealer.limiter"


def request_address() -> str:
    """The client address of the current request (see ``ratelimit.client_address``)."""
    cached: str | None = g.get("_td_address")
    if cached is None:
        trusted: int = current_app.extensions[EXTENSION].settings.trusted_proxies
        cached = scope_address(request.scope, trusted)
        g._td_address = cached
    return cached


def scope_address(scope: Any, trusted_proxies: int) -> str:
    """The client address of an ASGI request scope (see ``ratelimit.client_address``)."""
    peer = scope.get("client")
    forwarded: list[str] = []
    if trusted_proxies:  # not even read when no proxy is trusted: it then proves nothing
        forwarded = [
            value.decode("latin-1")
            for name, value in scope["headers"]
            if name.lower() == b"x-forwarded-for"
        ]
    return client_address(peer[0] if peer else None, forwarded, trusted_proxies)


async def address_key() -> str:
    return "address:" + request_address()


async def client_key() -> str:
    """The client id the request presents (Basic or form body), else its address.

    The id is not authenticated yet: this keys the per-client budget; failed attempts
    are limited separately by ``failure_limit``.
    """
    cached: str | None = g.get("_td_client_key")
    if cached is None:
        client_id = await _presented_client_id()
        cached = "client:" + digest_key(client_id) if client_id else await address_key()
        g._td_client_key = cached
    return cached


async def _presented_client_id() -> str | None:
    try:
        return (await presented()).client_id
    except HTTPException:
        return None  # the handler answers the unreadable body itself


@dataclass(eq=False)
class ConfiguredLimit(RateLimit):
    """A quart-rate-limiter marker whose size is the ``Settings`` field ``setting``.

    ``count``/``period`` hold the defaults until ``Limiter`` sizes the marker per app.
    ``keyed_by`` names what the limit counts per: ``"client"`` (the presented client id,
    else the address) or ``"address"``.
    """

    setting: str = ""
    keyed_by: str = "address"


def _marker(setting: str, keyed_by: str, key_function: Callable[[], Any]) -> ConfiguredLimit:
    default: Rate = getattr(Settings, setting)
    return ConfiguredLimit(
        default.count,
        timedelta(seconds=default.period),
        key_function,
        setting=setting,
        keyed_by=keyed_by,
    )


#: Requests per presented client id: ``TOKENDEALER_RATE_LIMIT``.
PER_CLIENT = _marker("rate_limit", "client", client_key)
#: Requests per client address: ``TOKENDEALER_VERIFY_RATE_LIMIT``.
PER_ADDRESS = _marker("verify_rate_limit", "address", address_key)


def limits(*configured: ConfiguredLimit) -> Callable[[F], F]:
    """Mark a view with configured limits (quart-rate-limiter's ``rate_limit`` marker)."""
    return rate_limit(limits=list(configured))


def route_limits(view: Callable[..., Any]) -> list[RateLimit]:
    """The quart-rate-limiter limits marked on a view function."""
    return list(getattr(view, QUART_RATE_LIMITER_LIMITS_ATTRIBUTE, []))


def is_exempt(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, QUART_RATE_LIMITER_EXEMPT_ATTRIBUTE, False))


class Limiter(RateLimiter):
    """quart-rate-limiter's ``RateLimiter`` with configured sizes and atomic updates.

    The library checks every limit (``store.get``) and then advances each (``store.set``):
    between the two, another worker or replica can read the same state and admit too.
    Here the check and the advance are one ``LimitStore.update`` call.
    """

    def __init__(self, app: Quart, settings: Settings, store: LimitStore | None = None) -> None:
        self.app = app
        self.settings = settings
        self.limit_store: LimitStore = store or MemoryStore()
        #: Each view's limits, sized from the settings once (the token path runs this on
        #: every request).
        self._sized: dict[Callable[..., Any], list[tuple[RateLimit, Rate]]] = {}
        #: ``auth_failure_limit`` and the per-id ceiling made from it (``failure_slots``).
        self._failure_rate: Rate | None = None
        self._ceiling_rate = settings.auth_failure_limit
        self._failure_slots: dict[tuple[str, str], tuple[Slot, ...]] = {}
        super().__init__(app, key_function=address_key, store=self.limit_store)
        app.extensions[EXTENSION] = self

    @property
    def enabled(self) -> bool:
        return bool(self.app.config["QUART_RATE_LIMITER_ENABLED"])

    def _limits_for(
        self, view_func: Callable[..., Any], blueprint: Any
    ) -> list[tuple[RateLimit, Rate]]:
        sized = self._sized.get(view_func)
        if sized is None:
            sized = [
                (limit, self._rate(limit))
                for limit in self._get_limits_for_view_function(view_func, blueprint)
            ]
            self._sized[view_func] = sized
        return sized

    def _rate(self, limit: RateLimit) -> Rate:
        if isinstance(limit, ConfiguredLimit):
            rate: Rate = getattr(self.settings, limit.setting)
            return rate
        return Rate(limit.count, limit.period.total_seconds())

    def route_key(self, endpoint: str, limit: RateLimit, key: str) -> str:
        """The store key of ``limit`` on ``endpoint`` for ``key`` (quart-rate-limiter's
        format, so each route keeps a budget of its own)."""
        return f"{self.app.import_name}-{endpoint}-{limit.key}-{key}"

    async def _create_key(self, endpoint: str, rate_limit: RateLimit) -> str:
        key_function = rate_limit.key_function or self.key_function
        return self.route_key(endpoint, rate_limit, await key_function())

    async def acquire(self, slots: list[Slot]) -> None:
        """Admit one request on every slot (one atomic update), or raise 429."""
        wait = await self.limit_store.update(slots, Mode.ACQUIRE)
        if wait > 0:
            raise RateLimitExceeded(whole_seconds(wait))

    async def _before_request(self) -> None:
        """Check and advance every limit of the view in one ``LimitStore.update`` call."""
        if not self.enabled:
            return
        endpoint = request.endpoint
        view_func = current_app.view_functions.get(endpoint) if endpoint else None
        if view_func is None:
            return
        sized = self._limits_for(view_func, current_app.blueprints.get(request.blueprint or ""))
        if sized:
            await self.acquire(
                [Slot(await self._create_key(endpoint or "", limit), rate) for limit, rate in sized]
            )

    async def acquire_for(
        self, view: Callable[..., Any], endpoint: str, client_id: str | None, address: str
    ) -> None:
        """``_before_request`` for a view served without Quart: its marked limits, keyed
        from the presented ``client_id`` (None when there is none) and ``address``."""
        if not self.enabled:
            return
        by_address = "address:" + address
        by_client = "client:" + digest_key(client_id) if client_id else by_address
        slots = []
        for limit, rate in self._limits_for(view, None):
            keyed_by = limit.keyed_by if isinstance(limit, ConfiguredLimit) else "address"
            key = by_client if keyed_by == "client" else by_address
            slots.append(Slot(self.route_key(endpoint, limit, key), rate))
        await self.acquire(slots)

    async def _after_request(self, response: Response) -> Response:
        """No ``RateLimit-*`` headers: they would cost a second store round trip (a Redis
        call with several replicas) on every request, for a draft header clients ignore."""
        return response

    def failure_slots(self, client_id: str, address: str) -> tuple[Slot, ...]:
        """The failed-authentication counts an attempt by ``client_id`` from ``address``
        goes against: the pair, the address, and the id's ceiling over all addresses.

        Kept for the latest ``FAILURE_SLOTS_CACHED`` pairs (a token request computes them
        again for each request otherwise: a digest and three keys)."""
        rate = self.settings.auth_failure_limit
        if rate is not self._failure_rate:
            self._failure_rate = rate
            self._ceiling_rate = Rate(rate.count * FAILURE_CEILING, rate.period)
            self._failure_slots.clear()
        cached = self._failure_slots.get((client_id, address))
        if cached is not None:
            return cached
        by_client = digest_key(client_id)
        slots = (
            Slot(f"auth-failures:pair:{by_client}:{address}", rate),
            Slot("auth-failures:address:" + address, rate),
            Slot("auth-failures:client:" + by_client, self._ceiling_rate),
        )
        if len(self._failure_slots) >= FAILURE_SLOTS_CACHED:
            self._failure_slots.clear()  # rotating ids must not grow it without bound
        self._failure_slots[(client_id, address)] = slots
        return slots

    @asynccontextmanager
    async def failures(self, client_id: str, address: str) -> AsyncIterator[None]:
        """Refuse (429) an attempt over a failed-authentication limit (``failure_slots``);
        otherwise count it as a failure up front and give it back unless the block raises
        ``InvalidClient``.

        Reserving before the block runs makes the check and the count one atomic step:
        of a burst of concurrent attempts, at most the limit get past it (across workers
        and replicas with Redis), and the rest are refused without a secret check or a
        client read. With Redis a successful attempt costs a second round trip (the
        release); a failed one, one. An error other than ``InvalidClient`` (the store
        down) is no failure and gives the attempt back too; a cancelled attempt stays
        counted. While an attempt is being checked it counts: a client sending more than
        the limit of concurrent requests from one address while its record is being read
        (a cache miss) has the excess refused, even with the right secret.

        The count is kept for any presented id, registered or not, so a 429 says nothing
        about which ids exist.
        """
        slots = self.failure_slots(client_id, address)
        wait = await self.limit_store.update(slots, Mode.ACQUIRE)
        if wait > 0:
            raise RateLimitExceeded(whole_seconds(wait))
        try:
            yield
        except InvalidClient:
            raise  # counted already
        except Exception:
            await self.limit_store.update(slots, Mode.RELEASE)
            raise
        await self.limit_store.update(slots, Mode.RELEASE)


@asynccontextmanager
async def failure_limit(client_id: str) -> AsyncIterator[None]:
    """``Limiter.failures`` for the current Quart request."""
    limiter: Limiter = current_app.extensions[EXTENSION]
    async with limiter.failures(client_id, request_address()):
        yield
