"""The service's Prometheus metrics (prometheus-client), summed over every worker.

``tokendealer serve`` gives its workers one fresh directory in ``PROMETHEUS_MULTIPROC_DIR``
(``multiprocess_directory``) before any of them starts: prometheus-client then keeps each
process's values in a file there, and ``GET /metrics``, answered by whichever worker the
scrape reaches, adds them all up (its multiprocess mode). Without the variable (tests, an
app run by another server) the values are this process's.

Labels are bounded: ``client_id`` only ever names a registered client (a token was issued
to it), errors and methods come from fixed sets, endpoints from the routes.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import REGISTRY, Collector

from tokendealer.keys.keyset import KeySet
from tokendealer.library.client import TOKEN_ERRORS as ERROR_CODES

__all__ = ["CONTENT_TYPE", "render"]

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# A directory named in the environment but not made yet (a deployment's tmpfs path, say):
# made before any metric below opens its file in it.
if os.environ.get(MULTIPROC_VARIABLE):
    Path(os.environ[MULTIPROC_VARIABLE]).mkdir(parents=True, exist_ok=True)

#: The only values of ``error`` (``ERROR_CODES``): the codes a token endpoint answers
#: (RFC 6749 §5.2, RFC 8707, the "retry later" pair), as the client library knows them.
#: Client authentication methods, as labels (``none``: no usable credentials).
AUTH_METHODS = frozenset(
    {"client_secret_basic", "client_secret_post", "private_key_jwt", "federated", "none"}
)

#: Token requests take a few milliseconds; a slow database or Redis, up to seconds.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: One RSA-2048 signature takes about 0.3-1 ms; EC and EdDSA less.
_SIGNING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)

TOKENS_ISSUED = Counter(
    "tokendealer_tokens_issued", "Access tokens issued, per client.", ["client_id"]
)
TOKEN_ERRORS = Counter(
    "tokendealer_token_errors",
    "Token requests answered with an error (RFC 6749 §5.2 code; 429s are counted apart).",
    ["error"],
)
CLIENT_AUTH_FAILURES = Counter(
    "tokendealer_client_auth_failures",
    "Failed client authentications, per method, at every endpoint.",
    ["method"],
)
RATE_LIMITED = Counter(
    "tokendealer_rate_limited", "Requests refused with 429, per endpoint.", ["endpoint"]
)
RATE_LIMIT_MONITORED = Counter(
    "tokendealer_rate_limit_monitored",
    "Requests over a client's own limit let through because it is in monitor mode.",
    ["endpoint", "client_id"],
)
REQUEST_DURATION = Histogram(
    "tokendealer_request_duration_seconds",
    "Time to answer a request, per endpoint.",
    ["endpoint"],
    buckets=_REQUEST_BUCKETS,
)
SIGNING_DURATION = Histogram(
    "tokendealer_signing_duration_seconds",
    "Time to sign one access token, per algorithm.",
    ["alg"],
    buckets=_SIGNING_BUCKETS,
)
INTROSPECTIONS = Counter(
    "tokendealer_introspections",
    "Introspection answers (RFC 7662), by whether the token was active.",
    ["active"],
)
REVOCATIONS = Counter("tokendealer_revocations", "Revocation requests answered (RFC 7009).")
EARLY_TOKEN_REQUESTS = Counter(
    "tokendealer_early_token_requests",
    "Token requests from a client that still held a token for the same scope and audience "
    "with more than half its lifetime left (a client that does not cache its tokens).",
    ["client_id"],
)
STORE_ERRORS = Counter("tokendealer_store_errors", "Database calls that failed.")

# The children of the per-request metrics, kept: prometheus-client's ``labels()`` checks
# the value and takes a lock on every call, three times per token. Bounded as the labels
# are (fixed sets, registered clients).
tokens_issued = functools.cache(TOKENS_ISSUED.labels)
early_token_requests = functools.cache(EARLY_TOKEN_REQUESTS.labels)
request_duration = functools.cache(REQUEST_DURATION.labels)
signing_duration = functools.cache(SIGNING_DURATION.labels)

#: The up gauges, per ``Outage`` name (``tokendealer.outage``): help text and error counter.
_OUTAGES: dict[str, tuple[str, str, Counter | None]] = {
    "store": (
        "tokendealer_store_up",
        "1 while the database answers, 0 during an outage (the latest any worker saw).",
        STORE_ERRORS,
    ),
    "rate_limit_store": (
        "tokendealer_rate_limit_store_up",
        "1 while the rate-limit store (Redis) answers or limits are per process, else 0.",
        None,
    ),
}
_gauges: dict[str, Gauge] = {}
#: Set by a serving worker (``serving``): a gauge is written only by the processes that
#: serve, so that ``serve``'s own process, which checks the store before the workers
#: start, adds no value to the lowest of the workers'.
_serving = False


def serving() -> None:
    """This process serves requests: its gauges count (``backend_up`` and the others)."""
    global _serving
    _serving = True


def _up_gauge(name: str) -> Gauge:
    """Made when first set: a gauge made at import would be 0 in every process's file.
    Summed over workers as the most recent value any of them set: a worker that saw
    the outage and has had no request since must not hide the recovery another saw."""
    gauge = _gauges.get(name)
    if gauge is None:
        metric, text, _ = _OUTAGES[name]
        gauge = _gauges[name] = Gauge(metric, text, multiprocess_mode="livemostrecent")
    return gauge


def backend_up(name: str) -> None:
    """The backend ``name`` (an ``Outage`` name) answers."""
    if _serving and name in _OUTAGES:
        _up_gauge(name).set(1)


def backend_failed(name: str) -> None:
    """A call to the backend ``name`` failed: it is down, and one more error is counted."""
    if _serving and name in _OUTAGES:
        _up_gauge(name).set(0)
        errors = _OUTAGES[name][2]
        if errors is not None:
            errors.inc()


def token_error(code: str) -> None:
    TOKEN_ERRORS.labels(code if code in ERROR_CODES else "invalid_request").inc()


def client_auth_failed(method: str) -> None:
    CLIENT_AUTH_FAILURES.labels(method if method in AUTH_METHODS else "none").inc()


class KeyCollector(Collector):
    """``tokendealer_signing_key_info{kid,state,alg}`` and
    ``tokendealer_active_key_age_seconds``, read from the key set at scrape time (every
    worker serves the same keys, so the one answering the scrape speaks for all)."""

    def __init__(self, keyset: KeySet) -> None:
        self.keyset = keyset

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        info = GaugeMetricFamily(
            "tokendealer_signing_key_info",
            "The signing keys: 1 per key, with its state (next, active, retired).",
            labels=["kid", "state", "alg"],
        )
        active = self.keyset.active(now)
        for key in self.keyset.keys:
            info.add_metric([key.kid, self.keyset.state(key, now), key.alg], 1)
        yield info
        age = GaugeMetricFamily(
            "tokendealer_active_key_age_seconds",
            "Seconds since the active signing key became active.",
        )
        if active is not None:
            age.add_metric([], max(0.0, now - active.activate_at))
        yield age


def render(keyset: KeySet | None) -> bytes:
    """The text exposition of every metric: all workers' when they share a directory
    (else this process's, the default registry's), then the signing keys'."""
    directory = os.environ.get(MULTIPROC_VARIABLE)
    registry = REGISTRY
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    text = generate_latest(registry)
    if keyset is None:
        return text
    keys = CollectorRegistry()
    keys.register(KeyCollector(keyset))
    return text + generate_latest(keys)


def multiprocess_directory() -> Path | None:
    """A fresh directory for the workers' metric files, named in ``PROMETHEUS_MULTIPROC_DIR``
    for the processes ``serve`` starts; ``None`` when the variable was set already (the
    directory is then whoever set it's to empty: it may hold a running server's files).
    Called before anything creates a metric in this process."""
    existing = os.environ.get(MULTIPROC_VARIABLE)
    if existing:
        Path(existing).mkdir(parents=True, exist_ok=True)
        return None
    directory = Path(tempfile.mkdtemp(prefix="tokendealer-metrics-"))
    os.environ[MULTIPROC_VARIABLE] = str(directory)
    return directory


def remove_multiprocess_directory(directory: Path | None) -> None:
    """Remove what ``multiprocess_directory`` made, when the server has stopped."""
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def worker_stopped() -> None:
    """A worker's live gauges leave the sums when it stops (a restarted worker's old
    values must not keep a store "down")."""
    directory = os.environ.get(MULTIPROC_VARIABLE)
    if directory:
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
