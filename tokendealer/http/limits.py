"""Rate limits on the routes (RFC 6749 §2.3.1: brute force).

"Since this client authentication method involves a password, the authorization server
MUST protect any endpoint utilizing it against brute force attacks." (RFC 6749 §2.3.1)

Two limiters share one store (``tokendealer.ratelimit``: per process, or Redis):

* ``Limiter`` guards the OAuth pipeline's endpoints: each request's declared limits are
  checked and advanced in one atomic store update (``admit``), and client authentication
  runs under the failed-authentication limit (``failures``). A registered client may have
  a per-client limit of its own (``Client.rate_limit``), enforced in place of the
  service-wide one or only monitored;
* quart-rate-limiter, through its public API (``install_route_limits``), guards the Quart
  routes: each carries a limit (``limit_per_address`` on its blueprint) or is marked
  ``rate_exempt`` (the key set, the metadata and the probes are, on purpose).

Keys never carry raw request input: client ids are digested (``digest_key``), addresses
normalised (``client_address``). With tracing on, each count of ``Limiter`` is a
``rate_limit`` span (``tokendealer.observe.tracing``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from quart import Blueprint, Quart, current_app, request
from quart_rate_limiter import (
    KeyCallable,
    RateLimit,
    RateLimiter,
    RateLimitExceeded,
    limit_blueprint,
    rate_limit,
)
from quart_rate_limiter.store import RateLimiterStoreABC

from tokendealer.http.exchange import scope_address
from tokendealer.log import get_logger
from tokendealer.observe import events, tracing
from tokendealer.protocol.credentials import MAX_CLIENT_ID_LENGTH
from tokendealer.protocol.errors import InvalidClient
from tokendealer.protocol.rates import ENFORCE, rate_text
from tokendealer.ratelimit.gcra import LimitStore, Mode, Slot, digest_key, retry_after
from tokendealer.settings import Rate, Settings

if TYPE_CHECKING:
    from tokendealer.service.dealer import Dealer

B = TypeVar("B", bound=Blueprint)

#: The per-id ceiling of failed authentications over all addresses, as a multiple of
#: ``auth_failure_limit`` (which applies per (id, address) and per address).
FAILURE_CEILING = 10
#: How many requests' slots are kept computed (bounded caches), for client ids no longer
#: than a registered one can be (a presented id may be as long as the body).
SLOTS_CACHED = 1024
MAX_CACHED_ID = MAX_CLIENT_ID_LENGTH

log = get_logger("tokendealer.limits")


@dataclass(frozen=True)
class Limit:
    """``setting`` (a ``Rate`` field of ``Settings``) counted per ``per``: the client id
    the request presents (its address when it presents none), or its address."""

    setting: str
    per: Literal["client", "address"]

    def rate(self, settings: Settings) -> Rate:
        rate: Rate = getattr(settings, self.setting)
        return rate


#: Requests per presented client id: ``TOKENDEALER_RATE_LIMIT``.
PER_CLIENT = Limit("rate_limit", "client")
#: Requests per client address: ``TOKENDEALER_VERIFY_RATE_LIMIT``.
PER_ADDRESS = Limit("verify_rate_limit", "address")


#: A registered client's own per-client limit and its mode, as ``admit`` applies it.
OwnLimit = tuple[Rate, str]


class Limiter:
    """The OAuth pipeline's limits, atomic across workers and replicas with Redis.

    ``dealer`` gives the app's dealer once it serves (``None`` before): its client
    registry says which presented ids are registered clients with limits of their own
    (``ClientRegistry.limited``), without a read for any other id.
    """

    def __init__(
        self,
        settings: Settings,
        store: LimitStore,
        dealer: Callable[[], Dealer | None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._dealer = dealer
        rate = settings.auth_failure_limit
        self._failure_rate = rate
        self._ceiling_rate = Rate(rate.count * FAILURE_CEILING, rate.period)
        self._failure_slots: dict[tuple[str, str], tuple[Slot, ...]] = {}
        #: (endpoint, client id, address, own limit) -> (slots enforced, slots monitored).
        self._request_slots: dict[
            tuple[str, str | None, str, OwnLimit | None], tuple[list[Slot], list[Slot]]
        ] = {}

    async def admit(
        self, endpoint: str, limits: Sequence[Limit], client_id: str | None, address: str
    ) -> None:
        """Count a request to ``endpoint`` against each of its ``limits`` (one atomic
        update), or raise 429. A request that presents no client id (``None``) is
        counted by address for its per-client limits.

        For a registered client with a limit of its own, ``PER_CLIENT`` is that limit
        (``enforce``); or (``monitor``) the service-wide limit stays in force and the
        client's own is counted too, in a second store update: a request over it is
        logged (``rate_limit_monitored``) and reported (``observe.events``), never
        refused. A client's own limit is counted under a key of its own, which names the
        rate: a limit set or changed starts with its full allowance, whatever the client
        used under the one before."""
        with tracing.span("rate_limit", endpoint=endpoint, check="requests"):
            own = await self._own_limit(limits, client_id)
            key = (endpoint, client_id, address, own)
            slots = self._request_slots.get(key)
            if slots is None:
                slots = self._slots(endpoint, limits, client_id, address, own)
                if client_id is None or len(client_id) <= MAX_CACHED_ID:
                    if len(self._request_slots) >= SLOTS_CACHED:
                        self._request_slots.clear()  # rotating ids must not grow it for ever
                    self._request_slots[key] = slots
            enforced, monitored = slots
            wait = await self.store.update(enforced, Mode.ACQUIRE)
            if wait > 0:
                raise RateLimitExceeded(retry_after(wait))
            if monitored and own is not None and client_id is not None:  # monitor mode
                await self._monitor(endpoint, client_id, monitored, own[0])

    async def _monitor(
        self, endpoint: str, client_id: str, monitored: list[Slot], rate: Rate
    ) -> None:
        """Count a request against the client's own limit in ``monitor`` mode: over it,
        logged and reported, never refused (nor counted: it would have been refused)."""
        if await self.store.update(monitored, Mode.ACQUIRE) > 0:
            log.info(
                "rate_limit_monitored",
                client_id=client_id,
                endpoint=endpoint,
                limit=rate_text(rate),
            )
            events.rate_limit_monitored(endpoint, client_id)

    async def _own_limit(self, limits: Sequence[Limit], client_id: str | None) -> OwnLimit | None:
        """The limit of its own of the registered client ``client_id``, if it has one
        and ``limits`` hold the per-client limit; no store read for any other id."""
        if client_id is None or len(client_id) > MAX_CLIENT_ID_LENGTH or PER_CLIENT not in limits:
            return None
        dealer = self._dealer() if self._dealer is not None else None
        if dealer is None:
            return None
        client = await dealer.registry.limited(client_id)
        if client is None or client.rate_limit is None:
            return None
        return client.rate_limit, client.rate_limit_mode

    def _slots(
        self,
        endpoint: str,
        limits: Sequence[Limit],
        client_id: str | None,
        address: str,
        own: OwnLimit | None,
    ) -> tuple[list[Slot], list[Slot]]:
        """The slots of a request, enforced and monitored (``admit`` keeps them for the
        latest ``SLOTS_CACHED`` requests: a digest and a key per limit, on every request
        otherwise)."""
        by_address = "address:" + address
        by_client = "client:" + digest_key(client_id) if client_id else by_address
        enforced: list[Slot] = []
        monitored: list[Slot] = []
        for limit in limits:
            per = by_client if limit.per == "client" else by_address
            slot = Slot(f"{endpoint}:{limit.setting}:{per}", limit.rate(self.settings))
            if own is not None and limit == PER_CLIENT:
                rate, mode = own
                own_key = f"{endpoint}:{limit.setting}:{rate.count}/{rate.period:g}"
                if mode == ENFORCE:
                    slot = Slot(f"{own_key}:{per}", rate)
                else:
                    monitored.append(Slot(f"{own_key}:monitor:{per}", rate))
            enforced.append(slot)
        return enforced, monitored

    def failure_slots(self, client_id: str, address: str) -> tuple[Slot, ...]:
        """The failed-authentication counts an attempt by ``client_id`` from ``address``
        goes against: the pair, the address, and the id's ceiling over all addresses.

        Kept for the latest ``SLOTS_CACHED`` pairs of ids no longer than a registered one
        (a token request computes them again for each request otherwise: a digest and
        three keys)."""
        cached = self._failure_slots.get((client_id, address))
        if cached is not None:
            return cached
        by_client = digest_key(client_id)
        slots = (
            Slot(f"auth-failures:pair:{by_client}:{address}", self._failure_rate),
            Slot("auth-failures:address:" + address, self._failure_rate),
            Slot("auth-failures:client:" + by_client, self._ceiling_rate),
        )
        if len(client_id) <= MAX_CACHED_ID:
            if len(self._failure_slots) >= SLOTS_CACHED:
                self._failure_slots.clear()  # rotating ids must not grow it for ever
            self._failure_slots[(client_id, address)] = slots
        return slots

    def failures(self, client_id: str, address: str, *, reads: bool) -> FailureCount:
        """Run client authentication under the failed-authentication limits
        (``failure_slots``). An attempt that comes while a count is full gets 429 before
        any secret is checked. Otherwise:

        * the one attempt that reads its client from the store (``reads``: see
          ``Dealer.reading``) counts as a failure while it is checked, and is given back
          if it succeeds: of a burst of new or random ids, at most the limit are read
          and checked, the rest 429 unchecked (with Redis, across workers and
          replicas). An error other than ``InvalidClient`` (the store down) gives it
          back too; a cancelled one stays counted;
        * any other attempt (its id's record cached, its read under way for another
          attempt, or an id no client could have) is checked first, then its outcome
          answered only if the counts admit it, in one atomic store update: a failure is
          counted (401) unless a count is full by then, and is then 429, uncounted; a
          success (200) is 429 too if a count is full by then. An error other than
          ``InvalidClient``, or a cancellation (no answer goes out), counts nothing.

        Either way, at most the limit of failures are counted and answered 401, and no
        attempt reveals a right secret once a count is full: a wrong guess and a right
        one beyond the limit both get 429. A client's concurrent requests do not count
        against it, whatever they wait for; clients behind one address share its
        counts, where a first read holds a place while it runs. The count is kept for
        any presented id, registered or not, so a 429 says nothing about which ids exist.
        """
        return FailureCount(self.store, self.failure_slots(client_id, address), reads)


class FailureCount:
    """``Limiter.failures``: an attempt refused (429) while a failed-authentication count
    is full; counted as a failure while it is checked when it ``reserves``, otherwise
    counted (a failure) or checked (a success) on the way out."""

    __slots__ = ("_reserves", "_slots", "_store")

    def __init__(self, store: LimitStore, slots: tuple[Slot, ...], reserves: bool) -> None:
        self._store = store
        self._slots = slots
        self._reserves = reserves

    async def __aenter__(self) -> None:
        with tracing.span("rate_limit", check="failed_authentication"):
            await self._refuse_if_full(Mode.ACQUIRE if self._reserves else Mode.PEEK)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _trace: object
    ) -> None:
        failed = kind is not None and issubclass(kind, InvalidClient)
        if self._reserves:
            # Counted already: a failure, or an attempt cancelled on the way. Given back:
            # a success, or an error that is no failure (the store down...).
            if kind is None or (issubclass(kind, Exception) and not failed):
                await self._store.update(self._slots, Mode.RELEASE)
            return
        if kind is None:
            # A success is answered only while every count admits one more attempt.
            await self._refuse_if_full(Mode.PEEK)
        elif failed:
            # Counted and answered 401 if every count admits it; else 429, uncounted.
            await self._refuse_if_full(Mode.ACQUIRE)
        # Any other error, or a cancellation: nothing is counted, the error goes on.

    async def _refuse_if_full(self, mode: Mode) -> None:
        wait = await self._store.update(self._slots, mode)
        if wait > 0:
            raise RateLimitExceeded(retry_after(wait))


class RouteStore(RateLimiterStoreABC):
    """quart-rate-limiter's store interface over a ``LimitStore``: both limiters then
    keep their state in one place (memory or Redis)."""

    def __init__(self, store: LimitStore) -> None:
        self.store = store

    async def before_serving(self) -> None:
        await self.store.before_serving()

    async def after_serving(self) -> None:
        await self.store.after_serving()

    async def get(self, key: str, default: datetime) -> datetime:
        return await self.store.get(key, default)

    async def set(self, key: str, tat: datetime) -> None:
        await self.store.set(key, tat)


def install_route_limits(app: Quart, store: LimitStore) -> RateLimiter:
    """quart-rate-limiter on the Quart routes, sharing ``store`` and keyed by the client
    address. It opens and closes the store with the app (``before_serving`` and
    ``after_serving``). Every Quart route carries a limit (``limit_per_address`` on its
    blueprint, or ``rate_limit``) or is marked ``rate_exempt``; no default limit, so that
    a 404 costs no store read and carries no ``RateLimit-*`` headers."""
    return RateLimiter(app, key_function=address_key, store=RouteStore(store))


def limit_per_address(blueprint: B, settings: Settings) -> B:
    """Limit every route of ``blueprint`` to ``verify_rate_limit`` per client address."""
    rate = settings.verify_rate_limit
    return limit_blueprint(
        blueprint, rate.count, timedelta(seconds=rate.period), key_function=address_key
    )


#: Signing-key generations (a key rotation) per client address: each costs an RSA key
#: generation, up to a second of CPU for a large key.
KEY_GENERATION_LIMIT = Rate(6, 60)

V = TypeVar("V", bound=Callable[..., Awaitable[Any]])


def limit_view(view: V, rate: Rate, *keys: KeyCallable) -> V:
    """``view`` under ``rate`` counted per client address (and, separately, per each of
    ``keys``), on top of its blueprint's limit: a new function for each app, as
    quart-rate-limiter marks the function it decorates."""

    @functools.wraps(view)
    async def limited(*args: Any, **kwargs: Any) -> Any:
        return await view(*args, **kwargs)

    period = timedelta(seconds=rate.period)
    limits = [RateLimit(rate.count, period, key_function=key) for key in (address_key, *keys)]
    return rate_limit(limits=limits)(cast(V, limited))


async def address_key() -> str:
    """The client address of the current Quart request (``client_address``)."""
    trusted: int = current_app.config["TOKENDEALER_TRUSTED_PROXIES"]
    return "address:" + scope_address(request.scope, trusted)
