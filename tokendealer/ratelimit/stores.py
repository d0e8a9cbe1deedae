"""The limit store for the settings: per process, or in Redis when ``redis_url`` is set."""

from __future__ import annotations

from tokendealer.ratelimit.gcra import LimitStore, MemoryStore
from tokendealer.settings import PREFIX, ConfigError, Settings


def store_for(settings: Settings) -> LimitStore:
    if settings.redis_url is None:
        return MemoryStore()
    try:
        from tokendealer.ratelimit.redis_store import RedisStore  # redis is an optional extra
    except ImportError as exc:
        raise ConfigError(
            f"{PREFIX}REDIS_URL needs the redis package: pip install 'tokendealer[redis]'"
        ) from exc
    return RedisStore(
        settings.redis_url,
        settings.redis_key_prefix,
        probe_interval=settings.rate_limit_retry_interval,
    )
