"""One settings object, read once from ``TOKENDEALER_*`` environment variables.

Tests build ``Settings(...)`` directly; the server and the CLI call
``Settings.from_env()`` once at start, and a bad value stops them with one clear line.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PREFIX = "TOKENDEALER_"
#: The longest token lifetime, for the service and for a client's own ``--ttl``.
MAX_TOKEN_TTL = 366 * 86400
DEFAULT_ISSUER = "http://localhost:5000"
DEFAULT_DB_FILE = "tokendealer.db"


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the variable."""


def validate_issuer(issuer: str) -> str:
    """RFC 8414 §2: the issuer is an URL with no query or fragment components."""
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{PREFIX}ISSUER must be an http(s) URL, got {issuer!r}")
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise ConfigError(f"{PREFIX}ISSUER must have no query or fragment, got {issuer!r}")
    return issuer


def normalize_database_url(url: str) -> str:
    """Map the documented URL forms to SQLAlchemy async driver URLs.

    ``sqlite:///ABSOLUTE/PATH`` -> aiosqlite, ``postgresql://user@host:port/db`` -> asyncpg.
    """
    normalized = None
    if url.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
        normalized = url
    elif url.startswith("sqlite:///"):
        normalized = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            normalized = "postgresql+asyncpg://" + url[len(scheme) :]
    if normalized is None:
        raise ConfigError(
            f"{PREFIX}DATABASE_URL must start with sqlite:/// or postgresql://, "
            f"got {_redact(url)!r}"
        )
    try:
        parsed = make_url(normalized)
    except (ValueError, ArgumentError):  # a port that is not a number, say
        raise ConfigError(f"{PREFIX}DATABASE_URL is not a valid URL: {_redact(url)!r}") from None
    if not parsed.database:
        raise ConfigError(f"{PREFIX}DATABASE_URL names no database: {_redact(url)!r}")
    return normalized


#: Seconds per unit of a rate such as ``20/minute`` (units may be plural).
_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{1,6})?\s*(second|minute|hour|day)s?\s*", re.ASCII)


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``period`` seconds, written ``"1200/minute"`` or ``"5/10 seconds"``."""

    count: int
    period: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.period <= 0:
            raise ConfigError(f"a rate needs a positive count and period, got {self}")

    @property
    def interval(self) -> float:
        """Seconds between events at the steady rate (GCRA's emission interval)."""
        return self.period / self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: str, variable: str) -> Rate:
    """Parse ``N/unit`` or ``N/M units``; a bad value raises ConfigError naming ``variable``."""
    match = _RATE.fullmatch(text)
    if match is None or int(match.group(1)) == 0 or int(match.group(2) or 1) == 0:
        raise ConfigError(
            f"{variable} must look like 1200/minute or 5/10seconds "
            f"(units: second, minute, hour, day), got {text!r}"
        )
    count, multiple, unit = match.groups()
    return Rate(int(count), int(multiple or 1) * _RATE_UNITS[unit])


def _rate(env: Mapping[str, str], name: str, default: Rate) -> Rate:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    return parse_rate(raw, PREFIX + name)


def validate_redis_url(url: str) -> str:
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{PREFIX}REDIS_URL must start with redis://, rediss:// or unix://, "
            f"got {_redact(url)!r}"
        )
    return url


def _redact(url: str) -> str:
    """``url`` without what stands between ``//`` and its last ``@`` (user and password:
    a password may hold any character, ``/`` and ``@`` too, when not percent-encoded)."""
    return re.sub(r"//.*@", "//***@", url)


def _positive_int(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a whole number, got {raw!r}") from None
    if not 0 < value <= maximum:
        raise ConfigError(f"{PREFIX}{name} must be between 1 and {maximum}, got {value}")
    return value


def _seconds(
    env: Mapping[str, str], name: str, default: float, maximum: float, *, zero: bool = False
) -> float:
    """A number of seconds above 0 (or 0 itself, with ``zero``) and at most ``maximum``."""
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    if re.fullmatch(r"\s*\d{1,6}(\.\d{1,6})?\s*", raw, re.ASCII) is None:
        raise ConfigError(f"{PREFIX}{name} must be a number of seconds, got {raw!r}")
    value = float(raw)
    if zero and value == 0:
        return value
    lowest = "0 or more" if zero else "above 0"
    if not 0 < value <= maximum:
        raise ConfigError(f"{PREFIX}{name} must be {lowest} and at most {maximum:g}, got {raw!r}")
    return value


def _count(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    if re.fullmatch(r"\s*\d{1,6}\s*", raw, re.ASCII) is None or int(raw) > maximum:
        raise ConfigError(f"{PREFIX}{name} must be a whole number from 0 to {maximum}, got {raw!r}")
    return int(raw)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name} must be true or false, got {raw!r}")


#: Where signing keys may live (``TOKENDEALER_KEY_STORE``).
KEY_STORES = ("directory", "database")
#: The event loops a worker may run (``event_loop``).
EVENT_LOOPS = ("uvloop", "asyncio")
#: The size of the key-encryption key (AES-256).
KEK_BYTES = 32


def decode_key_encryption_key(text: str, source: str) -> bytes:
    """A key-encryption key from its base64 text (standard or URL-safe alphabet, padding
    optional, surrounding white space ignored); ``source`` names where it came from."""
    cleaned = "".join(text.split())
    try:
        key = base64.b64decode(
            cleaned.replace("-", "+").replace("_", "/") + "=" * (-len(cleaned) % 4),
            validate=True,
        )
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} is not base64") from None
    if len(key) != KEK_BYTES:
        raise ConfigError(
            f"{source} must hold {KEK_BYTES} bytes in base64 (head -c 32 /dev/urandom | "
            f"base64), got {len(key)}"
        )
    return key


def _key_encryption_key(env: Mapping[str, str]) -> bytes | None:
    inline = env.get(PREFIX + "KEY_ENCRYPTION_KEY")
    path = env.get(PREFIX + "KEY_ENCRYPTION_KEY_FILE")
    if inline and path:
        raise ConfigError(
            f"set {PREFIX}KEY_ENCRYPTION_KEY or {PREFIX}KEY_ENCRYPTION_KEY_FILE, not both"
        )
    if inline:
        return decode_key_encryption_key(inline, PREFIX + "KEY_ENCRYPTION_KEY")
    if path:
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not base64 text"
            raise ConfigError(
                f"{PREFIX}KEY_ENCRYPTION_KEY_FILE: cannot read {path} ({reason})"
            ) from None
        return decode_key_encryption_key(text, f"{PREFIX}KEY_ENCRYPTION_KEY_FILE ({path})")
    return None


DEFAULT_RATE_LIMIT = Rate(1200, 60)
DEFAULT_AUTH_FAILURE_LIMIT = Rate(20, 60)
DEFAULT_VERIFY_RATE_LIMIT = Rate(6000, 60)
DEFAULT_SIGN_IN_LIMIT = Rate(10, 300)
#: The shortest console session secret accepted (characters).
MIN_SESSION_SECRET = 32


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with."""

    issuer: str = DEFAULT_ISSUER
    database_url: str = field(
        default_factory=lambda: "sqlite:///" + str(Path.cwd() / DEFAULT_DB_FILE)
    )
    keys_dir: Path = Path("keys")
    token_ttl: int = 3600
    default_audience: str | None = None
    #: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat`` (RFC 7519 §4.1.4).
    leeway: int = 30
    #: ``Cache-Control: max-age`` of the JWKS, in seconds.
    jwks_max_age: int = 300
    #: How long a process trusts its cached copy of a client record, in seconds: a change
    #: made with the CLI reaches every worker within this interval.
    client_cache_ttl: float = 1.0
    #: Threads that sign tokens beside each worker's event loop (0: the loop signs). RSA
    #: signing releases the GIL, so a pool lets one worker use more than one core.
    signing_threads: int = 0
    #: Seconds that connecting to the database, and each statement, may take before the
    #: request is answered 503 (a hung or partitioned database must not hang requests).
    database_timeout: float = 3.0
    #: After a database failure, seconds during which requests fail fast (503) without
    #: asking the database again; then one request probes it.
    database_retry_interval: float = 1.0
    #: Seconds ``/readyz`` reuses its last answer (probes must not load the database).
    readiness_cache: float = 1.0
    #: Seconds between two looks of each worker at the keys directory (a rotation, a
    #: removal or an activation time reached is served within this interval).
    key_watch_interval: float = 1.0
    #: After a rate-limit store (Redis) failure, seconds during which limits are applied
    #: per process without asking Redis; then one request probes it.
    rate_limit_retry_interval: float = 1.0
    #: HTTP limits. A request body over ``max_body_bytes`` is answered 413, one that has
    #: not arrived within ``body_timeout`` seconds 408; a request head (request line and
    #: headers) over ``max_head_bytes`` 431, and a connection whose request head is not
    #: complete within ``head_timeout`` seconds is closed; an idle keep-alive connection is
    #: closed after ``keep_alive`` seconds.
    max_body_bytes: int = 64 * 1024
    body_timeout: float = 10.0
    max_head_bytes: int = 16 * 1024
    head_timeout: float = 10.0
    keep_alive: float = 5.0
    access_log: bool = True
    #: The admin API and console (``/admin/``); off: they answer 404.
    admin: bool = True
    #: The key that signs console sessions; None: one generated into the keys directory
    #: (``session.secret``, 0600) and shared by every worker reading it.
    session_secret: str | None = field(default=None, repr=False)
    #: The longest a client assertion (private_key_jwt) may live: ``exp`` at most this
    #: many seconds after ``iat``, so that its ``jti`` need not be kept for long.
    assertion_max_age: int = 300
    #: Seconds a fetch of a client's key set (its ``jwks_uri``) may take, all of it.
    client_jwks_timeout: float = 3.0
    #: Seconds a console session lasts without a request (each request renews it).
    admin_session_ttl: int = 1800
    #: Console sign-in attempts per client address and, separately, per name.
    sign_in_limit: Rate = DEFAULT_SIGN_IN_LIMIT
    #: Requests per client on the endpoints where clients authenticate.
    rate_limit: Rate = DEFAULT_RATE_LIMIT
    #: Failed client authentications per client id and, separately, per client address.
    auth_failure_limit: Rate = DEFAULT_AUTH_FAILURE_LIMIT
    #: Requests per client address on /verify_token, /oauth/introspect and /oauth/revoke.
    verify_rate_limit: Rate = DEFAULT_VERIFY_RATE_LIMIT
    #: Shared rate-limit state for many workers and replicas; None keeps it per process.
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    #: Prefix of every Redis key this service writes.
    redis_key_prefix: str = "tokendealer:"
    #: How many reverse proxies in front of the service append to X-Forwarded-For.
    trusted_proxies: int = 0
    #: ``GET /metrics`` (Prometheus text format, summed over the workers); off: 404.
    metrics: bool = True
    #: On SIGTERM, seconds the service keeps answering (``/readyz`` 503) before it stops
    #: accepting connections: time for a load balancer to take it out of rotation.
    shutdown_delay: float = 0.0
    #: Then, seconds requests in flight have to finish before the workers stop anyway.
    shutdown_timeout: float = 10.0
    #: Where the signing keys live: ``directory`` (``keys_dir``, files) or ``database``
    #: (the store, each private key sealed with AES-256-GCM under ``key_encryption_key``).
    key_store: str = "directory"
    #: The 32-byte key-encryption key of the database key store.
    key_encryption_key: bytes | None = field(default=None, repr=False)
    #: Each worker's event loop: ``asyncio``, the standard library's, or ``uvloop``.
    #: Measured on the token endpoint (bench/bench_vs_node.py), asyncio's serves 64
    #: keep-alive connections evenly (p99 1.3-1.6 times p50; uvloop: 9-17 times on one
    #: worker) for the same CPU per token within the spread of runs.
    event_loop: str = "asyncio"

    def __post_init__(self) -> None:
        validate_issuer(self.issuer)
        normalize_database_url(self.database_url)
        if self.redis_url is not None:
            validate_redis_url(self.redis_url)
        if self.token_ttl <= 0:
            raise ConfigError(f"{PREFIX}TOKEN_TTL must be positive")
        if self.database_timeout <= 0:
            raise ConfigError(f"{PREFIX}DATABASE_TIMEOUT must be positive")
        if self.key_store not in KEY_STORES:
            raise ConfigError(
                f"{PREFIX}KEY_STORE must be {' or '.join(KEY_STORES)}, got {self.key_store!r}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                f"{PREFIX}EVENT_LOOP must be {' or '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )
        if self.key_store == "database" and self.key_encryption_key is None:
            raise ConfigError(
                f"{PREFIX}KEY_STORE=database needs {PREFIX}KEY_ENCRYPTION_KEY or "
                f"{PREFIX}KEY_ENCRYPTION_KEY_FILE (32 random bytes, base64)"
            )
        if self.key_encryption_key is not None and len(self.key_encryption_key) != KEK_BYTES:
            raise ConfigError(f"{PREFIX}KEY_ENCRYPTION_KEY must be {KEK_BYTES} bytes")
        if self.session_secret is not None and len(self.session_secret) < MIN_SESSION_SECRET:
            raise ConfigError(
                f"{PREFIX}SESSION_SECRET must be at least {MIN_SESSION_SECRET} characters"
            )

    @property
    def audience(self) -> str:
        """The audience of tokens for clients with no audience of their own."""
        return self.default_audience or self.issuer

    @property
    def sqlalchemy_url(self) -> str:
        return normalize_database_url(self.database_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``TOKENDEALER_*`` variable once; raise ConfigError on a bad value."""
        env = os.environ if env is None else env
        kwargs: dict[str, object] = {}
        if issuer := env.get(PREFIX + "ISSUER"):
            kwargs["issuer"] = issuer
        if database_url := env.get(PREFIX + "DATABASE_URL"):
            kwargs["database_url"] = database_url
        if keys_dir := env.get(PREFIX + "KEYS_DIR"):
            kwargs["keys_dir"] = Path(keys_dir)
        if audience := env.get(PREFIX + "DEFAULT_AUDIENCE"):
            kwargs["default_audience"] = audience
        # Each variable's default is the field's own: one source for both.
        d: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        kwargs["token_ttl"] = _positive_int(env, "TOKEN_TTL", d["token_ttl"], MAX_TOKEN_TTL)
        kwargs["leeway"] = _positive_int(env, "LEEWAY", d["leeway"], 3600)
        kwargs["jwks_max_age"] = _positive_int(env, "JWKS_MAX_AGE", d["jwks_max_age"], 86400)
        kwargs["access_log"] = _bool(env, "ACCESS_LOG", d["access_log"])
        kwargs["admin"] = _bool(env, "ADMIN", d["admin"])
        kwargs["assertion_max_age"] = _positive_int(
            env, "ASSERTION_MAX_AGE", d["assertion_max_age"], 3600
        )
        kwargs["client_jwks_timeout"] = _seconds(
            env, "CLIENT_JWKS_TIMEOUT", d["client_jwks_timeout"], 60
        )
        if session_secret := env.get(PREFIX + "SESSION_SECRET"):
            kwargs["session_secret"] = session_secret
        kwargs["admin_session_ttl"] = _positive_int(
            env, "ADMIN_SESSION_TTL", d["admin_session_ttl"], 86400
        )
        kwargs["sign_in_limit"] = _rate(env, "SIGN_IN_LIMIT", d["sign_in_limit"])
        kwargs["database_timeout"] = _seconds(env, "DATABASE_TIMEOUT", d["database_timeout"], 300)
        kwargs["client_cache_ttl"] = _seconds(env, "CLIENT_CACHE_TTL", d["client_cache_ttl"], 60)
        for name, maximum in (
            ("database_retry_interval", 60),
            ("readiness_cache", 60),
            ("key_watch_interval", 60),
            ("rate_limit_retry_interval", 60),
        ):
            kwargs[name] = _seconds(env, name.upper(), d[name], maximum)
        kwargs["max_body_bytes"] = _positive_int(
            env, "MAX_BODY_BYTES", d["max_body_bytes"], 1024 * 1024
        )
        kwargs["body_timeout"] = _seconds(env, "BODY_TIMEOUT", d["body_timeout"], 300)
        kwargs["max_head_bytes"] = _positive_int(
            env, "MAX_HEAD_BYTES", d["max_head_bytes"], 64 * 1024
        )
        kwargs["head_timeout"] = _seconds(env, "HEAD_TIMEOUT", d["head_timeout"], 300)
        kwargs["keep_alive"] = _seconds(env, "KEEP_ALIVE", d["keep_alive"], 300)
        kwargs["rate_limit"] = _rate(env, "RATE_LIMIT", d["rate_limit"])
        kwargs["auth_failure_limit"] = _rate(env, "AUTH_FAILURE_LIMIT", d["auth_failure_limit"])
        kwargs["verify_rate_limit"] = _rate(env, "VERIFY_RATE_LIMIT", d["verify_rate_limit"])
        if redis_url := env.get(PREFIX + "REDIS_URL"):
            kwargs["redis_url"] = redis_url
        if prefix := env.get(PREFIX + "REDIS_KEY_PREFIX"):
            kwargs["redis_key_prefix"] = prefix
        kwargs["trusted_proxies"] = _count(env, "TRUSTED_PROXIES", d["trusted_proxies"], 16)
        kwargs["metrics"] = _bool(env, "METRICS", d["metrics"])
        kwargs["signing_threads"] = _count(env, "SIGNING_THREADS", d["signing_threads"], 64)
        if key_store := env.get(PREFIX + "KEY_STORE"):
            kwargs["key_store"] = key_store.strip().lower()
        if event_loop := env.get(PREFIX + "EVENT_LOOP"):
            kwargs["event_loop"] = event_loop.strip().lower()
        kwargs["key_encryption_key"] = _key_encryption_key(env)
        kwargs["shutdown_delay"] = _seconds(
            env, "SHUTDOWN_DELAY", d["shutdown_delay"], 300, zero=True
        )
        kwargs["shutdown_timeout"] = _seconds(env, "SHUTDOWN_TIMEOUT", d["shutdown_timeout"], 300)
        return cls(**kwargs)  # type: ignore[arg-type]
