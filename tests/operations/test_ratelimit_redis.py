"""Limits shared through Redis: atomic across instances and processes, keys that expire,
and an outage that is never a 500 (per-process fallback, one warning, recovery).

The shared server (``TOKENDEALER_TEST_REDIS_URL``, default 127.0.0.1:6379) is used with a
key prefix private to this test run. The outage test starts and stops its own
``redis-server`` on a free port, so it never disturbs anyone else's Redis.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.environment import REDIS_URL, unavailable
from tests.support.faults import FreezableProxy
from tests.support.processes import free_port
from tests.support.servers import ServerProcess, run_server
from tests.support.tokens import token_request_parts
from tokendealer.ratelimit.gcra import Mode, Slot
from tokendealer.ratelimit.redis_store import RedisStore
from tokendealer.settings import Rate

pytestmark = pytest.mark.redis

#: Seconds between a process's tries of Redis while it is down, shrunk for the outage
#: test through TOKENDEALER_RATE_LIMIT_RETRY_INTERVAL (the service's default: 1 s).
PROBE_INTERVAL = 0.3


async def _ping(url: str) -> None:
    client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(name="redis_url", scope="session")
def _redis_url() -> str:
    """The shared Redis server, or a skip (a failure under CI) when it is unreachable."""
    try:
        asyncio.run(_ping(REDIS_URL))
    except Exception as exc:
        unavailable("Redis", f"{REDIS_URL}: {type(exc).__name__}: {exc}")
    return REDIS_URL


@pytest.fixture(name="prefix")
async def _prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix no other test or run uses; its keys are deleted afterwards."""
    prefix = f"tokendealer-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _keys(url: str, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` with its remaining time to live in ms."""
    client = Redis.from_url(url, decode_responses=True)
    try:
        return {key: await client.pttl(key) async for key in client.scan_iter(match=prefix + "*")}
    finally:
        await client.aclose()


# -- the store --------------------------------------------------------------------------


async def test_store_admits_the_limit_across_instances(redis_url: str, prefix: str) -> None:
    """Two stores (two processes' worth) racing on one key admit exactly the limit. (A
    generous timeout: on a loaded machine a 200-request burst could outlast the default
    0.25 s, and an update that times out is answered by the per-process fallback.)"""
    stores = [RedisStore(redis_url, prefix, timeout=5), RedisStore(redis_url, prefix, timeout=5)]
    for store in stores:
        await store.before_serving()
    try:
        rate = Rate(50, 3600)  # one more event per 72 s: none refills during the test
        slots = [Slot("race", rate)]
        waits = await asyncio.gather(
            *(stores[i % 2].update(slots, Mode.ACQUIRE) for i in range(200))
        )
        assert sum(1 for wait in waits if wait == 0) == 50
        assert all(0 < wait <= 72.01 for wait in waits if wait)
        assert all(not store.outage.down for store in stores)
    finally:
        for store in stores:
            await store.after_serving()


async def test_acquire_is_all_or_nothing(redis_url: str, prefix: str) -> None:
    """A request refused by one of its limits advances none of them."""
    store = RedisStore(redis_url, prefix)
    await store.before_serving()
    try:
        tight, loose = Slot("tight", Rate(1, 3600)), Slot("loose", Rate(2, 3600))
        assert await store.update([tight, loose], Mode.ACQUIRE) == 0
        assert await store.update([tight, loose], Mode.ACQUIRE) > 0
        # "loose" was not advanced by the refused request: it still has one event left.
        assert await store.update([loose], Mode.ACQUIRE) == 0
        assert await store.update([loose], Mode.ACQUIRE) > 0
    finally:
        await store.after_serving()


async def test_keys_expire_when_their_state_does(redis_url: str, prefix: str) -> None:
    """Every key written carries a TTL no longer than its period, and is gone after it."""
    store = RedisStore(redis_url, prefix)
    await store.before_serving()
    try:
        await store.update([Slot("minute", Rate(3, 60))], Mode.ACQUIRE)
        await store.update([Slot("blink", Rate(10, 1))], Mode.HIT)
        ttls = await _keys(redis_url, prefix)
        assert set(ttls) == {prefix + "minute", prefix + "blink"}
        assert 0 < ttls[prefix + "minute"] <= 20_000  # one event of 3/minute: 20 s
        assert 0 < ttls[prefix + "blink"] <= 100
        deadline = time.monotonic() + 1.0  # ten times blink's period
        while set(await _keys(redis_url, prefix)) != {prefix + "minute"}:
            assert time.monotonic() < deadline, await _keys(redis_url, prefix)
            await asyncio.sleep(0.01)
    finally:
        await store.after_serving()


async def test_release_gives_back_one_acquire(redis_url: str, prefix: str) -> None:
    """RELEASE undoes one ACQUIRE atomically: the slot admits once more, and a key whose
    only event was given back is deleted, not left behind."""
    store = RedisStore(redis_url, prefix)
    await store.before_serving()
    try:
        slot = [Slot("reserved", Rate(3, 3600))]
        assert [await store.update(slot, Mode.ACQUIRE) for _ in range(3)] == [0, 0, 0]
        assert await store.update(slot, Mode.RELEASE) == 0
        assert await store.update(slot, Mode.ACQUIRE) == 0
        assert await store.update(slot, Mode.ACQUIRE) > 0
        once = [Slot("once", Rate(3, 3600))]
        await store.update(once, Mode.ACQUIRE)
        await store.update(once, Mode.RELEASE)
        assert set(await _keys(redis_url, prefix)) == {prefix + "reserved"}
        await store.update(once, Mode.RELEASE)  # nothing to give back: still nothing
        assert set(await _keys(redis_url, prefix)) == {prefix + "reserved"}
    finally:
        await store.after_serving()


async def test_peek_tells_what_acquire_would_do_and_writes_nothing(
    redis_url: str, prefix: str
) -> None:
    """PEEK (an authentication attempt's check on entry, and a success's on the way out)
    admits exactly while ACQUIRE would, and writes no key; nor does a refused ACQUIRE."""
    store = RedisStore(redis_url, prefix)
    await store.before_serving()
    try:
        slots = [Slot("counted", Rate(3, 3600)), Slot("wider", Rate(10, 3600))]
        assert [await store.update(slots, Mode.PEEK) for _ in range(5)] == [0] * 5
        assert await _keys(redis_url, prefix) == {}
        assert [await store.update(slots, Mode.ACQUIRE) for _ in range(3)] == [0, 0, 0]
        before = await _keys(redis_url, prefix)
        assert await store.update(slots, Mode.PEEK) > 0
        assert await store.update(slots, Mode.ACQUIRE) > 0
        after = await _keys(redis_url, prefix)
        assert set(after) == {prefix + "counted", prefix + "wider"}
        # Nothing moved: the TTLs only ran down (the refused ACQUIRE left "wider" alone).
        assert all(after[key] <= before[key] for key in after), (before, after)
    finally:
        await store.after_serving()


async def test_state_never_passes_one_period(redis_url: str, prefix: str) -> None:
    """A thousand unchecked HITs, or ACQUIREs, leave a key that expires within one period
    (60 s for 100/minute), not after 1000 intervals (600 s). A period of a minute, not a
    second: on a loaded machine the thousand updates may take longer than a second, and
    the first key would be gone before it is read."""
    store = RedisStore(redis_url, prefix)
    await store.before_serving()
    try:
        rate = Rate(100, 60)
        await asyncio.gather(*(store.update([Slot("hit", rate)], Mode.HIT) for _ in range(1000)))
        await asyncio.gather(
            *(store.update([Slot("acquire", rate)], Mode.ACQUIRE) for _ in range(1000))
        )
        ttls = await _keys(redis_url, prefix)
        assert 0 < ttls[prefix + "hit"] <= 60_000, ttls
        assert 0 < ttls[prefix + "acquire"] <= 60_000, ttls
    finally:
        await store.after_serving()


async def test_a_late_answer_is_not_a_second_update(redis_url: str, prefix: str) -> None:
    """An update whose answer comes after the socket timeout ran on the server all the
    same: it must not be sent again (redis-py retries timeouts by default), or one
    request counts twice, and a RELEASE gives back two failures."""
    parts = urlsplit(redis_url)
    with FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}{parts.path}", prefix)
        await store.before_serving()
        try:
            slot = [Slot("late", Rate(10, 3600))]
            await store.update(slot, Mode.ACQUIRE)
            proxy.freeze_replies()
            await store.update(slot, Mode.ACQUIRE)  # times out: the fallback answers
            proxy.thaw()
        finally:
            await store.after_serving()
    direct = Redis.from_url(redis_url)
    try:
        tat_ms = float(await direct.get(prefix + "late"))
        server_ms = (await direct.time())[0] * 1000
    finally:
        await direct.aclose()
    # Two events of 360 s each are counted: the first, and the late one; not three.
    assert (tat_ms - server_ms) / 1000 == pytest.approx(720, abs=5)


# -- real server processes ----------------------------------------------------------------


@pytest.mark.e2e
def test_two_workers_evaluate_the_failure_limit_once(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """200 concurrent wrong secrets for one id from one address, spread over 2 worker
    processes sharing Redis: at most the limit (plus one per worker) are answered 401,
    the rest are 429; the client's right secret from another address still works, and
    64 concurrent requests with it from one more address are all served (an attempt
    being checked never counts, however many round trips to Redis it waits for)."""
    limit, workers, count = 5, 2, 200
    env = {
        "TOKENDEALER_REDIS_URL": redis_url,
        "TOKENDEALER_REDIS_KEY_PREFIX": prefix,
        "TOKENDEALER_AUTH_FAILURE_LIMIT": f"{limit}/hour",
        "TOKENDEALER_TRUSTED_PROXIES": "1",
    }

    async def burst(url: str, secret: str, address: str, count: int) -> list[int]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            responses = await asyncio.gather(
                *(
                    http.post(
                        url + "/oauth/token",
                        data={"grant_type": "client_credentials"},
                        auth=("raced", secret),
                        headers={"X-Forwarded-For": address},
                    )
                    for _ in range(count)
                )
            )
        return [response.status_code for response in responses]

    with run_server(tmp_path, workers=workers, env=env) as server:
        secret = server.add_client("raced")
        statuses = asyncio.run(burst(server.url, "wrong", "203.0.113.50", count))
        assert 1 <= statuses.count(401) <= limit + workers, statuses
        assert statuses.count(429) == count - statuses.count(401), statuses
        response = httpx.post(
            server.url + "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("raced", secret),
            headers={"X-Forwarded-For": "203.0.113.51"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert asyncio.run(burst(server.url, secret, "203.0.113.52", 64)) == [200] * 64


def _verify_statuses(url: str, count: int) -> list[int]:
    """POST a junk token to /verify_token ``count`` times; the statuses (400 or 429)."""
    with httpx.Client(timeout=10) as http:
        return [
            http.post(url + "/verify_token", data={"access_token": "junk"}).status_code
            for _ in range(count)
        ]


@pytest.mark.e2e
def test_two_servers_share_the_per_client_limit(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """Two server processes on one Redis admit the per-client limit once in total, not
    twice; the keys they write expire."""
    env = {
        "TOKENDEALER_REDIS_URL": redis_url,
        "TOKENDEALER_REDIS_KEY_PREFIX": prefix,
        "TOKENDEALER_RATE_LIMIT": "10/hour",
    }
    with run_server(tmp_path, env=env) as one, run_server(tmp_path, env=env) as two:
        secret = one.add_client("shared")
        statuses = []
        with httpx.Client(timeout=10) as http:
            for i in range(30):
                server = (one, two)[i % 2]
                response = http.post(
                    server.url + "/oauth/token",
                    data={"grant_type": "client_credentials"},
                    auth=("shared", secret),
                )
                statuses.append(response.status_code)
        assert statuses.count(200) == 10, statuses
        assert statuses.count(429) == 20, statuses
        ttls = asyncio.run(_keys(redis_url, prefix))
        assert ttls, "the servers wrote no key under their prefix"
        assert all(0 < ttl <= 3_600_000 for ttl in ttls.values()), ttls


def _wait_until_recovered(server: ServerProcess, within: float = 10.0) -> None:
    """Until ``server`` logs that Redis is back: token requests of an unknown client (they
    go through the limit store, so one of them probes Redis once a probe is due) touch
    none of the /verify_token limits the test counts."""
    form, headers = token_request_parts("nobody", "wrong")
    deadline = time.monotonic() + within
    with httpx.Client(timeout=10) as http:
        while "rate_limit_store_recovered" not in server.log():
            assert time.monotonic() < deadline, f"Redis not back within {within:g} s"
            http.post(server.url + "/oauth/token", data=form, headers=headers)
            time.sleep(0.05)


class RedisServer:
    """A private ``redis-server`` on a fixed free port that a test may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None
        self.proc = subprocess.Popen(
            [
                executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                asyncio.run(_ping(self.url))
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(name="private_redis")
def _private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "the redis-server executable is not on PATH")
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        with suppress(Exception):
            server.stop()


@pytest.mark.e2e
def test_redis_outage_falls_back_and_recovers(tmp_path: Path, private_redis: RedisServer) -> None:
    """Redis stopped mid-run: no 5xx, each process limits on its own and warns once;
    Redis back on the same port: the processes share their limits again."""
    limit = 5
    env = {
        "TOKENDEALER_REDIS_URL": private_redis.url,
        "TOKENDEALER_VERIFY_RATE_LIMIT": f"{limit}/hour",
        "TOKENDEALER_RATE_LIMIT_RETRY_INTERVAL": str(PROBE_INTERVAL),
    }
    with run_server(tmp_path, env=env) as one, run_server(tmp_path, env=env) as two:
        # Shared: the two processes together admit the limit once.
        assert _verify_statuses(one.url, 3) == [400] * 3
        assert _verify_statuses(two.url, 3) == [400] * 2 + [429]
        assert _verify_statuses(one.url, 1) == [429]

        private_redis.stop()
        # Outage, for longer than the time between probes: each process admits its own
        # limit from memory, and nothing is a 5xx. The wait is for a probe to be due, so
        # that the next request tries Redis again (nothing shows that it did but the
        # log's single warning checked below).
        outage = _verify_statuses(one.url, limit + 2)
        time.sleep(PROBE_INTERVAL + 0.2)
        outage += _verify_statuses(one.url, 2)
        assert outage == [400] * limit + [429] * 4
        assert _verify_statuses(two.url, limit + 1) == [400] * limit + [429]
        for server in (one, two):
            assert server.log().count("rate_limit_store_unavailable") == 1, server.log()

        private_redis.start()  # empty: the state written before the outage is gone
        for server in (one, two):
            _wait_until_recovered(server)
        assert _verify_statuses(one.url, 3) == [400] * 3
        assert _verify_statuses(two.url, 3) == [400] * 2 + [429]
        assert _verify_statuses(one.url, 1) == [429]
        for server in (one, two):
            assert server.log().count("rate_limit_store_recovered") == 1, server.log()
            assert server.log().count("rate_limit_store_unavailable") == 1
        ttls = asyncio.run(_keys(private_redis.url, "tokendealer:"))
        assert ttls and all(0 < ttl <= 3_600_000 for ttl in ttls.values()), ttls
