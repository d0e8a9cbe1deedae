"""The app's own work per token, without HTTP: the whole ASGI app (request id and access
line, pipeline, limits, authentication, minting, metrics) driven in one process.

No server, no socket: each request is an ASGI call with its body ready, so what is left
is the service's Python code. One run, in a fresh temporary directory:

1. a SQLite store, a keys directory with one RS512 key (RSA-2048) and a client
   (``client_secret_basic``, scope ``read``); limits raised so nothing is refused;
2. a warm-up, then ``--rounds`` rounds of ``--requests`` token requests; the best round's
   CPU per request (``time.process_time``) is printed;
3. with ``--stub-signing`` the signature is replaced by a constant, so the figure is the
   app's own work alone; without it, the raw signing time of the same key is measured in
   the same process and subtracted, which shows what the signature does to the rest
   (its big-number work evicts the Python code from the caches);
4. ``--profile N``: cProfile's top N functions by own time over one more round.

Usage::

    .venv/bin/python bench/bench_pipeline.py                  # with signatures
    .venv/bin/python bench/bench_pipeline.py --stub-signing
    .venv/bin/python bench/bench_pipeline.py --stub-signing --profile 30

Instructions instead of seconds (exact on a shared machine): two runs under callgrind
that differ only in their number of requests, on one key (``--keys``: an RSA key
generation's work varies), and the difference of their totals divided by 500::

    for n in 100 600; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/bench_pipeline.py --stub-signing --keys /tmp/bench-keys \\
        --rounds 1 --requests $n 2>&1 | grep Collected; done
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tokendealer.http import create_app
from tokendealer.keys.keyset import ensure_key
from tokendealer.library import algorithms
from tokendealer.log import configure
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings

WARM_UP = 200
UNLIMITED = Rate(10**9, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="the best is kept (default 5)")
    parser.add_argument("--stub-signing", action="store_true", help="a constant signature")
    parser.add_argument("--no-access-log", action="store_true", help="access log off")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="top N functions")
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="reuse the key in DIR (made there if none): the same work in every run",
    )
    args = parser.parse_args(argv)
    if not (1 <= args.requests <= 1_000_000 and 1 <= args.rounds <= 100):
        parser.error("--requests in [1, 1000000], --rounds in [1, 100]")
    return args


def stub_signing() -> None:
    """Every algorithm signs with a constant: the signature's cost leaves the figure."""
    for algorithm in algorithms.ALGORITHMS.values():
        object.__setattr__(algorithm, "sign", lambda _message, _key: b"s" * 256)


def token_call(asgi: Any, client_id: str, secret: str) -> Callable[[], Awaitable[int]]:
    """One ``POST /oauth/token`` through the ASGI app; returns the status."""
    body = b"grant_type=client_credentials&scope=read"
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/oauth/token",
        "raw_path": b"/oauth/token",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", f"Basic {basic}".encode()),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def call() -> int:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await asgi(dict(scope), receive, send)
        return status

    return call


async def rounds(call: Callable[[], Awaitable[int]], count: int, requests: int) -> float:
    """The best round's CPU seconds per request; every answer must be a 200."""
    best = float("inf")
    for _ in range(count):
        started = time.process_time()
        for _ in range(requests):
            if await call() != 200:
                raise RuntimeError("a token request was not answered 200")
        best = min(best, (time.process_time() - started) / requests)
    return best


async def run(args: argparse.Namespace, workdir: Path) -> None:
    settings = Settings(
        issuer="https://dealer.bench",
        database_url=f"sqlite:///{workdir / 'bench.sqlite3'}",
        keys_dir=workdir / "keys",
        rate_limit=UNLIMITED,
        auth_failure_limit=UNLIMITED,
        access_log=not args.no_access_log,
    )
    if args.keys is not None:
        ensure_key(args.keys)
        shutil.copytree(args.keys, settings.keys_dir)
    else:
        ensure_key(settings.keys_dir)
    configure()  # JSON lines on stderr, as a served worker writes them
    app = create_app(settings)
    async with app.test_app():
        dealer: Dealer = app.extensions["tokendealer"]
        secret = generate_secret()
        client = Client("bench", digest_secret(secret), scopes=("read",), created_at=time.time())
        await dealer.store.add_client(client)
        if args.stub_signing:
            stub_signing()
        call = token_call(app.asgi_app, "bench", secret)
        await rounds(call, 1, WARM_UP)
        per_request = await rounds(call, args.rounds, args.requests)
        key = dealer.keyset.active()
        assert key is not None  # noqa: S101  # nosec B101 - init made one
        signing = 0.0
        if not args.stub_signing:
            sign = algorithms.ALGORITHMS[key.alg].sign
            message = b"x" * 400
            started = time.process_time()
            for _ in range(args.requests):
                sign(message, key.private_key)
            signing = (time.process_time() - started) / args.requests
        what = "signature stubbed" if args.stub_signing else f"{key.alg} signature included"
        print(
            f"POST /oauth/token through the ASGI app, {what}, access log "
            f"{'off' if args.no_access_log else 'on'}; best of {args.rounds} x {args.requests}"
        )
        print(f"CPU per request: {per_request * 1e6:.1f} us")
        if signing:
            print(f"raw signature, same key, same process: {signing * 1e6:.1f} us")
            print(f"the rest: {(per_request - signing) * 1e6:.1f} us")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            await rounds(call, 1, args.requests)
            profile.disable()
            pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tokendealer-pipeline-"))
    try:
        # The access log goes to stderr: away (its cost is measured, not its lines).
        with open(os.devnull, "w") as devnull:
            saved, sys.stderr = sys.stderr, devnull
            try:
                asyncio.run(run(args, workdir))
            finally:
                sys.stderr = saved
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
