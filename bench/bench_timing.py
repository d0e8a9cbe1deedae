"""Timing benchmark: does a failed authentication reveal whether the client id exists?

RFC 6749 §2.3.1 has the token endpoint resist brute force, and our answer to every failed
authentication is one body, one status, the same work (a dummy digest for unknown ids).
This measures it: thousands of failed ``POST /oauth/token`` for registered ids and for
unregistered ids against a real ``tokendealer serve``, the two latency distributions side
by side, and the two-sample Kolmogorov-Smirnov statistic D between them (pure Python).

Four series, interleaved in one random order so drift affects them all alike, each
request a wrong secret of the real secrets' length, ids of one length:

* ``known cold`` / ``unknown cold``: every request a different id (registered / not), so
  every lookup misses the per-process client cache and reads the store;
* ``known warm`` / ``unknown warm``: one id repeated (registered / not); the cache keeps
  unknown ids too, so both hit it.

Compare cold with cold and warm with warm: an attacker probing an id meets the cache in
the same state whether or not the id exists. Rate limits are raised through the
environment so that nothing is throttled (every answer must be 401).

Usage::

    .venv/bin/python bench/bench_timing.py                 # 2000 requests per series
    .venv/bin/python bench/bench_timing.py --requests 5000 --server hypercorn
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.servers import run_server  # noqa: E402 - after the path setup above
from tokendealer.protocol.clients import Client  # noqa: E402
from tokendealer.protocol.credentials import digest_secret, generate_secret  # noqa: E402
from tokendealer.settings import Settings  # noqa: E402
from tokendealer.store import SQLStore  # noqa: E402

UNTHROTTLED = "100000000/second"
SERIES = ("known cold", "unknown cold", "known warm", "unknown warm")
WARMUP = 300


def ks_statistic(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(xs) and j < len(ys):
        x = min(xs[i], ys[j])
        while i < len(xs) and xs[i] <= x:
            i += 1
        while j < len(ys) and ys[j] <= x:
            j += 1
        d = max(d, abs(i / len(xs) - j / len(ys)))
    return d


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of D (Kolmogorov distribution, Stephens' correction)."""
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return max(0.0, min(1.0, 2 * total))


def ks_critical(n: int, m: int, alpha_coefficient: float = 1.358) -> float:
    """D above which the samples differ at the 5 % level (coefficient 1.358)."""
    return alpha_coefficient * math.sqrt((n + m) / (n * m))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def register(database_url: str, ids: list[str]) -> None:
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    await store.open()
    try:
        for client_id in ids:
            await store.add_client(
                Client(
                    client_id=client_id,
                    secret_digest=digest_secret(generate_secret()),
                    scopes=(),
                    audiences=(),
                    ttl=None,
                    disabled=False,
                    created_at=time.time(),
                )
            )
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per series")
    parser.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    n = args.requests
    rng = random.Random(args.seed)  # order only; ids and secrets come from `secrets`

    wrong_secret = generate_secret()  # the real secrets' length, never any client's
    known = [f"client-k{i:07d}" for i in range(n + 1)]
    unknown = [f"client-u{secrets.randbelow(10**7):07d}" for _ in range(n + 1)]
    plan = [s for s in SERIES for _ in range(n)]
    rng.shuffle(plan)

    with tempfile.TemporaryDirectory(prefix="tokendealer-timing-") as tmp:
        workdir = Path(tmp)
        database_url = f"sqlite:///{workdir / 'td.db'}"
        print(f"registering {n + 1} clients ...", flush=True)
        asyncio.run(register(database_url, known))
        env = {
            "TOKENDEALER_DATABASE_URL": database_url,
            "TOKENDEALER_RATE_LIMIT": UNTHROTTLED,
            "TOKENDEALER_AUTH_FAILURE_LIMIT": UNTHROTTLED,
            "TOKENDEALER_VERIFY_RATE_LIMIT": UNTHROTTLED,
        }
        samples: dict[str, list[float]] = {s: [] for s in SERIES}
        statuses: dict[int, int] = {}
        with run_server(workdir, server=args.server, env=env) as server:
            url = server.url + "/oauth/token"
            data = {"grant_type": "client_credentials"}
            with httpx.Client(timeout=10) as http:
                for i in range(WARMUP):
                    http.post(url, data=data, auth=(unknown[i % 7], wrong_secret))
                cold = {"known cold": iter(known[1:]), "unknown cold": iter(unknown[1:])}
                warm = {"known warm": known[0], "unknown warm": unknown[0]}
                for series in plan:
                    client_id = next(cold[series]) if series in cold else warm[series]
                    started = time.perf_counter()
                    response = http.post(url, data=data, auth=(client_id, wrong_secret))
                    elapsed = time.perf_counter() - started
                    samples[series].append(elapsed * 1e6)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    print(f"\nserver: {args.server}, 1 worker; {n} failed authentications per series")
    print(f"statuses: {statuses} (all must be 401)\n")
    print(f"{'series':<14}{'median µs':>11}{'p10 µs':>10}{'p90 µs':>10}{'mean µs':>10}")
    for series in SERIES:
        values = samples[series]
        print(
            f"{series:<14}{quantile(values, 0.5):>11.0f}{quantile(values, 0.1):>10.0f}"
            f"{quantile(values, 0.9):>10.0f}{sum(values) / len(values):>10.0f}"
        )
    print()
    verdicts = []
    for a, b in (("known cold", "unknown cold"), ("known warm", "unknown warm")):
        d = ks_statistic(samples[a], samples[b])
        critical = ks_critical(n, n)
        p = ks_p_value(d, n, n)
        same = d <= critical
        verdicts.append(same)
        print(
            f"{a} vs {b}: KS D = {d:.4f} (5% critical {critical:.4f}, p = {p:.3f}) -> "
            + ("indistinguishable" if same else "DISTINGUISHABLE")
        )
    if set(statuses) != {401}:
        print("error: some answers were not 401 (throttled or failing)")
        return 1
    return 0 if all(verdicts) else 2


if __name__ == "__main__":
    sys.exit(main())
