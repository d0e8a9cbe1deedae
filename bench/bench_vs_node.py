"""tokendealer side by side with node-oidc-provider, the same key, the same load (issue 16).

One run, all on 127.0.0.1, everything in a fresh temporary directory:

1. a SQLite store and a keys directory of its own, a client registered with the real CLI
   (bench_service's helpers); ``tokendealer init`` makes the RSA-2048 RS512 key;
2. ``tokendealer serve --workers 1``, then ``--workers 2``, on its defaults (uvicorn,
   access log on) but with the rate limits raised so nothing is refused, and
   node-oidc-provider (``bench/node-oidc/server.mjs``, one process, ``npm ci`` first when
   ``node_modules`` is missing) configured for client_credentials with JWT access tokens
   signed RS512 by the *same* private key and kid, for a client with the same id and
   secret; each in its own process group, loaded in turn by the same command,
   ``wrk -t1 -c64 -d<seconds>s`` posting ``grant_type=client_credentials&scope=read`` with
   Basic authentication to ``/oauth/token``, after a 2 s warm-up of the same kind; the
   server's CPU read from /proc over the timed window;
3. every server stopped, the raw RS512 signing rate of that key (cryptography, PKCS#1 v1.5
   + SHA-512 over a real token's signing input, 2 processes) per CPU-second;
4. a table (setup, tokens/s, tokens per server CPU-second, p50, p99, non-2xx) and the
   ratios issue 16 sets targets for.

Usage::

    .venv/bin/python bench/bench_vs_node.py                 # 10 s per setup
    .venv/bin/python bench/bench_vs_node.py --seconds 20 --json
    .venv/bin/python bench/bench_vs_node.py --seconds 6 --rounds 5   # medians of 5

On a shared machine one window can land on someone else's busy second: ``--rounds N``
runs the whole comparison N times in turn (each setup, then the raw signing rate) and
ends with each ratio's median, lowest and highest over the rounds, every ratio taken
from one round's own figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_service import (  # the sibling module, found through sys.path
    HOST,
    SIGNING_PROCESSES,
    UNLIMITED_RATE,
    CpuMeter,
    LoadResult,
    Route,
    Signing,
    _terminate,
    bench_environment,
    call,
    free_port,
    raw_signing_rate,
    register_client,
    run_wrk,
    running_server,
    signing_key_of,
    stop_group,
    tail,
    token_header,
    token_route,
)

NODE_DIR = Path(__file__).resolve().parent / "node-oidc"
CONNECTIONS = 64
WRK_THREADS = 1
WARMUP_SECONDS = 2.0
WORKER_COUNTS = (1, 2)
#: Signing threads of the third tokendealer setup (one worker): issue 16 asks whether a
#: small pool beats a second worker.
SIGNING_THREADS = 2
ALG = "RS512"
STARTUP_TIMEOUT = 60.0

#: Issue 16's targets.
TARGET_VS_RAW = 0.75  # tokens per server CPU-s / raw signatures per CPU-s
TARGET_VS_NODE_CPU = 1.5  # tokendealer's tokens per CPU-s / node's
TARGET_SCALING = 0.85  # workers-2 tokens/s / (2 x workers-1 tokens/s)
TARGET_TAIL = 3.0  # p99 / p50, at most
TARGET_VS_NODE_RATE = 1.0  # one process's tokens/s / node's


@dataclass
class Setup:
    """One server loaded by wrk over the timed window."""

    name: str
    load: LoadResult

    @property
    def tokens_per_second(self) -> float:
        return self.load.ok_per_second

    @property
    def tokens_per_cpu_second(self) -> float:
        cpu = self.load.cpu_server
        return self.tokens_per_second / cpu if cpu else 0.0

    @property
    def tail_ratio(self) -> float:
        return self.load.p99_ms / self.load.p50_ms if self.load.p50_ms else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "setup": self.name,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "tokens_per_cpu_second": round(self.tokens_per_cpu_second, 1),
            "p50_ms": round(self.load.p50_ms, 2),
            "p99_ms": round(self.load.p99_ms, 2),
            "p99_over_p50": round(self.tail_ratio, 2),
            "non_2xx": self.load.non_2xx,
            "errors": self.load.errors,
            "requests": self.load.requests,
            "seconds": round(self.load.seconds, 3),
            "cpu_server": round(self.load.cpu_server, 3),
            "cpu_loadgen": round(self.load.cpu_loadgen, 3),
            "cpu_other": round(self.load.cpu_other, 3),
            "cpu_per_process": [round(c, 3) for c in self.load.cpu_per_process],
        }


# -- node-oidc-provider ----------------------------------------------------------------


def ensure_node_modules() -> None:
    """``npm ci`` in bench/node-oidc when its node_modules is missing."""
    if (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed (node-oidc-provider needs node >= 20 and npm)")
    print("npm ci in bench/node-oidc ...", file=sys.stderr)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        check=True,
        stdout=sys.stderr,
        timeout=600,
    )


def start_node(
    port: int, pem: Path, kid: str, client_id: str, secret: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """node-oidc-provider in its own process group (stopped with bench_service.stop_group)."""
    command = [
        shutil.which("node") or "node",
        str(NODE_DIR / "server.mjs"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--key",
        str(pem),
        "--kid",
        kid,
        "--client-id",
        client_id,
    ]
    # The secret in the environment: a command line is readable by every local user.
    env = dict(os.environ, NODE_ENV="production", CLIENT_SECRET=secret)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_tokens(
    process: subprocess.Popen[bytes], port: int, route: Route, log_path: Path
) -> str:
    """Wait until ``route`` answers 200; check its token is RS512 (the same key's kid is
    checked by the caller); return the token."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log_path)}")
        try:
            status, body = call(port, route)
        except OSError:
            time.sleep(0.1)
            continue
        if status != 200:
            raise RuntimeError(f"token request answered {status}: {body[:300]!r}")
        token: str = json.loads(body)["access_token"]
        if token_header(token).get("alg") != ALG:
            raise RuntimeError(f"token not signed {ALG}: {token_header(token)}")
        return token
    raise RuntimeError(f"no token after {STARTUP_TIMEOUT:.0f} s:\n{tail(log_path)}")


# -- loading ---------------------------------------------------------------------------


def load(name: str, port: int, route: Route, pgid: int, seconds: float, workdir: Path) -> Setup:
    """A warm-up, then the timed window: wrk -t1 -c64, the server's CPU from /proc."""
    print(f"{name}: warm-up {WARMUP_SECONDS:g} s, then {seconds:g} s ...", file=sys.stderr)
    run_wrk(port, route, WARMUP_SECONDS, CONNECTIONS, WRK_THREADS, workdir)
    meter = CpuMeter(pgid)
    meter.start()
    result = run_wrk(port, route, seconds, CONNECTIONS, WRK_THREADS, workdir)
    cpu = meter.stop()
    result.route = name
    result.cpu_server, result.cpu_loadgen, result.cpu_other = cpu.server, cpu.children, cpu.other
    result.cpu_per_process = cpu.per_process
    return Setup(name, result)


# -- report ----------------------------------------------------------------------------


def ratios(setups: dict[str, Setup], signing: Signing) -> list[dict[str, Any]]:
    """Issue 16's ratios, each with its target and whether this run meets it."""
    raw_per_cpu = signing.rate / signing.cpu if signing.cpu else 0.0
    node = setups["node"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, at_most: bool = False) -> None:
        meets = value <= target if at_most else value >= target
        out.append(
            {
                "ratio": name,
                "value": round(value, 3),
                "target": f"{'<=' if at_most else '>='} {target:g}",
                "meets": meets,
            }
        )

    def div(a: float, b: float) -> float:
        return a / b if b else 0.0

    for workers in WORKER_COUNTS:
        dealer = setups[f"tokendealer-{workers}"]
        add(
            f"tokendealer {workers}w tokens/CPU-s / raw {ALG} signatures/CPU-s",
            div(dealer.tokens_per_cpu_second, raw_per_cpu),
            TARGET_VS_RAW,
        )
    for workers in WORKER_COUNTS:
        dealer = setups[f"tokendealer-{workers}"]
        add(
            f"tokendealer {workers}w tokens/CPU-s / node tokens/CPU-s",
            div(dealer.tokens_per_cpu_second, node.tokens_per_cpu_second),
            TARGET_VS_NODE_CPU,
        )
    one, two = setups["tokendealer-1"], setups["tokendealer-2"]
    add(
        "tokendealer 2w tokens/s / (2 x 1w tokens/s)",
        div(two.tokens_per_second, 2 * one.tokens_per_second),
        TARGET_SCALING,
    )
    for workers in WORKER_COUNTS:
        dealer = setups[f"tokendealer-{workers}"]
        add(f"tokendealer {workers}w p99 / p50", dealer.tail_ratio, TARGET_TAIL, at_most=True)
    add(
        "tokendealer 1w tokens/s / node tokens/s",
        div(one.tokens_per_second, node.tokens_per_second),
        TARGET_VS_NODE_RATE,
    )
    pooled = setups.get("tokendealer-1t")
    if pooled is not None:
        add(
            "tokendealer 1w+threads tokens/s / node tokens/s",
            div(pooled.tokens_per_second, node.tokens_per_second),
            TARGET_VS_NODE_RATE,
        )
        add("tokendealer 1w+threads p99 / p50", pooled.tail_ratio, TARGET_TAIL, at_most=True)
        # Informative, no target: does a pool beat a second worker?
        out.append(
            {
                "ratio": "tokendealer 1w+threads tokens/s / 2w tokens/s",
                "value": round(div(pooled.tokens_per_second, two.tokens_per_second), 3),
                "target": "",
                "meets": True,
            }
        )
    return out


def print_report(
    args: argparse.Namespace,
    setups: dict[str, Setup],
    signing: Signing,
    computed: list[dict[str, Any]],
    versions: dict[str, str],
) -> None:
    print()
    print(
        f"POST /oauth/token, client_credentials, client_secret_basic; wrk -t{WRK_THREADS} "
        f"-c{CONNECTIONS} -d{max(round(args.seconds), 1)}s after a {WARMUP_SECONDS:g} s "
        f"warm-up; the same RSA-2048 key, {ALG}; {os.cpu_count()} CPUs"
    )
    print(
        f"tokendealer {versions['tokendealer']} (uvicorn, {args.event_loop or 'default'} loop, "
        "access log on, limits raised); "
        f"oidc-provider {versions['oidc-provider']} on node {versions['node']}"
    )
    print(
        f"{'setup':22} {'tokens/s':>8} {'tokens/CPU-s':>12} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'non-2xx':>7} {'errors':>6}  cores: {'server':>6} {'wrk':>4} {'other':>5}"
    )
    labels = {
        "tokendealer-1": "tokendealer --workers 1",
        "tokendealer-2": "tokendealer --workers 2",
        "tokendealer-1t": f"tokendealer 1w+{args.signing_threads}thr",
        "node": "node-oidc-provider",
    }
    for key, setup in setups.items():
        r = setup.load
        print(
            f"{labels[key]:22} {setup.tokens_per_second:8.0f} "
            f"{setup.tokens_per_cpu_second:12.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} "
            f"{r.non_2xx:7d} {r.errors:6d}  {'':7}{r.cpu_server:6.2f} {r.cpu_loadgen:4.2f} "
            f"{r.cpu_other:5.2f}"
        )
    raw_per_cpu = signing.rate / signing.cpu if signing.cpu else 0.0
    print(
        f"{'raw ' + ALG + ' signing':22} {signing.rate:8.0f} {raw_per_cpu:12.0f}"
        f"{'':40}{signing.cpu:6.2f} {'':4} {signing.cpu_other:5.2f}"
        f"   ({SIGNING_PROCESSES} processes, cryptography)"
    )
    two = setups["tokendealer-2"].load
    print(
        "cores per tokendealer --workers 2 process (supervisor included): "
        + " ".join(f"{c:.2f}" for c in two.cpu_per_process)
    )
    print()
    print(f"{'ratio (issue 16)':58} {'value':>6} {'target':>7}")
    for row in computed:
        verdict = (
            ""
            if not row["target"]
            else "meets"
            if row["meets"]
            else "BELOW"
            if ">" in row["target"]
            else "ABOVE"
        )
        print(f"{row['ratio']:58} {row['value']:6.2f} {row['target']:>7}  {verdict}")
    busiest = max([s.load.cpu_other for s in setups.values()] + [signing.cpu_other])
    if busiest > 0.2:
        print(
            f"warning: other processes used up to {busiest:.2f} cores during the run; "
            "tokens/s are low by that much (tokens per CPU-second much less so)"
        )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        dealer = version("tokendealer")
    except PackageNotFoundError:
        dealer = "?"
    node = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    package = NODE_DIR / "node_modules" / "oidc-provider" / "package.json"
    provider = json.loads(package.read_text())["version"] if package.is_file() else "?"
    return {"tokendealer": dealer, "node": node, "oidc-provider": provider}


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="timed window per setup (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as well")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        help="TOKENDEALER_EVENT_LOOP of every tokendealer setup (default: the service's)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every setup this many times in turn; ratios' medians (default 1)",
    )
    parser.add_argument(
        "--signing-threads",
        type=int,
        default=SIGNING_THREADS,
        help=f"threads of the one-worker pool setup (default {SIGNING_THREADS}; 0: skip it)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be in [1, 600]")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be in [1, 20]")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    if shutil.which("node") is None:
        parser.error("node is not installed (node >= 20 and npm)")
    return args


def one_round(
    args: argparse.Namespace, env: dict[str, str], client_id: str, secret: str, workdir: Path
) -> tuple[dict[str, Setup], Signing]:
    """Every setup loaded in turn, then the raw signing rate of the same key."""
    route = token_route(client_id, secret)
    setups: dict[str, Setup] = {}
    token = ""
    runs = [(f"tokendealer-{w}", w, f"tokendealer --workers {w}", {}) for w in WORKER_COUNTS]
    if args.signing_threads:
        threads = {"TOKENDEALER_SIGNING_THREADS": str(args.signing_threads)}
        name = f"tokendealer --workers 1, {args.signing_threads} signing threads"
        runs.append(("tokendealer-1t", 1, name, threads))
    for key, workers, name, extra in runs:
        port = free_port()
        log_path = workdir / f"{key}.log"
        with running_server({**env, **extra}, port, workers, "uvicorn", log_path) as server:
            token = wait_for_tokens(server, port, route, log_path)
            setups[key] = load(name, port, route, server.pid, args.seconds, workdir)
    pem, message = signing_key_of(token, workdir / "keys", ALG)
    kid = str(token_header(token)["kid"])
    port = free_port()
    log_path = workdir / "node.log"
    node = start_node(port, pem, kid, client_id, secret, log_path)
    try:
        node_token = wait_for_tokens(node, port, route, log_path)
        if token_header(node_token).get("kid") != kid:
            raise RuntimeError(f"node signed with another key: {token_header(node_token)}")
        setups["node"] = load("node-oidc-provider", port, route, node.pid, args.seconds, workdir)
    finally:
        stop_group(node)
    print(f"signing with the same key for {args.seconds:g} s ...", file=sys.stderr)
    return setups, raw_signing_rate(pem, ALG, message, args.seconds)


def print_rounds(rounds: list[list[dict[str, Any]]]) -> None:
    """Each ratio's median over the rounds, with its lowest and highest (each round's
    ratios come from that round's own measurements, side by side)."""
    print()
    print(f"over {len(rounds)} rounds, each ratio from one round's own figures:")
    print(f"{'ratio (issue 16)':58} {'median':>6} {'lowest':>6} {'highest':>7} {'target':>7}")
    for index, first in enumerate(rounds[0]):
        values = sorted(round_[index]["value"] for round_ in rounds)
        median = statistics.median(values)
        verdict = ""
        if first["target"]:
            bound = float(first["target"].split()[-1])
            meets = median <= bound if "<" in first["target"] else median >= bound
            verdict = "meets" if meets else "BELOW" if ">" in first["target"] else "ABOVE"
        print(
            f"{first['ratio']:58} {median:6.2f} {values[0]:6.2f} {values[-1]:7.2f} "
            f"{first['target']:>7}  {verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="tokendealer-vs-node-"))
    try:
        ensure_node_modules()
        env = bench_environment(workdir, access_log=True)  # the default: access log on
        # One client from one address is what the limits stop: raise them (caller's win).
        for name in (
            "TOKENDEALER_RATE_LIMIT",
            "TOKENDEALER_VERIFY_RATE_LIMIT",
            "TOKENDEALER_AUTH_FAILURE_LIMIT",
        ):
            env.setdefault(name, UNLIMITED_RATE)
        if args.event_loop:
            env["TOKENDEALER_EVENT_LOOP"] = args.event_loop
        client_id, secret = register_client(env)  # init makes the RSA-2048 RS512 key
        found = versions()
        rounds: list[dict[str, Any]] = []
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {number} of {args.rounds}", file=sys.stderr)
            setups, signing = one_round(args, env, client_id, secret, workdir)
            computed = ratios(setups, signing)
            print_report(args, setups, signing, computed, found)
            rounds.append(
                {
                    "setups": [s.summary() for s in setups.values()],
                    "raw_signing": {
                        **asdict(signing),
                        "processes": SIGNING_PROCESSES,
                        "per_cpu_second": round(signing.rate / signing.cpu, 1)
                        if signing.cpu
                        else 0.0,
                    },
                    "ratios": computed,
                }
            )
        if args.rounds > 1:
            print_rounds([r["ratios"] for r in rounds])
        if args.json:
            print(
                json.dumps(
                    {
                        "seconds": args.seconds,
                        "connections": CONNECTIONS,
                        "wrk_threads": WRK_THREADS,
                        "alg": ALG,
                        "cpus": os.cpu_count(),
                        "versions": found,
                        "rounds": rounds,
                    }
                )
            )
        return 0
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
