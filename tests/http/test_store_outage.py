"""A hung or locked database (issue: hardening): every route that needs the store answers
503 ``temporarily_unavailable`` with Retry-After within the database timeout plus a second,
fails fast while the outage lasts, logs it once, and recovers by itself.

The PostgreSQL case goes through ``tests.faults.FreezableProxy``: frozen, it behaves like a
network partition or a SIGSTOPped server (connections stay open, nothing answers). The
SQLite case holds the database's write lock from another connection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
from quart import Quart

from tests.support.apps import add_client
from tests.support.environment import QuartClient
from tests.support.faults import FreezableProxy
from tests.support.metrics import scrape, value
from tests.support.servers import run_server
from tests.support.tokens import get_token, request_token, token_request_parts
from tokendealer.http import create_app
from tokendealer.keys.keyset import KeySet
from tokendealer.protocol.clients import Client
from tokendealer.service.dealer import Dealer
from tokendealer.settings import ConfigError, Settings
from tokendealer.store import SQLStore, StoreUnavailable, store_for

TIMEOUT = 0.5
RETRY = 0.3
#: The PostgreSQL database is shared by the session's tests: an id of this module's own.
CLIENT_ID = f"outage-{uuid.uuid4().hex[:8]}"
#: What the issue allows: an answer within the database timeout plus one second.
BOUND = TIMEOUT + 1.0
#: Between two looks at a condition a test waits for.
POLL = 0.02


def outage_settings(settings: Settings, database_url: str) -> Settings:
    return replace(
        settings,
        database_url=database_url,
        database_timeout=TIMEOUT,
        database_retry_interval=RETRY,
        readiness_cache=0.05,
        client_cache_ttl=0.0,
    )


async def timed(call: Awaitable[Any]) -> tuple[float, Any]:
    started = time.monotonic()
    result = await call
    return time.monotonic() - started, result


Call = tuple[str, Callable[[], Awaitable[Any]]]


def every_store_route(client: QuartClient, secret: str, token: str) -> list[Call]:
    """One request of each kind that needs the store (client records or the deny-list)."""
    auth = (CLIENT_ID, secret)
    return [
        ("/oauth/token", lambda: request_token(client, CLIENT_ID, secret)),
        ("/verify_token", lambda: client.post("/verify_token", form={"access_token": token})),
        (
            "/oauth/introspect",
            lambda: client.post("/oauth/introspect", form={"token": token}, auth=auth),
        ),
        ("/oauth/revoke", lambda: client.post("/oauth/revoke", form={"token": token}, auth=auth)),
        ("/readyz", lambda: client.get("/readyz")),
    ]


async def assert_unavailable(path: str, response: Any) -> None:
    assert response.status_code == 503, (path, await response.get_data())
    assert int(response.headers["Retry-After"]) >= 1
    body = await response.get_json()
    assert body.get("active") is not True
    if path == "/readyz":
        assert body == {"status": "unavailable", "checks": {"store": "unavailable", "keys": "ok"}}
    else:
        assert body["error"] == "temporarily_unavailable"


@pytest.fixture(name="proxy")
def _proxy(postgres_url: str) -> Iterator[FreezableProxy]:
    parts = urlsplit(postgres_url)
    with FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


@pytest.fixture(name="hung_app")
async def _hung_app(
    settings: Settings, postgres_url: str, proxy: FreezableProxy
) -> AsyncIterator[Quart]:
    parts = urlsplit(postgres_url)
    through_proxy = parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl()
    app = create_app(outage_settings(settings, through_proxy))
    async with app.test_app():
        await app.extensions["tokendealer"].store.purge_revoked(time.time())
        yield app


@pytest.mark.postgres
async def test_hung_postgres_answers_503_fast_logs_once_and_recovers(
    hung_app: Quart, proxy: FreezableProxy
) -> None:
    dealer: Dealer = hung_app.extensions["tokendealer"]
    client = hung_app.test_client()
    secret = await add_client(dealer, CLIENT_ID)
    token = await get_token(client, CLIENT_ID, secret)

    with structlog.testing.capture_logs() as logs:
        proxy.freeze()
        # A burst while the database hangs: every kind of request, several of each.
        calls = every_store_route(client, secret, token) * 6
        first_wave = await asyncio.gather(*(timed(call()) for _, call in calls))
        for (path, _), (elapsed, response) in zip(calls, first_wave, strict=True):
            assert elapsed <= BOUND, (path, elapsed)
            await assert_unavailable(path, response)
        # While the outage lasts, requests fail fast: at most one per retry interval
        # (the probe) waits on the database.
        second_wave = []
        for path, call in every_store_route(client, secret, token):
            elapsed, response = await timed(call())
            await assert_unavailable(path, response)
            second_wave.append(elapsed)
        assert statistics.median(second_wave) < TIMEOUT / 2
        # Liveness and the key set do not depend on the database.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/.well-known/jwks.json")).status_code == 200

        proxy.thaw()
        thawed = time.monotonic()
        while (await request_token(client, CLIENT_ID, secret)).status_code != 200:
            assert time.monotonic() - thawed < 2.0, "not recovered within 2 s"
            await asyncio.sleep(POLL)
        verified = await client.post("/verify_token", form={"access_token": token})
        assert verified.status_code == 200
        # The readiness answer of the outage is reused for 0.05 s, then the store is ok.
        recovered = time.monotonic()
        while (readiness := await client.get("/readyz")).status_code != 200:
            await assert_unavailable("/readyz", readiness)
            assert time.monotonic() - recovered < 1.0, "/readyz still unavailable"
            await asyncio.sleep(POLL)
        assert (await readiness.get_json())["status"] == "ok"

    events = [entry["event"] for entry in logs]
    assert events.count("store_unavailable") == 1, events
    assert events.count("store_recovered") == 1, events


async def test_locked_sqlite_answers_503_within_the_timeout_then_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    """A write that waits on another process's lock gives up after the timeout (SQLite's
    busy timeout follows the setting: it was 15 s) and the store recovers by itself."""
    app = create_app(outage_settings(settings, settings.database_url))
    async with app.test_app():
        dealer: Dealer = app.extensions["tokendealer"]
        client = app.test_client()
        secret = await add_client(dealer, CLIENT_ID)
        token = await get_token(client, CLIENT_ID, secret)
        path = settings.database_url.removeprefix("sqlite:///")
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            elapsed, response = await timed(
                client.post("/oauth/revoke", form={"token": token}, auth=(CLIENT_ID, secret))
            )
            await assert_unavailable("/oauth/revoke", response)
            assert TIMEOUT * 0.8 <= elapsed <= BOUND
            during = await scrape(client)
        finally:
            holder.rollback()
            holder.close()
        # Failing fast for the retry interval (a setting shrunk for tests), then served.
        released = time.monotonic()
        auth = (CLIENT_ID, secret)
        while True:
            response = await client.post("/oauth/revoke", form={"token": token}, auth=auth)
            if response.status_code == 200:
                break
            await assert_unavailable("/oauth/revoke", response)
            assert time.monotonic() - released < RETRY + BOUND, "not recovered"
            await asyncio.sleep(POLL)
        refused = await client.post("/verify_token", form={"access_token": token})
        assert (await refused.get_json())["error"] == "invalid_token"
        # The operator's view: the store was down (one more error), and is up again.
        after = await scrape(client)
        assert value(during, "tokendealer_store_up") == 0
        assert value(during, "tokendealer_store_errors_total") >= 1
        assert value(after, "tokendealer_store_up") == 1


#: The store alone, without requests around it, takes shorter intervals still.
STORE_TIMEOUT = 0.3
STORE_RETRY = 0.15
#: What failing fast takes at most.
FAST = 0.05


@pytest.mark.postgres
async def test_store_operations_are_bounded_by_the_timeout(postgres_url: str) -> None:
    """Every store operation, connecting included, ends within the timeout on a hung
    database, and the ones after it fail fast until the retry interval has passed; then
    one probes the database (and waits the timeout again), and once the database answers
    the store serves again by itself."""
    parts = urlsplit(postgres_url)
    with FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl()
        store = store_for(Settings(database_url=url, database_timeout=STORE_TIMEOUT))
        store.outage.retry_interval = STORE_RETRY
        await store.open()
        try:
            proxy.freeze()
            elapsed, _ = await timed(_raises(store.get_client("bounded")))
            failed = time.monotonic()
            assert STORE_TIMEOUT * 0.8 <= elapsed <= STORE_TIMEOUT + 0.3
            fast, _ = await timed(_raises(store.is_revoked("jti")))
            assert fast < FAST
            while True:
                asked = time.monotonic()
                took, _ = await timed(_raises(store.ping()))
                if took > FAST:
                    break
                assert asked - failed < STORE_RETRY + FAST, "no probe after the retry interval"
                await asyncio.sleep(POLL)
            assert asked - failed >= STORE_RETRY - FAST, "a probe within the retry interval"
            assert STORE_TIMEOUT * 0.8 <= took <= STORE_TIMEOUT + 0.3
            proxy.thaw()
            thawed = time.monotonic()
            while True:
                try:
                    assert await store.get_client("bounded") is None
                    break
                except StoreUnavailable:
                    assert time.monotonic() - thawed < STORE_RETRY + 2.0, "not recovered"
                    await asyncio.sleep(POLL)
        finally:
            proxy.thaw()
            await store.close()


async def _raises(call: Awaitable[Any]) -> None:
    with pytest.raises(StoreUnavailable):
        await call


def test_database_timeout_comes_from_the_environment() -> None:
    assert Settings.from_env({}).database_timeout == 3.0
    assert Settings.from_env({"TOKENDEALER_DATABASE_TIMEOUT": "0.75"}).database_timeout == 0.75
    for bad in ("0", "-1", "soon", "1e3", "301"):
        with pytest.raises(ConfigError, match="TOKENDEALER_DATABASE_TIMEOUT"):
            Settings.from_env({"TOKENDEALER_DATABASE_TIMEOUT": bad})


# -- /readyz ---------------------------------------------------------------------------


class CountingStore(SQLStore):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.pings = 0
        self.failure: Exception | None = None

    async def ping(self) -> None:
        self.pings += 1
        await asyncio.sleep(0.01)
        if self.failure is not None:
            raise self.failure


READINESS_CACHE = 0.5  # 50 concurrent probes must fit in it on a loaded machine


async def test_readyz_is_reused_for_its_interval_and_names_the_failed_check(
    settings: Settings,
) -> None:
    store = CountingStore(settings.sqlalchemy_url)
    app = create_app(replace(settings, readiness_cache=READINESS_CACHE), store=store)
    async with app.test_app():
        client = app.test_client()
        started = time.monotonic()
        answers = await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
        assert {a.status_code for a in answers} == {200}
        assert store.pings == 1
        store.failure = StoreUnavailable("database unavailable: test")
        # The answer is reused, without a ping, until the interval has passed.
        while (await client.get("/readyz")).status_code == 200:
            assert store.pings == 1
            assert time.monotonic() - started < READINESS_CACHE + 1.0, "reused for too long"
            await asyncio.sleep(POLL)
        assert time.monotonic() - started >= READINESS_CACHE
        answers = await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
        assert store.pings == 2
        for answer in answers:
            assert answer.status_code == 503
            assert answer.headers["Retry-After"]
            assert await answer.get_json() == {
                "status": "unavailable",
                "checks": {"store": "unavailable", "keys": "ok"},
            }


async def test_readyz_names_a_missing_signing_key(app: Quart, dealer: Dealer) -> None:
    dealer.keyset = KeySet(())
    answer = await app.test_client().get("/readyz")
    assert answer.status_code == 503
    assert (await answer.get_json())["checks"] == {"store": "ok", "keys": "no active signing key"}


# -- the SQLite file holds secret digests ------------------------------------------------


async def test_sqlite_files_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    store = SQLStore(f"sqlite+aiosqlite:///{path}")
    await store.open()
    try:
        await store.add_client(Client(client_id="svc", secret_digest="0" * 64))
        assert await store.get_client("svc") is not None
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files)
        assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}
    finally:
        await store.close()


async def test_an_existing_open_sqlite_file_is_closed_to_0600(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    store = SQLStore(f"sqlite+aiosqlite:///{path}")
    await store.open()
    await store.close()
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.e2e
@pytest.mark.postgres
def test_served_outage_as_an_operator_sees_it(tmp_path: Path, postgres_url: str) -> None:
    """A real server with TOKENDEALER_DATABASE_TIMEOUT: during a partition it answers 503
    within the timeout plus a second, logs the outage once and its end once, and serves
    again by itself within 2 s of the database coming back."""
    parts = urlsplit(postgres_url)
    with FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl()
        env = {
            "TOKENDEALER_DATABASE_URL": url,
            "TOKENDEALER_DATABASE_TIMEOUT": str(TIMEOUT),
            # Tokens are issued from a cached client record for this long into an outage.
            "TOKENDEALER_CLIENT_CACHE_TTL": "0.05",
            # Shrunk from 1 s: the database is probed again, and /readyz asks again, sooner.
            "TOKENDEALER_DATABASE_RETRY_INTERVAL": "0.2",
            "TOKENDEALER_READINESS_CACHE": "0.1",
        }
        with run_server(tmp_path, env=env) as server, httpx.Client(base_url=server.url) as http:
            secret = server.add_client("outage-e2e")
            form, headers = token_request_parts("outage-e2e", secret)

            def token_request() -> httpx.Response:
                return http.post("/oauth/token", data=form, headers=headers)

            def timed_token_request() -> httpx.Response:
                started = time.monotonic()
                answer = token_request()
                assert time.monotonic() - started <= BOUND
                return answer

            assert token_request().is_success
            proxy.freeze()
            frozen = time.monotonic()
            # Served from the cached client record until its TTL has passed, then 503s.
            while (answer := timed_token_request()).is_success:
                assert time.monotonic() - frozen < 0.05 + 0.2, "the cache outlived its TTL"
                time.sleep(POLL)
            for _ in range(20):
                assert answer.status_code == 503 and answer.headers["Retry-After"]
                answer = timed_token_request()
            assert answer.status_code == 503 and answer.headers["Retry-After"]
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 503
            proxy.thaw()
            thawed = time.monotonic()
            while token_request().is_error:
                assert time.monotonic() - thawed < 2.0, "not recovered within 2 s"
                time.sleep(POLL)
            log = server.log()
        assert log.count('"store_unavailable"') == 1, log
        assert log.count('"store_recovered"') == 1, log


def _workers(pid: int) -> set[int]:
    """The worker processes of the server ``pid``: its children that multiprocessing
    spawned (not its resource tracker), from Linux's /proc."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
            command = (status.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == str(pid) and b"spawn_main" in command:
            found.add(int(status.parent.name))
    return found


@pytest.mark.e2e
@pytest.mark.postgres
def test_worker_restarted_during_an_outage_serves_503s(tmp_path: Path, postgres_url: str) -> None:
    """A worker that dies while the database hangs is started again and answers 503s;
    it must not fail its startup, which would make the server stop every worker."""
    parts = urlsplit(postgres_url)
    with FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl()
        env = {
            "TOKENDEALER_DATABASE_URL": url,
            "TOKENDEALER_DATABASE_TIMEOUT": str(TIMEOUT),
            "TOKENDEALER_DATABASE_RETRY_INTERVAL": "0.2",
            "TOKENDEALER_READINESS_CACHE": "0.1",
        }
        with run_server(tmp_path, workers=2, env=env) as server, httpx.Client() as http:
            workers = _workers(server.proc.pid)
            assert len(workers) == 2, workers
            proxy.freeze()
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while not (_workers(server.proc.pid) - workers):
                assert time.monotonic() < deadline, "no worker was started again"
                assert server.proc.poll() is None, server.log()
                time.sleep(POLL)
            # The other original worker goes too: only workers started during the outage
            # are left, and they answer while the database hangs. Asked once both are
            # there: on a loaded machine a worker's start alone can take seconds.
            os.kill(max(workers), signal.SIGKILL)
            while len(replaced := _workers(server.proc.pid) - workers) < 2:
                assert time.monotonic() < deadline + 15, f"workers started again: {replaced}"
                assert server.proc.poll() is None, server.log()
                time.sleep(POLL)
            answers = {http.get(server.url + "/readyz", timeout=10).status_code for _ in range(30)}
            assert answers == {503}
            assert server.proc.poll() is None, server.log()
            proxy.thaw()
            thawed = time.monotonic()
            while http.get(server.url + "/readyz").status_code != 200:
                assert time.monotonic() - thawed < 3.0
                time.sleep(POLL)
