"""Memory of ``tokendealer serve`` at rest, under normal load, and under a flood of
distinct client ids (the attack that grows per-id state: client cache, rate-limit keys).

One run, all on 127.0.0.1, in a fresh temporary directory (reusing bench_service's
server and client helpers):

1. ``tokendealer serve --workers 1`` (one process, so its RSS is the whole story), access
   log off, the rate and failed-authentication limits raised so that every request does
   its full work (lookup, digest, limiter keys) rather than stopping at a 429;
2. RSS after startup and a warm-up;
3. ``--seconds`` of ``POST /oauth/token`` for the registered client (wrk);
4. ``--seconds`` of ``POST /oauth/token`` where every request presents a new client id
   (client_secret_post, wrong secret: 401), many more ids than the per-process caches
   hold (10,000 client records, 50,000 rate-limit keys);
5. the same flood again: bounded caches stay where the first flood left them.

Prints the resident set size (VmRSS) and its peak (VmHWM) after each phase, the number of
distinct ids sent, and the growth per 1,000 ids. wrk is required (``apt-get install wrk``).

With ``--tokens [N]`` (issue 16's target: N = 1,000,000 when no number is given), phase 3
runs until N tokens have been issued rather than for ``--seconds``: wrk is started again
every ``--interval`` seconds, and each interval prints the tokens issued so far and the
RSS. The floods follow (``--flood-seconds`` each), and a last line compares the peak RSS
of the whole run (VmHWM) with the 100 MiB target.

Usage::

    .venv/bin/python bench/bench_memory.py                # 10 s per phase
    .venv/bin/python bench/bench_memory.py --seconds 20
    nice -n 10 .venv/bin/python bench/bench_memory.py --tokens --flood-seconds 60
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_service import (
    HOST,
    REQUEST_TIMEOUT,
    UNLIMITED_RATE,
    bench_environment,
    call,
    free_port,
    register_client,
    running_server,
    token_route,
)

#: Lua for wrk: each request presents a client id never seen before.
_FLOOD_SCRIPT = """\
local sent = 0
local prefix = "flood" .. tostring(math.random(1, 1000000000)) .. "-"
request = function()
  sent = sent + 1
  local body = "grant_type=client_credentials&client_id=" .. prefix .. sent
    .. "&client_secret=not-the-secret"
  return wrk.format("POST", "/oauth/token",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("BENCH_RESULT %d %d\\n", summary.requests, summary.errors.status))
end
"""

_STEADY_SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = {authorization}
done = function(summary, latency, requests)
  io.write(string.format("BENCH_RESULT %d %d\\n", summary.requests, summary.errors.status))
end
"""


#: Issue 16's target: one worker's RSS stays under this many MiB.
TARGET_MIB = 100.0
#: ``--tokens`` with no number: issue 16's "after a million tokens".
TARGET_TOKENS = 1_000_000


@dataclass(frozen=True)
class Memory:
    rss_mib: float
    peak_mib: float


def memory_of(pid: int) -> Memory:
    """VmRSS and VmHWM of one process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB -> MiB
    return Memory(fields["VmRSS"], fields["VmHWM"])


def run_wrk(port: int, script_text: str, seconds: int, workdir: Path) -> tuple[int, int]:
    """(requests, responses >= 400) of one wrk run."""
    script = workdir / "memory.lua"
    script.write_text(script_text)
    script.chmod(0o600)  # the steady script holds the bench client's secret
    out = subprocess.run(
        [
            "wrk",
            "--threads=1",
            "--connections=16",
            f"--duration={seconds}s",
            f"--timeout={int(REQUEST_TIMEOUT)}s",
            f"--script={script}",
            f"http://{HOST}:{port}/oauth/token",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))
    requests, failed = map(int, line.split()[1:])
    return requests, failed


def issue_tokens(
    port: int, script: str, target: int, interval: int, workdir: Path, pid: int
) -> tuple[int, int]:
    """Load the token route with wrk, ``interval`` seconds at a time, until ``target``
    tokens (2xx answers) have been issued; print the count and the RSS after each run.
    Returns (requests, responses >= 400)."""
    issued = requests = failed = 0
    started = time.monotonic()
    seconds = interval
    print(f"{'elapsed s':>9} {'tokens':>9} {'tokens/s':>8} {'RSS MiB':>8} {'peak MiB':>9}")
    while issued < target:
        run_started = time.monotonic()
        got, refused = run_wrk(port, script, seconds, workdir)
        elapsed = time.monotonic() - run_started
        requests += got
        failed += refused
        issued += got - refused
        if got == refused:
            raise RuntimeError(f"no token issued in {seconds} s ({refused} refused)")
        memory = memory_of(pid)
        print(
            f"{time.monotonic() - started:9.0f} {issued:9d} {(got - refused) / elapsed:8.0f} "
            f"{memory.rss_mib:8.1f} {memory.peak_mib:9.1f}",
            flush=True,
        )
        # The last run only as long as the tokens still missing take at this rate.
        rate = (got - refused) / max(elapsed, 1e-9)
        seconds = max(1, min(interval, math.ceil((target - issued) / rate)))
    return requests, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=10, help="per phase (default 10)")
    parser.add_argument(
        "--tokens",
        type=int,
        nargs="?",
        const=TARGET_TOKENS,
        default=None,
        metavar="N",
        help=f"issue N tokens instead of --seconds of them (no N: {TARGET_TOKENS:,})",
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=60,
        help="with --tokens: seconds between two RSS readings (default 60)",
    )
    parser.add_argument(
        "--flood-seconds",
        type=int,
        default=None,
        help="per flood of new client ids (default --seconds)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    if args.tokens is not None and args.tokens < 1:
        parser.error("--tokens must be at least 1")
    if min(args.seconds, args.interval) < 1 or (args.flood_seconds or 1) < 1:
        parser.error("--seconds, --interval and --flood-seconds must be at least 1")
    flood_seconds = args.flood_seconds or args.seconds
    workdir = Path(tempfile.mkdtemp(prefix="tokendealer-bench-memory-"))
    try:
        env = bench_environment(workdir, access_log=False)
        env.update(
            TOKENDEALER_RATE_LIMIT=UNLIMITED_RATE,
            TOKENDEALER_AUTH_FAILURE_LIMIT=UNLIMITED_RATE,
        )
        client_id, secret = register_client(env)
        route = token_route(client_id, secret)
        steady = _STEADY_SCRIPT.format(
            body=json.dumps(route.body.decode()),
            authorization=json.dumps(route.headers["Authorization"]),
        )
        port = free_port()
        rows: list[tuple[str, int, int, Memory]] = []
        with running_server(env, port, 1, "uvicorn", workdir / "server.log") as server:
            for _ in range(50):
                status, body = call(port, route)
                if status != 200:
                    raise RuntimeError(f"token request answered {status}: {body[:200]!r}")
            rows.append(("started, 50 tokens", 50, 0, memory_of(server.pid)))
            if args.tokens is None:
                print(f"tokens, one client for {args.seconds} s ...", file=sys.stderr)
                requests, failed = run_wrk(port, steady, args.seconds, workdir)
            else:
                print(f"{args.tokens:,} tokens, one client ...", file=sys.stderr)
                requests, failed = issue_tokens(
                    port, steady, args.tokens, args.interval, workdir, server.pid
                )
            rows.append(("tokens, one client", requests, failed, memory_of(server.pid)))
            for name in ("flood of new ids", "flood again"):
                print(f"{name} for {flood_seconds} s ...", file=sys.stderr)
                requests, failed = run_wrk(port, _FLOOD_SCRIPT, flood_seconds, workdir)
                rows.append((name, requests, failed, memory_of(server.pid)))
        print()
        print("tokendealer serve --workers 1 (uvicorn), wrk 16 connections")
        print(f"{'phase':22} {'requests':>9} {'>=400':>7} {'RSS MiB':>8} {'peak MiB':>9}")
        for name, requests, failed, memory in rows:
            print(
                f"{name:22} {requests:9d} {failed:7d} {memory.rss_mib:8.1f} {memory.peak_mib:9.1f}"
            )
        base, steady_row, flood, again = (row[3] for row in rows)
        ids = rows[2][1]
        growth = (flood.rss_mib - steady_row.rss_mib) / max(ids / 1000, 1e-9)
        print(
            f"flood: {ids} distinct client ids, RSS +{flood.rss_mib - steady_row.rss_mib:.1f} MiB "
            f"({growth:.3f} MiB per 1,000 ids); second flood of {rows[3][1]} more ids: "
            f"{again.rss_mib - flood.rss_mib:+.1f} MiB"
        )
        print(
            f"RSS after startup {base.rss_mib:.1f} MiB, peak over the run {again.peak_mib:.1f} MiB"
        )
        tokens = rows[1][1] - rows[1][2]
        verdict = "within" if again.peak_mib < TARGET_MIB else "OVER"
        print(
            f"target (issue 16): peak RSS {again.peak_mib:.1f} MiB after {tokens:,} tokens and "
            f"{ids + rows[3][1]:,} unknown client ids < {TARGET_MIB:.0f} MiB: {verdict} "
            f"({again.peak_mib / TARGET_MIB:.2f} of the target)"
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
