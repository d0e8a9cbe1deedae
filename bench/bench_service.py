"""Benchmark ``tokendealer serve`` against the raw signing rate of its own key.

One run, all on 127.0.0.1, everything in a fresh temporary directory:

1. a SQLite store and a keys directory of its own (``TOKENDEALER_DATABASE_URL``,
   ``TOKENDEALER_KEYS_DIR``); a client registered with the real CLI
   (``tokendealer clients add bench --scope read --json``);
2. ``tokendealer serve --workers 2 --port <free>`` started as a subprocess in its own
   process group, with the access log off unless ``--access-log`` is given;
3. ``POST /oauth/token``, ``GET /.well-known/jwks.json``, ``POST /verify_token``,
   ``POST /oauth/introspect`` and ``POST /oauth/revoke``
   loaded in turn, each for ``--seconds``, over ``--connections`` keep-alive connections,
   from a separate process: ``wrk`` when installed, else an asyncio load generator;
4. the server stopped, then the raw signing rate (for RS512, PKCS#1 v1.5 + SHA-512 over
   the signing input of a real token) of the *same* key measured on 2 processes in
   parallel for the same number of seconds, and its raw verification rate likewise;
5. a table of requests/s, p50/p99 latency, non-2xx responses and socket errors per route,
   and the ratio tokens/s ÷ raw 2-process signing rate (target: >= 0.45);
6. for ``POST /verify_token`` and ``POST /oauth/introspect``, requests per server
   CPU-second against what the route's fixed cost and one verification allow: the JWKS
   route (the cheapest, standing for the HTTP layer's fixed cost) and the raw verification
   rate, each per CPU-second, give ``1 / (1/jwks + 1/raw_verify)``; the ratio to it has
   a target of >= 0.85 (within 15%).

``--alg`` chooses the signing key's algorithm (default RS512, the dealer's). Given several
(``--alg RS512,ES256,EdDSA``), the first is benchmarked as above, then for each other one
``tokendealer keys generate --alg`` makes a key of it that the running server signs with,
and ``POST /oauth/token`` is loaded again; after the server stops, each key's raw signing
rate is measured, and a table gives tokens/s beside it per algorithm. ``--token-only``
loads the token route alone.

The server's process group is always terminated: on success, on error and on Ctrl-C.

Usage::

    .venv/bin/python bench/bench_service.py                      # uvicorn, 5 s per route
    .venv/bin/python bench/bench_service.py --server hypercorn --seconds 10
    .venv/bin/python bench/bench_service.py --access-log --loadgen python --json
    .venv/bin/python bench/bench_service.py --alg RS512,ES256,EdDSA --token-only
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
TARGET_RATIO = 0.45
#: Verification routes: requests per server CPU-second over the fixed HTTP cost (the JWKS
#: route) plus one raw verification, per CPU-second.
VERIFY_TARGET_RATIO = 0.85
#: Longest wait for ``/healthz`` after ``serve`` starts (workers import, load keys...).
STARTUP_TIMEOUT = 60.0
#: Longest wait for the server's process group to exit after SIGTERM, then SIGKILL.
SHUTDOWN_TIMEOUT = 15.0
#: Per-request timeout of the load generators, in seconds.
REQUEST_TIMEOUT = 5.0
#: Hard cap of requests per route for the Python generator (bounds memory for latencies).
MAX_REQUESTS = 2_000_000
SIGNING_PROCESSES = 2
#: A rate limit no benchmark reaches (the settings accept up to 9 digits).
UNLIMITED_RATE = "999999999/second"
#: The algorithms of ``tokendealer keys generate --alg`` (tokendealer.library.algorithms).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
DEFAULT_ALG = "RS512"
#: The longest wait for every worker to sign with a key just made (they look every second).
KEY_SWITCH_TIMEOUT = 30.0


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LoadResult:
    route: str
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50_ms: float
    p99_ms: float
    #: CPU used during the phase, in cores: the server's process group, the load
    #: generator, and everything else on the machine (other tenants skew the figures).
    cpu_server: float = 0.0
    cpu_loadgen: float = 0.0
    cpu_other: float = 0.0
    cpu_per_process: tuple[float, ...] = ()
    #: Runs of this phase: one more each time the workers were unevenly loaded.
    attempts: int = 1

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_per_second(self) -> float:
        ok = max(self.requests - self.non_2xx, 0)
        return ok / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Signing:
    rate: float  # signatures/s, all signing processes together
    cpu: float  # cores used by the signing processes
    cpu_other: float  # cores used by everything else meanwhile

    def ratio_per_cpu(self, tokens: LoadResult) -> float:
        """Tokens per server CPU-second over signatures per signer CPU-second.

        Unlike the plain ratio, this one does not move with the CPU that the load
        generator or other tenants take: it is the server's own overhead per token.
        """
        if not (tokens.cpu_server and self.cpu and self.rate):
            return 0.0
        return (tokens.ok_per_second / tokens.cpu_server) / (self.rate / self.cpu)


# -- the server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bench_environment(workdir: Path, access_log: bool) -> dict[str, str]:
    """This process's environment plus a store and keys directory of the run's own."""
    env = dict(os.environ)
    env.update(
        TOKENDEALER_DATABASE_URL=f"sqlite:///{workdir / 'bench.db'}",
        TOKENDEALER_KEYS_DIR=str(workdir / "keys"),
        TOKENDEALER_ACCESS_LOG="true" if access_log else "false",
    )
    return env


def tokendealer_command() -> list[str]:
    """The real CLI: the console script next to this interpreter, else ``-m tokendealer``."""
    script = Path(sys.executable).with_name("tokendealer")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tokendealer"]


def generate_key(env: dict[str, str], alg: str) -> str:
    """``tokendealer keys generate --alg ALG``: a key that signs from now on; its kid."""
    return subprocess.run(
        [*tokendealer_command(), "keys", "generate", "--alg", alg],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def register_client(env: dict[str, str]) -> tuple[str, str]:
    """``tokendealer init`` (the store and the first key: ``clients add`` refuses a
    database that does not exist), then ``clients add``."""
    subprocess.run(
        [*tokendealer_command(), "init"], env=env, check=True, capture_output=True, timeout=60
    )
    out = subprocess.run(
        [*tokendealer_command(), "clients", "add", "bench", "--scope", "read", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    record = json.loads(out)
    return record["client_id"], record["client_secret"]


@contextlib.contextmanager
def running_server(
    env: dict[str, str], port: int, workers: int, server: str, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``tokendealer serve`` in its own process group; always stop the whole group."""
    command = [
        *tokendealer_command(),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--server",
        server,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(process, port, log_path)
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left after a while."""
    pgid = process.pid  # start_new_session: the server leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=SHUTDOWN_TIMEOUT)
    # Workers may outlive the supervisor; the group is gone only when killpg says so.
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=SHUTDOWN_TIMEOUT)


def wait_healthy(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    url = f"http://{HOST}:{port}/healthz"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- CPU accounting (Linux /proc; zeros elsewhere) --------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all CPUs)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def group_cpu_seconds(pgid: int) -> dict[int, float]:
    """CPU seconds used so far by each live process of process group ``pgid``."""
    used: dict[int, float] = {}
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = stat_path.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(rest[2]) == pgid:
            used[int(stat_path.parent.name)] = (int(rest[11]) + int(rest[12])) / _TICKS
    return used


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (wrk, the load and signing processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuUse:
    """Cores used over one phase, split by who used them."""

    server: float = 0.0
    children: float = 0.0
    other: float = 0.0
    #: Cores per server process, busiest first: shows workers left idle by an uneven
    #: spread of keep-alive connections.
    per_process: tuple[float, ...] = ()


class CpuMeter:
    """CPU used between ``start`` and ``stop``."""

    def __init__(self, server_pgid: int | None = None) -> None:
        self.server_pgid = server_pgid

    def _sample(self) -> tuple[float, float, float, dict[int, float]]:
        server = group_cpu_seconds(self.server_pgid) if self.server_pgid else {}
        return time.perf_counter(), machine_busy_seconds(), children_cpu_seconds(), server

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> CpuUse:
        wall0, busy0, children0, server0 = self._start
        wall1, busy1, children1, server1 = self._sample()
        wall = wall1 - wall0
        if wall <= 0:
            return CpuUse()
        per_process = sorted(
            ((used - server0.get(pid, 0.0)) / wall for pid, used in server1.items()),
            reverse=True,
        )
        server = sum(per_process)
        children = (children1 - children0) / wall
        other = max((busy1 - busy0) / wall - server - children, 0.0)
        return CpuUse(server, children, other, tuple(p for p in per_process if p >= 0.01))


# -- the routes ------------------------------------------------------------------------


def basic_auth(client_id: str, secret: str) -> str:
    # RFC 6749 Appendix B: each part form-urlencoded, then base64 of "id:secret".
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def token_route(client_id: str, secret: str) -> Route:
    return Route(
        "POST /oauth/token",
        "POST",
        "/oauth/token",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": basic_auth(client_id, secret),
        },
        b"grant_type=client_credentials&scope=read",
    )


def jwks_route() -> Route:
    return Route("GET /.well-known/jwks.json", "GET", "/.well-known/jwks.json", {}, b"")


def verify_route(token: str) -> Route:
    return Route(
        "POST /verify_token",
        "POST",
        "/verify_token",
        {"Content-Type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode({"access_token": token}).encode(),
    )


def introspect_route(client_id: str, secret: str, token: str) -> Route:
    """The client introspects its own token (active: signature, claims, deny-list)."""
    return Route(
        "POST /oauth/introspect",
        "POST",
        "/oauth/introspect",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": basic_auth(client_id, secret),
        },
        urllib.parse.urlencode({"token": token}).encode(),
    )


def revoke_route(client_id: str, secret: str) -> Route:
    """A revocation of something that is not a token of ours: authentication and the
    request path, answered 200 (RFC 7009 §2.2) with no store write (a real token would be
    written to the deny-list once, then again on every repeat)."""
    return Route(
        "POST /oauth/revoke",
        "POST",
        "/oauth/revoke",
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": basic_auth(client_id, secret),
        },
        b"token=not-a-token-of-ours",
    )


def call(port: int, route: Route) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{route.path}",
        data=route.body or None,
        headers=route.headers,
        method=route.method,
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def token_header(token: str) -> dict[str, Any]:
    header_b64 = token.split(".", 1)[0]
    header: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4))
    )
    return header


def wait_for_key(port: int, route: Route, kid: str) -> str:
    """A token signed by ``kid``, once every worker signs with it: each looks at the keys
    directory every second, so after the first such token, wait 2.5 s and ask for ten
    more (each on a new connection, wherever accept() puts it); all must be ``kid``'s."""
    deadline = time.monotonic() + KEY_SWITCH_TIMEOUT
    seen_at: float | None = None
    streak = 0
    while True:
        status, body = call(port, route)
        if status != 200:
            raise RuntimeError(f"token request answered {status}: {body[:200]!r}")
        token: str = json.loads(body)["access_token"]
        if token_header(token).get("kid") == kid:
            seen_at = seen_at or time.monotonic()
            streak = streak + 1 if time.monotonic() - seen_at >= 2.5 else 0
            if streak >= 10:
                return token
        else:
            seen_at, streak = None, 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not sign with key {kid} within 30 s")
        time.sleep(0.05)


def check_routes(port: int, routes: list[Route]) -> None:
    """Each route answers 200 once before it is loaded: no benchmarking of error paths."""
    for route in routes:
        status, body = call(port, route)
        if status != 200:
            raise RuntimeError(f"{route.name} answered {status}: {body[:200]!r}")


# -- load generator: wrk ---------------------------------------------------------------

_WRK_SCRIPT = """\
wrk.method = {method}
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _lua_string(value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return json.dumps(text)  # a JSON string of ASCII text is a valid Lua string literal


def run_wrk(
    port: int, route: Route, seconds: float, connections: int, threads: int, workdir: Path
) -> LoadResult:
    script = workdir / "route.lua"
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in route.headers.items()
    )
    script.write_text(
        _WRK_SCRIPT.format(
            method=_lua_string(route.method), body=_lua_string(route.body), headers=headers
        )
    )
    script.chmod(0o600)  # it holds the bench client's secret
    command = [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(round(seconds), 1)}s",  # wrk takes whole seconds
        f"--timeout={int(REQUEST_TIMEOUT)}s",
        f"--script={script}",
        f"http://{HOST}:{port}{route.path}",
    ]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=seconds + 60
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))
    requests, duration_us, p50, p99, connect, read, write, status, timeout = map(
        int, line.split()[1:]
    )
    return LoadResult(
        route=route.name,
        requests=requests,
        seconds=duration_us / 1e6,
        # wrk counts responses with a status >= 400; these routes never answer 1xx/3xx.
        non_2xx=status,
        errors=connect + read + write + timeout,
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
    )


# -- load generator: asyncio, in its own process ---------------------------------------


class _Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.non_2xx = 0
        self.errors = 0
        self.latencies: list[float] = []


def _raw_request(route: Route, port: int) -> bytes:
    lines = [f"{route.method} {route.path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in route.headers.items()]
    lines.append(f"Content-Length: {len(route.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + route.body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; return (status, keep the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection") != "close"


async def _connection(
    port: int, request: bytes, deadline: float, counts: _Counts, budget: list[int]
) -> None:
    """One keep-alive connection sending requests one after another (no pipelining)."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            keep = False
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection(HOST, port), REQUEST_TIMEOUT
                    )
                reader, writer = conn
                started = time.perf_counter()
                writer.write(request)
                status, keep = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT)
                counts.latencies.append(time.perf_counter() - started)
                counts.requests += 1
                if not 200 <= status < 300:
                    counts.non_2xx += 1
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                counts.errors += 1
                await asyncio.sleep(0.01)  # a refused connection must not spin the loop
            if not keep and conn is not None:
                conn[1].close()  # a half-read response leaves the connection unusable
                conn = None
    finally:
        if conn is not None:
            conn[1].close()


async def _load_async(port: int, route: Route, seconds: float, connections: int) -> _Counts:
    counts = _Counts()
    request = _raw_request(route, port)
    budget = [MAX_REQUESTS]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_connection(port, request, deadline, counts, budget) for _ in range(connections))
    )
    counts.latencies.append(time.perf_counter() - started)  # elapsed, popped by the caller
    return counts


def load_python_worker(port: int, route: Route, seconds: float, connections: int) -> dict[str, Any]:
    """Runs in a separate process: the load must not share the bench's interpreter."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    counts = asyncio.run(_load_async(port, route, seconds, connections))
    elapsed = counts.latencies.pop()
    latencies = sorted(counts.latencies)

    def percentile(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(int(len(latencies) * p / 100), len(latencies) - 1)] * 1000

    return asdict(
        LoadResult(
            route=route.name,
            requests=counts.requests,
            seconds=elapsed,
            non_2xx=counts.non_2xx,
            errors=counts.errors,
            p50_ms=percentile(50),
            p99_ms=percentile(99),
        )
    )


def run_python(port: int, route: Route, seconds: float, connections: int) -> LoadResult:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(load_python_worker, port, route, seconds, connections)
        return LoadResult(**future.result(timeout=seconds + 60))


# -- raw signing rate ------------------------------------------------------------------


def signer(pem: bytes, alg: str) -> Any:
    """A function signing a message with the key in ``pem`` as ``alg`` does, through
    ``cryptography`` alone: PKCS#1 v1.5 (RS*), PSS with a salt of the hash's size (PS*),
    ECDSA (ES*, DER: the dealer's conversion to R || S is not the signature's cost), or
    Ed25519 (EdDSA)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    key = serialization.load_pem_private_key(pem, password=None)
    if alg == "EdDSA":
        assert isinstance(key, ed25519.Ed25519PrivateKey)  # noqa: S101 - the server's own key
        return key.sign
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    if alg.startswith("ES"):
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # noqa: S101
        ecdsa = ec.ECDSA(digest)
        return lambda message: key.sign(message, ecdsa)
    assert isinstance(key, rsa.RSAPrivateKey)  # noqa: S101
    pad: padding.AsymmetricPadding = (
        padding.PKCS1v15()
        if alg.startswith("RS")
        else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    )
    return lambda message: key.sign(message, pad, digest)


def verifier(pem: bytes, alg: str, message: bytes) -> Any:
    """A function verifying a signature of ``message`` by the key in ``pem`` as ``alg``
    does, with its public half, through ``cryptography`` alone (the signature made once,
    as ``signer`` makes it)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    public: Any = serialization.load_pem_private_key(pem, password=None).public_key()
    signature = signer(pem, alg)(message)
    if alg == "EdDSA":
        return lambda message: public.verify(signature, message)
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    if alg.startswith("ES"):
        ecdsa = ec.ECDSA(digest)
        return lambda message: public.verify(signature, message, ecdsa)
    pad: padding.AsymmetricPadding = (
        padding.PKCS1v15()
        if alg.startswith("RS")
        else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    )
    return lambda message: public.verify(signature, message, pad, digest)


def sign_worker(
    pem_path: str, alg: str, message: bytes, seconds: float, start_at: float, verify: bool = False
) -> tuple[float, float]:
    """Sign ``message`` as ``alg`` (or with ``verify``, verify a signature of it) for
    ``seconds``; return (operations/s, CPU cores used)."""
    pem = Path(pem_path).read_bytes()
    sign = verifier(pem, alg, message) if verify else signer(pem, alg)
    for _ in range(10):
        sign(message)
    # Both processes start together, so the rate is that of 2 busy cores at once.
    time.sleep(max(start_at - time.time(), 0))
    count = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + seconds
    while True:
        for _ in range(8):
            sign(message)
        count += 8
        if time.perf_counter() >= deadline:
            wall = time.perf_counter() - started
            return count / wall, (time.process_time() - cpu_started) / wall


def raw_signing_rate(
    pem_path: Path, alg: str, message: bytes, seconds: float, verify: bool = False
) -> Signing:
    """Signatures (with ``verify``, verifications) per second of the key, on
    ``SIGNING_PROCESSES`` processes at once."""
    context = multiprocessing.get_context("spawn")
    meter = CpuMeter()
    with concurrent.futures.ProcessPoolExecutor(SIGNING_PROCESSES, mp_context=context) as pool:
        start_at = time.time() + 2.0  # after both interpreters have started
        futures = [
            pool.submit(sign_worker, str(pem_path), alg, message, seconds, start_at, verify)
            for _ in range(SIGNING_PROCESSES)
        ]
        time.sleep(max(start_at - time.time(), 0))
        meter.start()
        done = [f.result(timeout=seconds + 60) for f in futures]
        other = meter.stop().other  # the signers are not reaped yet: they count here
    # While the signers run, the machine's busy time minus theirs is someone else's.
    cpu = sum(cores for _, cores in done)
    return Signing(sum(rate for rate, _ in done), cpu, max(other - cpu, 0.0))


def signing_key_of(token: str, keys_dir: Path, alg: str) -> tuple[Path, bytes]:
    """The PEM of the key that signed ``token`` (its ``kid``) and the token's signing input."""
    header_b64, payload_b64, _ = token.split(".")
    header = token_header(token)
    pem = keys_dir / f"{header['kid']}.pem"
    if header.get("alg") != alg or not pem.is_file():
        raise RuntimeError(f"token not signed {alg} by a key in {keys_dir}: {header}")
    return pem, f"{header_b64}.{payload_b64}".encode()


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per route (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--workers", type=int, default=2, help="server workers (default 2)")
    parser.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    parser.add_argument("--access-log", action="store_true", help="keep the server's access log on")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed (auto), or the asyncio one",
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--uneven-retries",
        type=int,
        default=2,
        choices=range(6),
        metavar="N",
        help="load a phase again (up to N times) when one worker got most connections",
    )
    parser.add_argument(
        "--alg",
        action="append",
        metavar="ALG[,ALG...]",
        help=f"signing algorithm(s) of the server's key, one of {', '.join(ALGORITHMS)} "
        f"(default {DEFAULT_ALG}); several: tokens/s and raw signing per algorithm",
    )
    parser.add_argument("--token-only", action="store_true", help="load POST /oauth/token alone")
    parser.add_argument("--json", action="store_true", help="print one JSON object as well")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    if not 1 <= args.connections <= 1024:
        parser.error("--connections must be between 1 and 1024")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    if args.loadgen == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk), use --loadgen python")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    algs = [alg.strip() for given in args.alg or [DEFAULT_ALG] for alg in given.split(",")]
    unknown = [alg for alg in algs if alg not in ALGORITHMS]
    if unknown or len(set(algs)) != len(algs):
        parser.error(f"--alg takes distinct algorithms among {', '.join(ALGORITHMS)}")
    args.algs = algs
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP take the same path as Ctrl-C: unwind, stop the server in `finally`.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _uneven(result: LoadResult, workers: int) -> bool:
    """The busiest worker did at least twice the work of the least busy one."""
    busy = [c for c in result.cpu_per_process if c >= 0.05][:workers]
    return workers > 1 and (len(busy) < workers or busy[0] > 2 * busy[-1])


@dataclass(frozen=True)
class AlgorithmRun:
    """The token route loaded while a key of ``alg`` signs, and that key's raw rate."""

    alg: str
    tokens: LoadResult
    signing: Signing
    token_bytes: int

    @property
    def ratio(self) -> float:
        return self.tokens.ok_per_second / self.signing.rate if self.signing.rate else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "alg": self.alg,
            "tokens_per_second": round(self.tokens.ok_per_second, 1),
            "p50_ms": round(self.tokens.p50_ms, 2),
            "p99_ms": round(self.tokens.p99_ms, 2),
            "raw_signing_per_second": round(self.signing.rate, 1),
            "ratio": round(self.ratio, 3),
            "ratio_per_cpu": round(self.signing.ratio_per_cpu(self.tokens), 3),
            "server_cpu_ms_per_token": round(self.cpu_ms_per_token, 3),
            "token_bytes": self.token_bytes,
        }

    @property
    def cpu_ms_per_token(self) -> float:
        """Server CPU per token issued (all workers): steadier than tokens/s when other
        tenants take CPU."""
        ok = self.tokens.ok_per_second
        return 1000 * self.tokens.cpu_server / ok if ok else 0.0


JWKS_ROUTE = "GET /.well-known/jwks.json"
VERIFY_ROUTES = ("POST /verify_token", "POST /oauth/introspect")
#: Routes that verify no signature (the revocation benchmarked is of a non-token).
FIXED_COST_ROUTES = (JWKS_ROUTE, "POST /oauth/revoke")


def per_cpu_second(result: LoadResult) -> float:
    """Answered requests per CPU-second of the server (all its processes)."""
    return result.ok_per_second / result.cpu_server if result.cpu_server else 0.0


def verification_targets(results: list[LoadResult], verifying: Signing) -> list[dict[str, Any]]:
    """Each verification route against what the HTTP layer's fixed cost plus one raw
    verification allow, all per CPU-second: ``1 / (1/fixed + 1/raw)``. The fixed cost is
    the JWKS route's (issue 16's definition) and, stricter when it is cheaper, that of the
    cheapest route loaded that verifies no signature."""
    by_route = {r.route: r for r in results}
    jwks = by_route.get(JWKS_ROUTE)
    if jwks is None or not per_cpu_second(jwks) or not (verifying.rate and verifying.cpu):
        return []
    raw = verifying.rate / verifying.cpu
    cheapest = max(
        (by_route[route] for route in FIXED_COST_ROUTES if route in by_route),
        key=per_cpu_second,
    )

    def expected(fixed: LoadResult) -> float:
        return 1 / (1 / per_cpu_second(fixed) + 1 / raw)

    return [
        {
            "route": route,
            "per_cpu_second": round(per_cpu_second(by_route[route]), 1),
            "raw_verify_per_cpu_second": round(raw, 1),
            "jwks_per_cpu_second": round(per_cpu_second(jwks), 1),
            "expected_per_cpu_second": round(expected(jwks), 1),
            "ratio": round(per_cpu_second(by_route[route]) / expected(jwks), 3),
            "cheapest_route": cheapest.route,
            "cheapest_per_cpu_second": round(per_cpu_second(cheapest), 1),
            "ratio_to_cheapest": round(per_cpu_second(by_route[route]) / expected(cheapest), 3),
        }
        for route in VERIFY_ROUTES
        if route in by_route
    ]


def print_verification(
    args: argparse.Namespace, verifying: Signing, rows: list[dict[str, Any]]
) -> None:
    print(
        f"raw {args.algs[0]} verification, same key, {SIGNING_PROCESSES} processes: "
        f"{verifying.rate:.0f} /s (CPU cores: verifiers {verifying.cpu:.2f}, other "
        f"{verifying.cpu_other:.2f})"
    )
    for row in rows:
        verdict = "meets" if row["ratio"] >= VERIFY_TARGET_RATIO else "BELOW"
        print(
            f"{row['route']} per server CPU-second: {row['per_cpu_second']:.0f}, expected "
            f"1 / (1/{row['jwks_per_cpu_second']:.0f} JWKS + 1/"
            f"{row['raw_verify_per_cpu_second']:.0f} raw verify) = "
            f"{row['expected_per_cpu_second']:.0f}: ratio {row['ratio']:.3f} ({verdict} "
            f"target {VERIFY_TARGET_RATIO}); with the cheapest route "
            f"({row['cheapest_route']}, {row['cheapest_per_cpu_second']:.0f}) as the fixed "
            f"cost: {row['ratio_to_cheapest']:.3f}"
        )


def print_algorithms(runs: list[AlgorithmRun]) -> None:
    print()
    print(
        f"POST /oauth/token per algorithm; raw signing: the same key, {SIGNING_PROCESSES} "
        "processes, cryptography alone"
    )
    print(
        f"{'alg':6} {'tokens/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'raw sign/s':>10} "
        f"{'ratio':>6} {'per CPU-s':>9} {'CPU ms/token':>12} {'token bytes':>11}"
    )
    for run in runs:
        row = run.summary()
        print(
            f"{run.alg:6} {row['tokens_per_second']:8.0f} {row['p50_ms']:7.2f} "
            f"{row['p99_ms']:7.2f} {row['raw_signing_per_second']:10.0f} {row['ratio']:6.3f} "
            f"{row['ratio_per_cpu']:9.3f} {run.cpu_ms_per_token:12.3f} {run.token_bytes:11d}"
        )


def print_report(
    args: argparse.Namespace, results: list[LoadResult], signing: Signing, ratio: float
) -> None:
    print()
    print(
        f"tokendealer serve --server {args.server} --workers {args.workers}, "
        f"access log {'on' if args.access_log else 'off'}; load: {args.loadgen}, "
        f"{args.connections} connections, {args.seconds:g} s per route, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'route':27} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} {'errors':>6}"
        f"  CPU cores: {'server':>6} {'load':>5} {'other':>5}"
    )
    for r in results:
        print(
            f"{r.route:27} {r.rps:7.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.non_2xx:7d} "
            f"{r.errors:6d}  {'':11}{r.cpu_server:6.2f} {r.cpu_loadgen:5.2f} {r.cpu_other:5.2f}"
        )
    print(
        f"raw {args.algs[0]} signing, same key, {SIGNING_PROCESSES} processes: "
        f"{signing.rate:.0f} /s (CPU cores: signers {signing.cpu:.2f}, other "
        f"{signing.cpu_other:.2f})"
    )
    tokens = results[0].ok_per_second
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(
        f"ratio tokens/s / raw signing: {tokens:.0f} / {signing.rate:.0f} = {ratio:.3f} "
        f"({verdict} target {TARGET_RATIO}); per CPU-second: "
        f"{signing.ratio_per_cpu(results[0]):.3f}"
    )
    for r in results:
        shares = " ".join(f"{c:.2f}" for c in r.cpu_per_process)
        print(f"  {r.route}: cores per server process {shares} (run {r.attempts})")
    idle = [r.route for r in results if _uneven(r, args.workers)]
    if idle:
        print(
            f"warning: workers unevenly loaded on {', '.join(idle)} (keep-alive connections "
            "are spread by accept(), not per request); those figures are low"
        )
    busiest = max([r.cpu_other for r in results] + [signing.cpu_other])
    if busiest > 0.2:
        print(
            f"warning: other processes used up to {busiest:.2f} cores during the run; "
            "figures are low by that much"
        )


def load_phase(
    args: argparse.Namespace, port: int, route: Route, meter: CpuMeter, workdir: Path
) -> LoadResult:
    """Load ``route`` for ``--seconds``; again while one worker got most connections."""
    print(f"loading {route.name} for {args.seconds:g} s ...", file=sys.stderr)
    for attempt in range(1 + args.uneven_retries):
        meter.start()
        if args.loadgen == "wrk":
            result = run_wrk(port, route, args.seconds, args.connections, args.wrk_threads, workdir)
        else:
            result = run_python(port, route, args.seconds, args.connections)
        cpu = meter.stop()
        result.cpu_server, result.cpu_loadgen, result.cpu_other = (
            cpu.server,
            cpu.children,
            cpu.other,
        )
        result.cpu_per_process = cpu.per_process
        result.attempts = attempt + 1
        if not _uneven(result, args.workers):
            break
        print("  workers unevenly loaded; loading again", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="tokendealer-bench-"))
    try:
        env = bench_environment(workdir, args.access_log)
        # One client from one address is exactly what the per-client and per-address rate
        # limits exist to stop; raise them so the run measures throughput, not 429s. The
        # limiter still does all its work per request. Values set by the caller win.
        for name in ("TOKENDEALER_RATE_LIMIT", "TOKENDEALER_VERIFY_RATE_LIMIT"):
            env.setdefault(name, UNLIMITED_RATE)
        client_id, secret = register_client(env)  # init makes the first key: RS512
        if args.algs[0] != DEFAULT_ALG:
            generate_key(env, args.algs[0])
        port = free_port()
        results: list[LoadResult] = []
        #: (alg, the token route's result, a token its key signed), per algorithm.
        phases: list[tuple[str, LoadResult, str]] = []
        with running_server(env, port, args.workers, args.server, workdir / "server.log") as server:
            meter = CpuMeter(server.pid)
            token_request = token_route(client_id, secret)
            status, body = call(port, token_request)
            if status != 200:
                raise RuntimeError(f"token request answered {status}: {body[:200]!r}")
            token = json.loads(body)["access_token"]
            routes = [token_request]
            if not args.token_only:
                routes += [
                    jwks_route(),
                    verify_route(token),
                    introspect_route(client_id, secret, token),
                    revoke_route(client_id, secret),
                ]
            check_routes(port, routes)
            for route in routes:
                results.append(load_phase(args, port, route, meter, workdir))
            phases.append((args.algs[0], results[0], token))
            for alg in args.algs[1:]:
                print(f"a key of {alg} signs from now on ...", file=sys.stderr)
                token = wait_for_key(port, token_request, generate_key(env, alg))
                phases.append((alg, load_phase(args, port, token_request, meter, workdir), token))
        # The server is stopped: the signing processes have the CPUs to themselves.
        runs: list[AlgorithmRun] = []
        for alg, tokens, token in phases:
            print(
                f"signing with the server's {alg} key for {args.seconds:g} s ...", file=sys.stderr
            )
            pem, message = signing_key_of(token, workdir / "keys", alg)
            runs.append(
                AlgorithmRun(
                    alg, tokens, raw_signing_rate(pem, alg, message, args.seconds), len(token)
                )
            )
        signing = runs[0].signing
        signing_rate = signing.rate
        ratio = results[0].ok_per_second / signing_rate
        targets: list[dict[str, Any]] = []
        if not args.token_only:
            alg, _, token = phases[0]
            print(
                f"verifying with the server's {alg} key for {args.seconds:g} s ...", file=sys.stderr
            )
            pem, message = signing_key_of(token, workdir / "keys", alg)
            verifying = raw_signing_rate(pem, alg, message, args.seconds, verify=True)
            targets = verification_targets(results, verifying)
        print_report(args, results, signing, ratio)
        if not args.token_only:
            print_verification(args, verifying, targets)
        if len(runs) > 1:
            print_algorithms(runs)
        if args.json:
            print(
                json.dumps(
                    {
                        "server": args.server,
                        "workers": args.workers,
                        "access_log": args.access_log,
                        "loadgen": args.loadgen,
                        "connections": args.connections,
                        "seconds": args.seconds,
                        "alg": args.algs[0],
                        "routes": [{**asdict(r), "rps": round(r.rps, 1)} for r in results],
                        "tokens_per_second": round(results[0].ok_per_second, 1),
                        "raw_signing_per_second": round(signing_rate, 1),
                        "signing_cpu": round(signing.cpu, 2),
                        "signing_cpu_other": round(signing.cpu_other, 2),
                        "ratio": round(ratio, 3),
                        "ratio_per_cpu": round(signing.ratio_per_cpu(results[0]), 3),
                        "algorithms": [run.summary() for run in runs],
                        "verification": targets,
                    }
                )
            )
        return 0
    except KeyboardInterrupt:
        print("interrupted; server stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
