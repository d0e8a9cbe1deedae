"""Rate-limit state in Redis, shared by every worker and replica, with expiring keys.

quart-rate-limiter's own ``RedisStore`` reads a TAT then writes it (two replicas reading
the same value both admit) and never expires its keys. Here one Lua script checks and
advances all the keys of a request in a single atomic step on the server, against the
Redis server's clock (replicas' clocks may disagree), and every write carries a ``PX``
expiry that ends exactly when its TAT passes: an expired key and a missing key mean the
same thing, so nothing is lost and Redis does not fill up.

Redis down, restarting or slow is never an error for the caller: the store falls back to
a per-process ``MemoryStore``, logs one warning per outage, tries Redis again at most
once per ``probe_interval`` seconds, and logs once more when it is back.

Usage::

    store = RedisStore("redis://127.0.0.1:6379/0", prefix="tokendealer:")
    await store.before_serving()
    wait = await store.update([Slot("client:abc", Rate(20, 60))], Mode.ACQUIRE)
    await store.after_serving()

"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tokendealer.outage import Outage
from tokendealer.ratelimit.gcra import LimitStore, MemoryStore, Mode, Slot

T = TypeVar("T")

#: GCRA over several keys in one step. Times are milliseconds of the server's clock.
#: KEYS[i]: one key per limit. ARGV[1]: "acquire", "peek", "hit" or "release".
#: ARGV[2i], ARGV[2i+1]: the emission interval and the period of KEYS[i]. Returns the wait
#: in ms ("0": admitted). No TAT is ever written past now + period; "release" moves each
#: TAT back by its interval and deletes the key once that is not in the future.
GCRA_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local mode = ARGV[1]
if mode == 'release' then
  for i, key in ipairs(KEYS) do
    local tat = tonumber(redis.call('GET', key) or 0) or 0
    tat = tat - tonumber(ARGV[2 * i])
    if tat > now then
      redis.call('SET', key, string.format('%.3f', tat), 'PX', math.max(1, math.ceil(tat - now)))
    else
      redis.call('DEL', key)
    end
  end
  return '0'
end
local tats = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or 0) or 0
  if tat < now then tat = now end
  tats[i] = tat
  if mode ~= 'hit' then
    local w = tat - now - (period - interval)
    if w > wait then wait = w end
  end
end
if wait <= 0.001 then wait = 0 end
if wait > 0 or mode == 'peek' then return string.format('%.3f', wait) end
for i, key in ipairs(KEYS) do
  local tat = math.min(tats[i] + tonumber(ARGV[2 * i]), now + tonumber(ARGV[2 * i + 1]))
  redis.call('SET', key, string.format('%.3f', tat), 'PX', math.max(1, math.ceil(tat - now)))
end
return '0'
"""

#: Connections per process; each update is one short round trip.
MAX_CONNECTIONS = 32
#: Seconds a request may queue for a free connection under a burst.
POOL_WAIT = 2.0

#: Errors that mean "Redis is not answering properly": use the fallback.
REDIS_DOWN = (RedisError, OSError, TimeoutError)


class RedisStore(LimitStore):
    """``LimitStore`` in Redis with atomic updates, key expiry and an in-memory fallback."""

    def __init__(
        self,
        url: str,
        prefix: str = "tokendealer:",
        *,
        timeout: float = 0.25,
        probe_interval: float = 1.0,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._redis: Redis | None = None
        self.fallback = MemoryStore()
        #: Redis's outage: one request per ``probe_interval`` tries it while it is down.
        self.outage = Outage("rate_limit_store", probe_interval)

    async def before_serving(self) -> None:
        pool = BlockingConnectionPool.from_url(
            self._url,
            # A burst waits briefly for a free connection instead of failing at once.
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            # One immediate retry replaces a pooled connection that a Redis restart broke;
            # redis-py's default (10 retries with backoff) would hold requests for seconds.
            # Never on a timeout: the update may have run, and a second run would count
            # the request twice (or give back two failures).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = Redis.from_pool(pool)  # closing the client closes the pool
        self._script = self._redis.register_script(GCRA_SCRIPT)
        # Reachable or not, the service starts: an outage at startup is an outage.
        await self._run(self._ping, self._noop)

    async def after_serving(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def update(self, slots: Sequence[Slot], mode: Mode) -> float:
        if not slots:
            return 0.0

        async def remote(redis: Redis) -> float:
            args: list[str] = [mode.value]
            for slot in slots:
                args += [repr(slot.rate.interval * 1000), repr(slot.rate.period * 1000)]
            keys = [self._prefix + slot.key for slot in slots]
            waited = await self._script(keys=keys, args=args, client=redis)
            return float(waited) / 1000

        return await self._run(remote, lambda: self.fallback.update(slots, mode))

    async def get(self, key: str, default: datetime) -> datetime:
        async def remote(redis: Redis) -> datetime:
            value = await redis.get(self._prefix + key)
            if value is None:
                return default
            return datetime.fromtimestamp(float(value) / 1000, UTC)

        return await self._run(remote, lambda: self.fallback.get(key, default))

    async def set(self, key: str, tat: datetime) -> None:
        ttl_ms = max(1, int((tat.timestamp() - time.time()) * 1000) + 1)

        async def remote(redis: Redis) -> None:
            await redis.set(self._prefix + key, f"{tat.timestamp() * 1000:.3f}", px=ttl_ms)

        await self._run(remote, lambda: self.fallback.set(key, tat))

    async def _run(
        self, remote: Callable[[Redis], Awaitable[T]], local: Callable[[], Awaitable[T]]
    ) -> T:
        if self._redis is None or not self.outage.may_try():
            return await local()
        try:
            result = await remote(self._redis)
        except REDIS_DOWN as exc:
            self.outage.failed(f"redis: {type(exc).__name__}: {exc}; using per-process limits")
            return await local()
        self.outage.succeeded()
        return result

    @staticmethod
    async def _ping(redis: Redis) -> None:
        await redis.ping()

    @staticmethod
    async def _noop() -> None:
        return None
