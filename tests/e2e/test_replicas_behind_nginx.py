"""Three replicas behind a real nginx (issue 15): deploy/compose.yaml's topology without
containers, proven under load.

Three ``tokendealer serve`` processes, each on its own port with its own empty keys
directory (no directory is shared: each start gets a new one), ``KEY_STORE=database``
under one key-encryption key, on one PostgreSQL database reached through a
``FreezableProxy`` (the network between the replicas and the database, which the test
partitions), Redis for the rate limits, ``TRUSTED_PROXIES=1``; in front, Debian's nginx,
started by the test on a free port with a configuration written here after
deploy/nginx/nginx.conf (static addresses: nginx 1.22 has no ``resolve``). One difference:
nginx here passes a POST to /oauth/token or /verify_token that a replica took and then
died with to another replica (``proxy_next_upstream ... non_idempotent``: asking again
changes nothing). Without it, the requests in flight at the SIGKILL are answered 502 by
nginx (one or two a run).

Under steady load through nginx (threads issuing tokens with client_secret_basic, each
token checked at once against the JWKS, then verified through ``/verify_token`` and
``TokenVerifier`` (its keys fetched through nginx), and the oldest token still valid
verified again both ways), in sequence:

1. two key rotations (``keys rotate --activate-after 1``), the retired keys pruned by the
   real rule (``keys prune``, no --force) once their tokens, living 5 s, have expired;
2. one replica killed with SIGKILL (its process group) and restarted on its port;
3. a rolling restart of the three with SIGTERM (the graceful shutdown), each ready again
   (``/readyz`` 200) before the next is stopped;
4. PostgreSQL unreachable for 5 s (the proxy frozen: nothing refused, nothing answered).

Must hold: no valid token fails verification by either path; no 5xx but 503s, and those
only while the database is away (nginx answers no 502 or 504 of its own); every issued
token's kid is in the JWKS when the token is checked; token requests are answered 200
again within 2 s of the database's return. The counts are printed (``-s`` shows them).
About 40 s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from tests.support import leaks
from tests.support.cli import CLI, Result
from tests.support.environment import REDIS_URL, unavailable
from tests.support.faults import FreezableProxy
from tests.support.processes import free_port
from tests.support.servers import ServerProcess, run_server, server_env, wait_until
from tests.support.tokens import GRANT, TOKEN_PATH, VERIFY_PATH, basic
from tokendealer.library.verify import TokenVerifier

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

AUDIENCE = "https://api.replicas.test"
REPLICAS = 3
#: Load threads, each on its own keep-alive connection to nginx.
CLIENTS = 4
TOKEN_TTL = 5
LEEWAY = 1
#: How long after its key retires a token may still verify: ``keys prune`` waits this out.
TOKEN_LIFETIME = TOKEN_TTL + LEEWAY
#: The JWKS max-age, and the delay of each rotation: every replica (watching its keys every
#: KEY_WATCH_INTERVAL) and every verifier's cache has the new key before it signs.
ACTIVATE_AFTER = 1
KEY_WATCH_INTERVAL = 0.2
SHUTDOWN_DELAY = 0.3
DATABASE_TIMEOUT = 1.0
OUTAGE = 5.0
#: Token requests must be answered 200 again this soon after the database returns.
RECOVERY_BOUND = 2.0
#: An older token is verified again only while it has this long to live (and the leeway).
VALID_MARGIN = 1.0
STEP_TIMEOUT = 20.0

ENV = {
    "TOKENDEALER_KEY_STORE": "database",
    "TOKENDEALER_TRUSTED_PROXIES": "1",
    "TOKENDEALER_TOKEN_TTL": str(TOKEN_TTL),
    "TOKENDEALER_LEEWAY": str(LEEWAY),
    "TOKENDEALER_JWKS_MAX_AGE": str(ACTIVATE_AFTER),
    "TOKENDEALER_KEY_WATCH_INTERVAL": str(KEY_WATCH_INTERVAL),
    "TOKENDEALER_DATABASE_TIMEOUT": str(DATABASE_TIMEOUT),
    "TOKENDEALER_DATABASE_RETRY_INTERVAL": "0.2",
    "TOKENDEALER_READINESS_CACHE": "0.2",
    "TOKENDEALER_SHUTDOWN_DELAY": str(SHUTDOWN_DELAY),
    "TOKENDEALER_SHUTDOWN_TIMEOUT": "5",
    # This test is about availability, not limits: one address (nginx's) makes every call.
    "TOKENDEALER_RATE_LIMIT": "1000000/minute",
    "TOKENDEALER_VERIFY_RATE_LIMIT": "1000000/minute",
}

#: nginx in front of the replicas: deploy/nginx/nginx.conf's upstream and proxy settings,
#: on loopback addresses, everything under the test's directory, in the foreground
#: (``-g 'daemon off; pid ...; error_log ...;'`` on the command line).
NGINX_CONF = """\
{user}
worker_processes 1;

events {{
    worker_connections 1024;
}}

http {{
    server_tokens off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    # Which replica answered each request, and every attempt before it: upstream_status
    # "502, 200" is a request nginx passed to another replica, upstream_bytes_sent "0, ..."
    # one whose first attempt never got its request out (a refused connection).
    log_format dealer escape=json
        '{{"msec":$msec,"method":"$request_method","path":"$uri","status":$status,'
        '"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
        '"upstream_bytes_sent":"$upstream_bytes_sent"}}';
    access_log {prefix}/access.log dealer;

    upstream tokendealer {{
        # Passive health: one refused connection or timeout takes a replica out for 1 s.
{servers}
        keepalive 16;
        # Below the dealers' TOKENDEALER_KEEP_ALIVE (5 s).
        keepalive_timeout 4s;
    }}

    server {{
        listen 127.0.0.1:{port};

        location /metrics {{
            deny all;
        }}

        location = /nginx-health {{
            access_log off;
            default_type text/plain;
            return 200 "ok\\n";
        }}

        location / {{
            proxy_pass http://tokendealer;
            include {prefix}/proxy.conf;
            # Another replica when one refuses the connection or times out; never on a 503
            # (every replica answers 503 while the database is away: nginx passes them on
            # instead of taking them all out and answering 502 itself).
            proxy_next_upstream error timeout http_502;
        }}

        # A request a replica took and then died with (SIGKILL) is passed to another one
        # too, though it is a POST: asking for a client-credentials token again, or
        # verifying a token again, changes nothing (the lost token was never delivered).
        location = /oauth/token {{
            proxy_pass http://tokendealer;
            include {prefix}/proxy.conf;
            proxy_next_upstream error timeout http_502 non_idempotent;
        }}

        location = /verify_token {{
            proxy_pass http://tokendealer;
            include {prefix}/proxy.conf;
            proxy_next_upstream error timeout http_502 non_idempotent;
        }}
    }}
}}
"""

NGINX_PROXY_CONF = """\
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host $http_host;
# Appends the address nginx sees: the dealers (TRUSTED_PROXIES=1) take the rightmost entry.
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_next_upstream_tries {tries};
proxy_connect_timeout 2s;
proxy_read_timeout 30s;
"""


# -- the services around the replicas -------------------------------------------------------


def nginx_executable() -> str:
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        unavailable("nginx", "no nginx executable (apt-get install nginx-light)")
    assert found is not None
    return found


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(name="database")
def _database(postgres_url: str) -> Iterator[str]:
    """A database of this test's own on the session's server: the session's private one
    holds other tests' keys, sealed under other key-encryption keys."""
    name = f"tokendealer_replicas_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(postgres_url, f'CREATE DATABASE "{name}"'))
    yield f"{postgres_url.rpartition('/')[0]}/{name}"
    asyncio.run(_execute(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(name="redis_prefix")
def _redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis server, emptied afterwards."""
    from redis import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except Exception as exc:
        client.close()
        unavailable("Redis", f"{REDIS_URL}: {type(exc).__name__}: {exc}")
    prefix = f"tokendealer-replicas-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def running_nginx(directory: Path, port: int, upstreams: list[int]) -> Iterator[str]:
    """nginx on 127.0.0.1:``port`` in front of ``upstreams``; yields its URL."""
    executable = nginx_executable()
    directory.mkdir()
    servers = "\n".join(
        f"        server 127.0.0.1:{upstream} max_fails=1 fail_timeout=1s;"
        for upstream in upstreams
    )
    # Run as root (CI), its workers would be nobody, who cannot enter the test's 0700
    # temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    (directory / "proxy.conf").write_text(NGINX_PROXY_CONF.format(tries=len(upstreams)))
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, prefix=directory, servers=servers, port=port))
    log = directory / "nginx.out"
    globals_ = f"daemon off; pid {directory}/nginx.pid; error_log {directory}/error.log notice;"
    command = [executable, "-p", str(directory), "-c", str(conf), "-g", globals_]
    with log.open("ab") as out:
        checked = subprocess.run(
            [*command, "-t"], stdout=out, stderr=subprocess.STDOUT, check=False, timeout=30
        )
    assert checked.returncode == 0, log.read_text()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    leaks.LOG_FILES.extend([directory / "access.log", directory / "error.log", log])
    try:

        def answers() -> bool:
            assert proc.poll() is None, f"nginx exited with {proc.returncode}: {log.read_text()}"
            with suppress(httpx.TransportError):
                return httpx.get(url + "/nginx-health", timeout=1).status_code == 200
            return False

        wait_until(answers, timeout=STEP_TIMEOUT, what="nginx answering")
        yield url
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: workers finish their requests
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the replicas ----------------------------------------------------------------------------


def ready(url: str) -> bool:
    with suppress(httpx.TransportError):
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    return False


@dataclass
class Replica:
    """One ``tokendealer serve`` on a fixed port; each start in a new working directory,
    so with a new, empty keys directory."""

    name: str
    port: int
    env: dict[str, str]
    root: Path
    starts: int = 0
    workdirs: list[Path] = field(default_factory=list)
    server: ServerProcess | None = None
    _stack: ExitStack = field(default_factory=ExitStack)

    def start(self) -> None:
        self.starts += 1
        workdir = self.root / f"{self.name}-start-{self.starts}"
        self.workdirs.append(workdir)
        self._stack = ExitStack()
        self.server = self._stack.enter_context(run_server(workdir, port=self.port, env=self.env))
        wait_until(lambda: ready(self.url), timeout=STEP_TIMEOUT, what=f"{self.name} ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, signum: int) -> int:
        """Send ``signum`` to the replica's process group; its exit status."""
        assert self.server is not None
        proc = self.server.proc
        os.killpg(proc.pid, signum)
        code = proc.wait(timeout=STEP_TIMEOUT)
        self._stack.close()
        self.server = None
        return code

    def stop(self) -> None:
        self._stack.close()  # SIGTERM, then SIGKILL if it is still there (run_server's)


# -- the load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One thing a load thread did: ``what`` (token, jwks, verify_token, library), in which
    phase, when (monotonic), and its outcome: an HTTP status, or what went wrong."""

    what: str
    phase: str
    started: float
    ended: float
    outcome: str
    #: For verifications: the token just issued (True), or an older one (False).
    fresh: bool = True


@dataclass
class _Timing:
    """A call being timed: ``with load._call(what) as call: ... call.outcome = ...``."""

    load: Load
    what: str
    phase: str
    started: float
    fresh: bool
    outcome: str = "no outcome"

    def __enter__(self) -> _Timing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.load.calls.append(
            Call(self.what, self.phase, self.started, time.monotonic(), self.outcome, self.fresh)
        )


class Load:
    """CLIENTS threads through nginx, each in a loop: a token; its kid looked up in the
    JWKS; the token verified at /verify_token and by the library; the oldest token still
    valid verified again both ways."""

    def __init__(self, url: str, client_id: str, secret: str, verifier: TokenVerifier) -> None:
        self.url = url
        self.authorization = basic(client_id, secret)
        self.verifier = verifier
        self.calls: list[Call] = []
        self.phase = "start"
        self.kids: Counter[str] = Counter()
        self._pool: deque[tuple[float, str, float]] = deque()  # (issued, token, exp)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]
        self.crashes: list[str] = []

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(STEP_TIMEOUT)

    def count(self, what: str, phase: str | None = None, outcome: str | None = None) -> int:
        return sum(
            1
            for call in list(self.calls)
            if call.what == what
            and (phase is None or call.phase == phase)
            and (outcome is None or call.outcome == outcome)
        )

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=30) as http:
                while not self._stop.is_set():
                    if not self._exchange(http):
                        time.sleep(0.02)  # a 503: do not spin
        except Exception as exc:  # reported by the test
            self.crashes.append(f"{type(exc).__name__}: {exc}")

    def _call(self, what: str, fresh: bool = True) -> _Timing:
        """Time one call, in the phase current when it starts."""
        return _Timing(self, what, self.phase, time.monotonic(), fresh)

    def _exchange(self, http: httpx.Client) -> bool:
        with self._call("token") as call:
            try:
                response = http.post(TOKEN_PATH, data=GRANT, headers=self.authorization)
                call.outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                call.outcome = type(exc).__name__
                return False
        if response.status_code != 200:
            return False
        token: str = response.json()["access_token"]
        leaks.remember(token)
        kid = jwt.get_unverified_header(token)["kid"]
        expires: float = jwt.decode(token, options={"verify_signature": False})["exp"]
        with self._lock:
            self.kids[kid] += 1
        self._published(http, kid)
        self._verify(http, token, fresh=True)
        older = self._oldest_valid()
        if older is not None:
            self._verify(http, older, fresh=False)
        with self._lock:
            self._pool.append((time.monotonic(), token, expires))
        return True

    def _published(self, http: httpx.Client, kid: str) -> None:
        """Whether the JWKS (through nginx, from any replica) publishes ``kid`` now."""
        with self._call("jwks") as call:
            try:
                response = http.get("/.well-known/jwks.json")
            except httpx.HTTPError as exc:
                call.outcome = type(exc).__name__
                return
            if response.status_code != 200:
                call.outcome = str(response.status_code)
            else:
                kids = {key["kid"] for key in response.json()["keys"]}
                call.outcome = "published" if kid in kids else "kid not published"

    def _verify(self, http: httpx.Client, token: str, *, fresh: bool) -> None:
        with self._call("verify_token", fresh) as call:
            try:
                data = {"access_token": token, "audience": AUDIENCE}
                call.outcome = str(http.post(VERIFY_PATH, data=data).status_code)
            except httpx.HTTPError as exc:
                call.outcome = type(exc).__name__
        with self._call("library", fresh) as call:
            try:
                self.verifier.verify_sync(token)
                call.outcome = "ok"
            except Exception as exc:
                call.outcome = f"{type(exc).__name__}: {exc}"

    def _oldest_valid(self) -> str | None:
        """The oldest token issued at least a second ago with VALID_MARGIN left to live."""
        with self._lock:
            while self._pool and self._pool[0][2] - time.time() <= VALID_MARGIN:
                self._pool.popleft()
            if self._pool and time.monotonic() - self._pool[0][0] >= 1.0:
                return self._pool[0][1]
        return None


# -- the operations --------------------------------------------------------------------------


def rotate(cli: CLI) -> tuple[str, float]:
    """``keys rotate --activate-after ACTIVATE_AFTER``: the new kid, and a moment (wall
    clock) by which it signs, the key before it retired."""
    result = cli.ok("keys", "rotate", "--activate-after", str(ACTIVATE_AFTER))
    return result.stdout.strip(), time.time() + ACTIVATE_AFTER


def wait_for_clock(moment: float, what: str) -> None:
    wait_until(lambda: time.time() > moment, timeout=STEP_TIMEOUT, what=what)


def published_kids(url: str) -> list[str]:
    jwks = httpx.get(url + "/.well-known/jwks.json", timeout=5).json()
    return [key["kid"] for key in jwks["keys"]]


def in_window(call: Call, start: float, end: float) -> bool:
    return call.ended >= start and call.started <= end


def nginx_retries(access_log: Path, phases: list[tuple[str, float]]) -> dict[str, Counter[str]]:
    """Per phase (by wall clock), the requests nginx passed from one replica to another:
    ``refused`` when the failed attempt never sent its request, ``resent`` when it had."""
    counts: dict[str, Counter[str]] = {name: Counter() for name, _ in phases}
    for line in access_log.read_text().splitlines():
        entry = json.loads(line)
        attempts = entry["upstream_status"].split(", ")
        if len(attempts) < 2:
            continue
        phase = [name for name, began in phases if began <= entry["msec"]][-1:] or ["start"]
        sent = entry["upstream_bytes_sent"].split(", ")[:-1]
        kind = "resent" if any(size not in ("0", "-") for size in sent) else "refused"
        counts.setdefault(phase[0], Counter())[f"{kind} {entry['path']}"] += 1
    return counts


# -- the test ------------------------------------------------------------------------------


def test_three_replicas_behind_nginx_rotate_restart_and_lose_the_database(
    tmp_path: Path, database: str, redis_prefix: str
) -> None:
    nginx_executable()  # skip (or fail in CI) before starting anything
    database_parts = urlsplit(database)
    nginx_port = free_port()
    nginx_url = f"http://127.0.0.1:{nginx_port}"
    kek = secrets.token_bytes(32)
    common = {
        **ENV,
        "TOKENDEALER_ISSUER": nginx_url,
        "TOKENDEALER_KEY_ENCRYPTION_KEY": base64.b64encode(kek).decode(),
        "TOKENDEALER_REDIS_URL": REDIS_URL,
        "TOKENDEALER_REDIS_KEY_PREFIX": redis_prefix,
    }
    operator = CLI(
        server_env(
            tmp_path / "operator", nginx_port, {**common, "TOKENDEALER_DATABASE_URL": database}
        ),
        cwd=tmp_path,
    )
    assert database_parts.hostname is not None and database_parts.port is not None

    with ExitStack() as stack:
        proxy = stack.enter_context(FreezableProxy(database_parts.hostname, database_parts.port))
        behind_proxy = database_parts._replace(
            netloc=f"{database_parts.username}@127.0.0.1:{proxy.port}"
        ).geturl()
        replicas = [
            Replica(
                f"replica-{n}",
                free_port(),
                {**common, "TOKENDEALER_DATABASE_URL": behind_proxy},
                tmp_path,
            )
            for n in range(1, REPLICAS + 1)
        ]
        for replica in replicas:
            stack.callback(replica.stop)
        # All three on the empty database at once: one of them makes the first key.
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(Replica.start, replicas))
        (first,) = [row["kid"] for row in operator.ok("keys", "list", "--json").json()]
        for replica in replicas:
            assert published_kids(replica.url) == [first], replica.name
        secret: str = operator.ok("clients", "add", "svc", "--audience", AUDIENCE, "--json").json()[
            "client_secret"
        ]
        stack.enter_context(
            running_nginx(tmp_path / "nginx", nginx_port, [r.port for r in replicas])
        )
        verifier = TokenVerifier(
            nginx_url, AUDIENCE, leeway=LEEWAY, min_cache=0.5, refetch_cooldown=0.2
        )
        load = stack.enter_context(Load(nginx_url, "svc", secret, verifier))
        phases: list[tuple[str, float]] = []  # each phase's name and start (wall clock)
        load_started = time.monotonic()

        def enter(phase: str, at_least: int = 20) -> None:
            """Wait for AT_LEAST tokens of the phase before, then start PHASE."""
            if load.phase != "start":
                current = load.phase
                wait_until(
                    lambda: load.count("token", current, "200") >= at_least,
                    timeout=STEP_TIMEOUT,
                    what=f"{at_least} tokens in phase {current}",
                )
            load.phase = phase
            phases.append((phase, time.time()))

        enter("steady")

        # 1. Two rotations, each retired key pruned once its tokens have expired.
        enter("rotations")
        pruned: list[Result] = []
        second, second_signs = rotate(operator)
        wait_for_clock(second_signs, "the second key signing")
        wait_until(lambda: load.kids[second] > 0, timeout=STEP_TIMEOUT, what="a second-key token")
        third, third_signs = rotate(operator)
        wait_for_clock(third_signs, "the third key signing")
        wait_until(lambda: load.kids[third] > 0, timeout=STEP_TIMEOUT, what="a third-key token")
        pruned.append(operator.ok("keys", "prune"))  # both retired keys have live tokens
        wait_for_clock(second_signs + TOKEN_LIFETIME, "the first key's tokens expired")
        pruned.append(operator.ok("keys", "prune"))
        wait_for_clock(third_signs + TOKEN_LIFETIME, "the second key's tokens expired")
        pruned.append(operator.ok("keys", "prune"))
        for replica in replicas:
            wait_until(
                lambda replica=replica: published_kids(replica.url) == [third],
                timeout=STEP_TIMEOUT,
                what=f"{replica.name} publishing the third key alone",
            )

        # 2. One replica killed, and restarted on its port with a new, empty directory.
        enter("sigkill")
        killed = replicas[1]
        killed_code = killed.send(signal.SIGKILL)
        down = time.monotonic()
        # Past nginx's fail_timeout (1 s): it tries the dead replica again, and moves on.
        wait_until(
            lambda: time.monotonic() - down > 1.5 and load.count("token", "sigkill", "200") >= 20,
            timeout=STEP_TIMEOUT,
            what="load on the two replicas left",
        )
        killed.start()

        # 3. A rolling restart: SIGTERM, restarted and ready before the next.
        enter("rolling restart")
        graceful_codes = []
        for replica in replicas:
            graceful_codes.append(replica.send(signal.SIGTERM))
            replica.start()
            restarted = load.count("token", "rolling restart", "200")
            wait_until(
                lambda restarted=restarted: (
                    load.count("token", "rolling restart", "200") >= restarted + 10
                ),
                timeout=STEP_TIMEOUT,
                what=f"tokens after {replica.name} restarted",
            )

        # 4. The database unreachable for OUTAGE seconds.
        enter("database outage")
        proxy.freeze()
        frozen = time.monotonic()
        time.sleep(OUTAGE)
        proxy.thaw()
        thawed = time.monotonic()
        load.phase = "after"
        phases.append(("after", time.time()))
        wait_until(
            lambda: (
                time.monotonic() - thawed > RECOVERY_BOUND + 1
                and load.count("token", "after", "200") >= 20
            ),
            timeout=STEP_TIMEOUT,
            what="tokens after the database returned",
        )
        for replica in replicas:
            wait_until(
                lambda replica=replica: ready(replica.url),
                timeout=STEP_TIMEOUT,
                what=f"{replica.name} ready after the outage",
            )
        elapsed = time.monotonic() - load_started
    # The load stopped first, then nginx, the replicas and the proxy.
    listing = operator.ok("keys", "list", "--json").json()
    retries = nginx_retries(tmp_path / "nginx" / "access.log", phases)

    calls = list(load.calls)
    tokens = [c for c in calls if c.what == "token"]
    outage_end = thawed + RECOVERY_BOUND

    # -- the counts ---------------------------------------------------------------------
    def tally(what: str, phase: str | None = None) -> dict[str, int]:
        return dict(
            Counter(c.outcome for c in calls if c.what == what and phase in (None, c.phase))
        )

    after_thaw = [c for c in tokens if c.ended > thawed]
    failures_after = [c for c in after_thaw if c.outcome != "200"]
    recovered = max((c.ended for c in failures_after), default=thawed) - thawed
    first_ok = (
        min(
            (c.ended for c in after_thaw if c.outcome == "200" and c.started >= thawed),
            default=float("inf"),
        )
        - thawed
    )
    verified = {
        path: Counter(
            ("ok" if c.outcome in ("200", "ok") else c.outcome, c.fresh)
            for c in calls
            if c.what == path
        )
        for path in ("verify_token", "library")
    }
    print()
    print(f"replicas behind nginx: {REPLICAS} replicas, {CLIENTS} clients, {elapsed:.1f} s of load")
    print(
        f"tokens issued: {load.count('token', outcome='200')} "
        f"(by kid: {', '.join(f'{k[:8]} {n}' for k, n in load.kids.items())})"
    )
    for path, counts in verified.items():
        shown = ", ".join(
            f"{outcome} {'fresh' if fresh else 'older'}: {n}"
            for (outcome, fresh), n in sorted(counts.items())
        )
        print(f"verifications by {path}: {shown}")
    print(f"kid published when checked: {tally('jwks')}")
    for phase, _ in phases:
        print(
            f"  {phase:16} token {tally('token', phase)}  verify_token "
            f"{tally('verify_token', phase)}  library {tally('library', phase)}  "
            f"nginx passed on {dict(retries.get(phase, {}))}"
        )
    print(
        f"database away {thawed - frozen:.2f} s; token requests 200 again {recovered:.2f} s "
        f"after its return (first 200 after {first_ok:.2f} s)"
    )
    print(f"prunes: {[p.stdout.strip() or p.stderr.strip() for p in pruned]}")
    print(f"SIGKILL exit {killed_code}; SIGTERM exits {graceful_codes}")

    # -- what must hold -------------------------------------------------------------------
    assert load.crashes == []
    assert killed_code == -signal.SIGKILL
    assert graceful_codes == [0] * REPLICAS, "each graceful stop ends with status 0"
    # Every call answered: statuses other than 200 are 503s while the database was away.
    wrong = [
        c
        for c in calls
        if c.outcome not in ("200", "ok", "published")
        and not (c.outcome == "503" and in_window(c, frozen, outage_end))
    ]
    failed = Counter((c.what, c.phase, c.outcome) for c in wrong)
    assert wrong == [], f"{len(wrong)} calls failed: {failed}"
    # Zero failed verifications of valid tokens, both paths (included above; by name here).
    assert all(outcome in ("ok", "503") for outcome, _ in verified["verify_token"]), verified
    assert all(outcome == "ok" for outcome, _ in verified["library"]), verified
    assert tally("jwks") == {"published": load.count("token", outcome="200")}
    assert recovered <= RECOVERY_BOUND, f"token requests 200 again {recovered:.2f} s after"
    assert first_ok <= RECOVERY_BOUND
    # The scenario itself: three keys signed in turn, both retired keys pruned by the rule,
    # load in every phase, the database's absence seen.
    assert set(load.kids) == {first, second, third}
    assert [p.stdout.strip() for p in pruned] == ["", f"removed {first}", f"removed {second}"]
    assert first in pruned[0].stderr and second in pruned[0].stderr
    assert [row["kid"] for row in listing] == [third] and listing[0]["state"] == "active"
    for phase, _ in phases:
        if phase != "database outage":  # tokens then come only from cached client records
            assert load.count("token", phase, "200") >= 10, phase
    assert load.count("token", "database outage", "503") > 0, "the outage was not seen"
    assert verified["library"][("ok", False)] > 0, "older tokens were verified again"
    # No key on any disk: each start had its own directory, and wrote no key to it.
    keys_dirs = [tmp_path / "operator" / "keys"]
    keys_dirs += [workdir / "keys" for replica in replicas for workdir in replica.workdirs]
    for keys_dir in keys_dirs:
        assert not keys_dir.exists() or list(keys_dir.iterdir()) == [], keys_dir
