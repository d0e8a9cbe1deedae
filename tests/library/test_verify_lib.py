"""tokendealer.library.verify: TokenVerifier over a fake issuer (``tests.support.issuer``)
and the real dealer."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from quart import Quart

from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.issuer import AUDIENCE, KEYS, Clock, FakeIssuer
from tests.support.tokens import get_token
from tokendealer.library.jwk import b64url_uint, public_jwk, thumbprint, verification_keys
from tokendealer.library.verify import (
    ExpiredToken,
    InsufficientScope,
    InvalidSignature,
    InvalidToken,
    KeySetUnavailable,
    TokenVerifier,
    UnknownKey,
    cache_seconds,
    metadata_url,
)


async def background_refresh(verifier: TokenVerifier) -> None:
    """Wait for the refresh a verification with a stale key set left running, if any."""
    fetch = verifier._fetch_in_flight()
    if fetch is not None:
        await fetch


@pytest.fixture(name="issuer")
def _issuer() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock()


@pytest.fixture(name="verifier")
async def _verifier(issuer: FakeIssuer, clock: Clock) -> AsyncIterator[TokenVerifier]:
    async with issuer.async_client() as http:
        yield TokenVerifier(ISSUER, AUDIENCE, http_client=http, clock=clock)


@pytest.fixture(name="sync_verifier")
def _sync_verifier(issuer: FakeIssuer, clock: Clock) -> Iterator[TokenVerifier]:
    with issuer.sync_client() as http:
        yield TokenVerifier(ISSUER, AUDIENCE, sync_http_client=http, clock=clock)


# -- discovery -------------------------------------------------------------------------------


async def test_verify_discovers_jwks_from_metadata(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """A valid token verifies; the JWKS URL comes from the RFC 8414 metadata's jwks_uri."""
    claims = await verifier.verify(issuer.token())
    assert claims["client_id"] == "worker" and claims["aud"] == AUDIENCE
    assert issuer.requests == ["/.well-known/oauth-authorization-server", "/jwks"]


async def test_discovery_falls_back_to_well_known_jwks(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """Without metadata (404) the verifier fetches {issuer}/.well-known/jwks.json."""
    issuer.metadata = False
    await verifier.verify(issuer.token())
    assert issuer.requests == ["/.well-known/oauth-authorization-server", "/.well-known/jwks.json"]


async def test_metadata_for_another_issuer_is_not_used(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """RFC 8414 §3.3: metadata naming a different issuer is ignored (fallback URL used)."""
    issuer.metadata_issuer = "https://evil.test"
    await verifier.verify(issuer.token())
    assert issuer.requests == ["/.well-known/oauth-authorization-server", "/.well-known/jwks.json"]


def test_metadata_url_inserts_well_known_before_issuer_path() -> None:
    """RFC 8414 §3.1: for an issuer with a path, the well-known segment precedes the path."""
    assert metadata_url("https://dealer.test") == (
        "https://dealer.test/.well-known/oauth-authorization-server"
    )
    assert metadata_url("https://dealer.test/tenant/") == (
        "https://dealer.test/.well-known/oauth-authorization-server/tenant"
    )


async def test_explicit_jwks_url_skips_discovery(issuer: FakeIssuer, clock: Clock) -> None:
    """Given jwks_url, the verifier fetches only that URL."""
    async with issuer.async_client() as http:
        verifier = TokenVerifier(
            ISSUER, AUDIENCE, jwks_url="https://keys.test/jwks", http_client=http, clock=clock
        )
        await verifier.verify(issuer.token())
    assert issuer.requests == ["/jwks"]


# -- cache lifetime --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "fresh_for"),
    [
        ("public, max-age=300", 300),
        ("max-age=5", 60),  # clamped up to the minimum
        ("max-age=999999999", 86400),  # clamped down to the maximum
        (None, 300),  # no header: the default
        ("no-cache", 300),
    ],
)
async def test_key_set_is_cached_for_clamped_max_age(
    issuer: FakeIssuer, clock: Clock, cache_control: str | None, fresh_for: float
) -> None:
    """The key set is reused until Cache-Control max-age (clamped to [60 s, 24 h]) runs out."""
    issuer.cache_control = cache_control
    async with issuer.async_client() as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, http_client=http, clock=clock)
        token = issuer.token()
        await verifier.verify(token)
        clock.advance(fresh_for - 1)
        await verifier.verify(token)
        assert issuer.requests.count("/jwks") == 1
        clock.advance(1)
        await verifier.verify(token)  # with the stale set, refreshed in the background
        await background_refresh(verifier)
        assert issuer.requests.count("/jwks") == 2


def test_cache_seconds_parses_max_age() -> None:
    """max-age is read among other directives, case-insensitively, quoted or not."""
    assert cache_seconds("public, MAX-AGE=120, must-revalidate", 60, 86400) == 120
    assert cache_seconds('max-age="90"', 60, 86400) == 90
    assert cache_seconds("s-maxage=900", 60, 86400) == 300


async def test_unknown_kid_refetches_at_most_once_per_cooldown(
    verifier: TokenVerifier, issuer: FakeIssuer, clock: Clock
) -> None:
    """Forged kids cause one refetch per cooldown, not one per token (no refetch storm)."""
    await verifier.verify(issuer.token())
    assert verifier.fetches == 1
    for n in range(100):
        with pytest.raises(UnknownKey):
            await verifier.verify(issuer.token(kid=f"forged-{n}"))
    assert verifier.fetches == 2
    assert issuer.requests.count("/jwks") == 2
    clock.advance(30)
    with pytest.raises(UnknownKey):
        await verifier.verify(issuer.token(kid="forged-after-cooldown"))
    assert verifier.fetches == 3


async def test_new_signing_key_is_picked_up_by_unknown_kid_refetch(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """After the issuer publishes a new key, its first token triggers a refetch and verifies."""
    await verifier.verify(issuer.token())
    issuer.keys.append((KEYS[1], "RS512"))
    claims = await verifier.verify(issuer.token(key=KEYS[1]))
    assert claims["sub"] == "worker"
    assert issuer.requests.count("/jwks") == 2


async def test_failed_refresh_keeps_last_good_key_set(
    verifier: TokenVerifier, issuer: FakeIssuer, clock: Clock
) -> None:
    """When a refresh fails the previous keys stay in use, retried only after the cooldown."""
    token = issuer.token()
    await verifier.verify(token)
    clock.advance(301)
    issuer.jwks_status = 500
    for _ in range(10):
        assert (await verifier.verify(token))["sub"] == "worker"
        await background_refresh(verifier)
    assert verifier.fetches == 2
    clock.advance(30)
    issuer.jwks_status = 200
    await verifier.verify(token)
    await background_refresh(verifier)
    assert verifier.fetches == 3


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"keys": []}', b'{"keys": "x"}', b"[]", b'{"keys": [{"kty": "oct"}]}'],
)
async def test_unusable_key_set_is_a_failed_refresh(
    verifier: TokenVerifier, issuer: FakeIssuer, clock: Clock, body: bytes
) -> None:
    """A JWKS that is not JSON, not a set or has no usable key never replaces the good set."""
    token = issuer.token()
    await verifier.verify(token)
    clock.advance(301)
    issuer.jwks_override = body
    assert (await verifier.verify(token))["sub"] == "worker"
    await background_refresh(verifier)
    assert verifier.fetches == 2
    assert (await verifier.verify(token))["sub"] == "worker"


async def test_no_key_set_at_all_is_unavailable_not_invalid(
    verifier: TokenVerifier, issuer: FakeIssuer, clock: Clock
) -> None:
    """Without any fetched key set the verifier raises KeySetUnavailable, retried after 1 s."""
    issuer.jwks_status = 503
    token = issuer.token()
    with pytest.raises(KeySetUnavailable):
        await verifier.verify(token)
    with pytest.raises(KeySetUnavailable):
        await verifier.verify(token)
    assert verifier.fetches == 1
    issuer.jwks_status = 200
    clock.advance(1)
    assert (await verifier.verify(token))["sub"] == "worker"


async def test_oversized_key_set_is_refused(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    """A JWK Set over the default cap of 1 MiB is not used, though its keys are good."""
    issuer.jwks_override = json.dumps(issuer.jwks()).encode() + b" " * (1024 * 1024)
    with pytest.raises(KeySetUnavailable):
        await verifier.verify(issuer.token())


async def test_unreachable_issuer_is_unavailable(clock: Clock) -> None:
    """Connection errors while fetching keys raise KeySetUnavailable, not InvalidToken."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, http_client=http, clock=clock)
        with pytest.raises(KeySetUnavailable):
            await verifier.verify(FakeIssuer().token())


async def test_concurrent_verifications_share_one_fetch(clock: Clock) -> None:
    """Fifty concurrent first verifications make one metadata and one JWKS request."""
    issuer = FakeIssuer(delay=0.05)
    token = issuer.token()
    async with issuer.async_client() as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, http_client=http, clock=clock)
        results = await asyncio.gather(*(verifier.verify(token) for _ in range(50)))
    assert all(claims["sub"] == "worker" for claims in results)
    assert issuer.requests == ["/.well-known/oauth-authorization-server", "/jwks"]


def test_concurrent_sync_verifications_share_one_fetch(clock: Clock) -> None:
    """Twenty threads verifying at once through verify_sync make one JWKS request."""
    issuer = FakeIssuer(delay=0.05)
    token = issuer.token()
    results: list[dict[str, Any]] = []
    with issuer.sync_client() as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, sync_http_client=http, clock=clock)
        threads = [
            threading.Thread(target=lambda: results.append(verifier.verify_sync(token)))
            for _ in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 20
    assert issuer.requests == ["/.well-known/oauth-authorization-server", "/jwks"]


def _has_run(task: asyncio.Task[Any]) -> bool:
    """Whether the task has run up to its first wait (or to its end)."""
    coroutine = task.get_coro()
    assert inspect.iscoroutine(coroutine)
    return inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED


def test_event_loops_running_at_once_each_share_one_fetch(clock: Clock) -> None:
    """Two threads, each with its own event loop, share one verifier. While loop A's first
    key-set fetch is still under way, loop B starts one of its own, and then a second
    verification on loop A waits for A's fetch instead of fetching again: one fetch per
    loop, as a loop starting up must not take another loop's place (it used to replace
    the one lock, and every later caller fetched)."""
    issuer = FakeIssuer()
    token = issuer.token()
    fetching = [threading.Event(), threading.Event()]  # A's fetch, B's fetch, under way
    release = threading.Event()

    async def held_handler(request: httpx.Request) -> httpx.Response:
        response = issuer.respond(request)
        fetching[len(issuer.requests) - 1].set()
        await asyncio.to_thread(release.wait, 10)
        return response

    verifier = TokenVerifier(
        ISSUER,
        AUDIENCE,
        jwks_url="https://keys.test/jwks",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(held_handler)),
        clock=clock,
    )
    results: dict[str, Any] = {}

    async def loop_a() -> list[dict[str, Any]]:
        first = asyncio.ensure_future(verifier.verify(token))
        await asyncio.to_thread(fetching[1].wait, 10)  # loop B has started its fetch
        second = asyncio.ensure_future(verifier.verify(token))
        # One turn of the loop runs the second verification up to its first wait: on A's
        # fetch, or on a fetch of its own, which would reach the held handler as a third
        # request.
        await asyncio.sleep(0)
        assert _has_run(second)
        release.set()
        return list(await asyncio.gather(first, second))

    def run(name: str, main: Callable[[], Awaitable[Any]]) -> None:
        results[name] = asyncio.run(asyncio.wait_for(main(), 10))

    thread_a = threading.Thread(target=run, args=("a", loop_a))
    thread_a.start()
    assert fetching[0].wait(10)
    thread_b = threading.Thread(target=run, args=("b", lambda: verifier.verify(token)))
    thread_b.start()
    for thread in (thread_a, thread_b):
        thread.join(20)
    assert [claims["sub"] for claims in results["a"]] == ["worker", "worker"]
    assert results["b"]["sub"] == "worker"
    assert issuer.requests == ["/jwks", "/jwks"]


def test_refresh_cut_short_by_its_loop_closing_is_redone_in_the_foreground(
    issuer: FakeIssuer, clock: Clock
) -> None:
    """With one asyncio.run per verification, the loop's end cancels the background
    refresh a stale verification started (which itself did not wait). The next caller
    finding the set stale then refreshes before verifying, so a key the issuer dropped
    is not trusted for ever."""
    issuer.delay = 0.2
    token = issuer.token()
    http = httpx.AsyncClient(transport=httpx.MockTransport(issuer.async_handler))
    verifier = TokenVerifier(
        ISSUER, AUDIENCE, jwks_url="https://keys.test/jwks", http_client=http, clock=clock
    )
    assert asyncio.run(verifier.verify(token))["sub"] == "worker"
    clock.advance(301)
    issuer.keys = [(KEYS[1], "RS512")]  # the issuer drops the token's key
    start = time.monotonic()
    assert asyncio.run(verifier.verify(token))["sub"] == "worker"  # the stale set
    assert time.monotonic() - start < issuer.delay
    assert issuer.requests == ["/jwks"]  # its refresh was cancelled with the loop
    with pytest.raises(UnknownKey):
        asyncio.run(verifier.verify(token))
    assert issuer.requests == ["/jwks", "/jwks", "/jwks"]  # refresh, unknown-kid refetch
    asyncio.run(http.aclose())


def test_refresh_dying_with_an_unclosed_loop_does_not_keep_a_dropped_key(
    issuer: FakeIssuer, clock: Clock
) -> None:
    """A loop closed without cancelling its tasks (``run_until_complete`` then ``close``)
    leaves the background refresh pending for ever, unannounced. The stale set serves no
    longer than the fetch deadline on its account: then a caller refreshes in the
    foreground, and the key the issuer dropped is refused. Dead loops are not kept."""
    issuer.delay = 0.2
    token = issuer.token()
    http = httpx.AsyncClient(transport=httpx.MockTransport(issuer.async_handler))
    verifier = TokenVerifier(
        ISSUER,
        AUDIENCE,
        jwks_url="https://keys.test/jwks",
        http_client=http,
        clock=clock,
        fetch_timeout=2.0,
    )

    def on_a_new_loop() -> dict[str, Any]:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(verifier.verify(token))
        finally:
            loop.close()  # its pending refresh is neither run nor cancelled

    assert on_a_new_loop()["sub"] == "worker"
    clock.advance(301)
    issuer.keys = [(KEYS[1], "RS512")]  # the issuer drops the token's key
    for _ in range(30):
        assert on_a_new_loop()["sub"] == "worker"  # within the deadline: the stale set
    assert len(verifier._tasks) <= 1
    clock.advance(2.5)  # the refresh is overdue: it died with its loop
    with pytest.raises(UnknownKey):
        on_a_new_loop()
    asyncio.run(http.aclose())


def test_sync_verifier_applies_the_same_cache_rules(
    sync_verifier: TokenVerifier, issuer: FakeIssuer, clock: Clock
) -> None:
    """verify_sync caches, refetches once per cooldown for unknown kids, keeps good keys."""
    token = issuer.token()
    assert sync_verifier.verify_sync(token)["sub"] == "worker"
    for n in range(20):
        with pytest.raises(UnknownKey):
            sync_verifier.verify_sync(issuer.token(kid=f"forged-{n}"))
    assert sync_verifier.fetches == 2
    clock.advance(301)
    issuer.jwks_status = 500
    assert sync_verifier.verify_sync(token)["sub"] == "worker"
    assert sync_verifier.fetches == 3


# -- deadline, size cap, stale-while-revalidate: against a real slow server ---------------------

#: The fetch deadline these tests give the verifier, and the slack a loaded machine gets.
DEADLINE = 0.3
MARGIN = 0.5
#: No wait in these tests lasts longer, so that a regression fails instead of hanging.
HANG = 10.0
METADATA = "/.well-known/oauth-authorization-server"


class SlowServer:
    """A real HTTP server on 127.0.0.1 serving a ``FakeIssuer``'s documents.

    A path in ``trickle`` gets its status and headers at once, then one body byte every
    ``interval`` seconds (a JWK Set would take half a minute) until ``release()``, which
    ends its response early; a path in ``trickle_head`` gets even its status line and
    headers that way. ``length`` False leaves out ``Content-Length`` (the body then ends
    when the connection closes).
    """

    def __init__(self) -> None:
        self.issuer = FakeIssuer()
        self.trickle: set[str] = set()
        self.trickle_head: set[str] = set()
        self.interval = 0.05
        self.length = True
        self.requests: list[str] = []
        self._arrived = threading.Condition()
        self._released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.serve(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer.issuer = self.url

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        response = self.issuer.respond(httpx.Request("GET", self.url + handler.path))
        with self._arrived:
            self.requests.append(handler.path)
            self._arrived.notify_all()
        body = response.content
        if handler.path in self.trickle_head:
            head = f"HTTP/1.1 {response.status_code} OK\r\nContent-Length: {len(body)}\r\n"
            try:
                for offset in range(len(head)):
                    if self._released.wait(self.interval):
                        return
                    handler.wfile.write(head[offset : offset + 1].encode())
                    handler.wfile.flush()
            except OSError:
                return  # the client gave up
            return
        handler.send_response(response.status_code)
        for name in ("content-type", "cache-control"):
            if name in response.headers:
                handler.send_header(name, response.headers[name])
        if self.length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            if handler.path not in self.trickle:
                handler.wfile.write(body)
                return
            for offset in range(len(body)):
                if self._released.wait(self.interval):
                    return
                handler.wfile.write(body[offset : offset + 1])
        except OSError:
            return  # the client gave up

    def wait_requests(self, count: int) -> None:
        """Block until the server has received ``count`` requests in all."""
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.requests) >= count, HANG)

    def release(self) -> None:
        """End every trickling response now, short of its body (a failed fetch)."""
        self._released.set()

    def __enter__(self) -> SlowServer:
        serve = self._server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(name="server")
def _server() -> Iterator[SlowServer]:
    with SlowServer() as server:
        yield server


def slow_verifier(
    server: SlowServer, clock: Clock, *, discover: bool = False, **options: Any
) -> TokenVerifier:
    """A verifier of the server's tokens, with its own HTTP clients and a short deadline."""
    options.setdefault("fetch_timeout", DEADLINE)
    jwks_url = None if discover else server.url + "/jwks"
    return TokenVerifier(server.url, AUDIENCE, jwks_url=jwks_url, clock=clock, **options)


async def verify_in(mode: str, verifier: TokenVerifier, token: str) -> dict[str, Any]:
    """``verify`` on this loop or ``verify_sync`` in a thread; a hang fails after HANG s."""
    if mode == "async":
        return await asyncio.wait_for(verifier.verify(token), HANG)
    return await asyncio.wait_for(asyncio.to_thread(verifier.verify_sync, token), HANG)


async def start_stale_refresh(
    mode: str, verifier: TokenVerifier, server: SlowServer, clock: Clock
) -> asyncio.Future[dict[str, Any]]:
    """Let the cached set go stale and verify a known-kid token, which starts a refresh;
    return (that verification) once the slow server has the refresh's request. With
    ``verify_sync`` the verification is the one doing the refresh, so it is still running."""
    clock.advance(301)
    seen = len(server.requests)
    verification = asyncio.ensure_future(verify_in(mode, verifier, server.issuer.token()))
    await asyncio.to_thread(server.wait_requests, seen + 1)
    return verification


MODES = pytest.mark.parametrize("mode", ["async", "sync"])
#: An ``interval`` marker: trickle the status line and headers, not only the body.
HEAD_TRICKLE = -1.0


@MODES
@pytest.mark.parametrize(
    ("path", "interval"),
    [("/jwks", 0.05), ("/jwks", HANG), (METADATA, 0.05), ("/jwks", HEAD_TRICKLE)],
    ids=["jwks-trickled", "jwks-stalled", "metadata-trickled", "jwks-head-trickled"],
)
async def test_slow_fetch_is_given_up_at_the_deadline(
    server: SlowServer, clock: Clock, mode: str, path: str, interval: float
) -> None:
    """A JWKS or RFC 8414 metadata response whose body trickles in (one byte every 50 ms,
    which no httpx read timeout trips) or stops after the headers is given up after
    fetch_timeout: with nothing cached the verification fails (KeySetUnavailable) within
    the deadline, not when the server finishes."""
    server.trickle, server.interval = {path}, interval
    if interval == HEAD_TRICKLE:
        server.trickle, server.trickle_head, server.interval = set(), {path}, 0.05
    verifier = slow_verifier(server, clock, discover=path == METADATA)
    start = time.monotonic()
    with pytest.raises(KeySetUnavailable):
        await verify_in(mode, verifier, server.issuer.token())
    assert time.monotonic() - start < DEADLINE + MARGIN
    assert server.requests[-1] == path
    assert verifier.fetches == 1


@MODES
@pytest.mark.parametrize("length", [True, False], ids=["announced", "streamed"])
async def test_document_over_the_size_cap_is_refused(
    server: SlowServer, clock: Clock, caplog: pytest.LogCaptureFixture, mode: str, length: bool
) -> None:
    """A JWK Set over max_document_bytes is a failed fetch though its keys are good:
    refused unread by its Content-Length, else once the bytes read pass the cap. The
    same document verifies under the default cap of 1 MiB."""
    document = json.dumps(server.issuer.jwks()).encode() + b" " * (32 * 1024)
    server.issuer.jwks_override, server.length = document, length
    token = server.issuer.token()
    capped = slow_verifier(server, clock, max_document_bytes=16 * 1024)
    with pytest.raises(KeySetUnavailable):
        await verify_in(mode, capped, token)
    [failure] = [r.__dict__ for r in caplog.records if r.getMessage() == "jwks_fetch_failed"]
    assert failure["detail"].startswith("document too large")
    assert ("Content-Length" in failure["detail"]) is length
    assert (await verify_in(mode, slow_verifier(server, clock), token))["sub"] == "worker"


@MODES
async def test_stale_key_set_serves_while_a_slow_refresh_runs(
    server: SlowServer, clock: Clock, mode: str
) -> None:
    """Once max-age has passed, tokens with a known kid verify at once with the stale set
    while one refresh crawls against a slow server (in the background for verify; for
    verify_sync in the one thread that took the lock). When that refresh fails, the set
    stays in use."""
    verifier = slow_verifier(server, clock, fetch_timeout=5.0)
    token = server.issuer.token()
    assert (await verify_in(mode, verifier, token))["sub"] == "worker"
    server.trickle = {"/jwks"}
    refreshing = await start_stale_refresh(mode, verifier, server, clock)
    start = time.monotonic()
    results = await asyncio.gather(*(verify_in(mode, verifier, token) for _ in range(10)))
    assert time.monotonic() - start < MARGIN  # the refresh may take 5 s; nobody waited
    assert [claims["sub"] for claims in results] == ["worker"] * 10
    assert server.requests == ["/jwks", "/jwks"]  # one refresh, not one per caller
    if mode == "async":  # the refresh is a task of the loop
        assert refreshing.done() and verifier._fetch_in_flight() is not None
    else:  # the refresh is done by the thread that took the lock
        assert not refreshing.done()
    server.release()
    assert (await refreshing)["sub"] == "worker"
    await background_refresh(verifier)
    assert verifier.fetches == 2
    assert (await verify_in(mode, verifier, token))["sub"] == "worker"
    assert server.requests == ["/jwks", "/jwks"]  # failed: retried only after the cooldown


@MODES
async def test_unknown_kid_waits_no_longer_than_the_deadline(
    server: SlowServer, clock: Clock, mode: str
) -> None:
    """During an outage a token with an unknown kid fails (UnknownKey) within the
    deadline, whether it refetches itself or waits for a refresh already in flight
    (which it joins rather than start a second fetch); known kids still verify."""
    verifier = slow_verifier(server, clock)
    assert (await verify_in(mode, verifier, server.issuer.token()))["sub"] == "worker"
    server.trickle = {"/jwks"}

    start = time.monotonic()
    with pytest.raises(UnknownKey):
        await verify_in(mode, verifier, server.issuer.token(key=KEYS[1]))
    assert time.monotonic() - start < DEADLINE + MARGIN
    assert server.requests == ["/jwks", "/jwks"]

    refreshing = await start_stale_refresh(mode, verifier, server, clock)
    start = time.monotonic()
    with pytest.raises(UnknownKey):
        await verify_in(mode, verifier, server.issuer.token(key=KEYS[2]))
    assert time.monotonic() - start < DEADLINE + MARGIN
    assert (await refreshing)["sub"] == "worker"
    assert server.requests == ["/jwks"] * 3


# -- keys and algorithms -----------------------------------------------------------------------


async def test_algorithm_comes_from_the_jwk_not_the_token(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """A key published for RS256 refuses a token signed with it under RS512."""
    issuer.keys = [(KEYS[0], "RS256")]
    assert (await verifier.verify(issuer.token(alg="RS256")))["sub"] == "worker"
    with pytest.raises(InvalidSignature):
        await verifier.verify(issuer.token(alg="RS512"))


async def test_jwk_without_alg_needs_exactly_one_configured_algorithm(
    issuer: FakeIssuer, clock: Clock
) -> None:
    """A JWK without alg is used only when the verifier was given exactly one algorithm."""
    jwk = issuer.jwks()["keys"][0]
    del jwk["alg"]
    issuer.jwks_override = json.dumps({"keys": [jwk]}).encode()
    token = issuer.token()
    async with issuer.async_client() as http:
        loose = TokenVerifier(ISSUER, AUDIENCE, http_client=http, clock=clock)
        with pytest.raises(KeySetUnavailable):
            await loose.verify(token)
        bound = TokenVerifier(ISSUER, AUDIENCE, algorithms=["RS512"], http_client=http, clock=clock)
        assert (await bound.verify(token))["sub"] == "worker"
        with pytest.raises(InvalidSignature):
            await bound.verify(issuer.token(alg="RS256"))


@pytest.mark.parametrize(
    "algorithms", [["HS256"], ["none"], ["RS512", "HS512"], [], ["ES512"], ["Ed25519"]]
)
def test_only_the_dealers_algorithms_can_be_configured(algorithms: list[str]) -> None:
    """none, HMAC and algorithms the dealer never signs with are refused at construction
    (RFC 8725 §3.1)."""
    with pytest.raises(ValueError, match="algorithms"):
        TokenVerifier(ISSUER, AUDIENCE, algorithms=algorithms)


def _jwk(key: rsa.RSAPrivateKey, **members: Any) -> dict[str, Any]:
    jwk = public_jwk(key.public_key(), "RS512", thumbprint(key.public_key()))
    jwk.update(members)
    return {k: v for k, v in jwk.items() if v is not None}


@pytest.mark.parametrize(
    ("members", "kept"),
    [
        ({}, True),
        ({"use": None}, True),
        ({"use": "enc"}, False),
        ({"kty": "EC"}, False),
        ({"alg": "HS256"}, False),
        ({"alg": "none"}, False),
        ({"alg": None}, False),
        ({"kid": None}, False),
        ({"kid": 7}, False),
        ({"key_ops": ["verify"]}, True),
        ({"key_ops": ["encrypt"]}, False),
        ({"n": "AQAB="}, False),
        ({"e": "AQAB=="}, False),
        # Not minimal octets (RFC 7518 §6.3.1.1), as some producers emit: same key.
        ({"e": "AAEAAQ"}, True),
        ({"d": "c2VjcmV0", "p": "AQ", "q": "AQ"}, True),  # private members ignored
    ],
)
def test_jwks_parsing_keeps_only_unambiguous_rsa_signing_keys(
    members: dict[str, Any], kept: bool
) -> None:
    """verification_keys keeps an RSA sig key with a known alg and kid; skips the rest."""
    keys = verification_keys({"keys": [_jwk(KEYS[0], **members)]})
    assert bool(keys) is kept


def test_jwks_parsing_drops_short_keys_and_duplicate_kids() -> None:
    """Keys under 2048 bits and kids given to two keys are not used."""
    # The short key is what is under test.
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    numbers = small.public_key().public_numbers()
    short = _jwk(KEYS[0], n=b64url_uint(numbers.n), e=b64url_uint(numbers.e), kid="short")
    twice = [_jwk(KEYS[1], kid="same"), _jwk(KEYS[2], kid="same")]
    keys = verification_keys({"keys": [short, *twice, _jwk(KEYS[0])]})
    assert list(keys) == [thumbprint(KEYS[0].public_key())]
    assert keys[thumbprint(KEYS[0].public_key())][0] == "RS512"


# -- policy --------------------------------------------------------------------------------------


async def test_required_scopes(issuer: FakeIssuer, clock: Clock) -> None:
    """Missing scopes raise InsufficientScope (an InvalidToken) naming what was required."""
    async with issuer.async_client() as http:
        verifier = TokenVerifier(
            ISSUER, AUDIENCE, require_scopes=["read"], http_client=http, clock=clock
        )
        assert (await verifier.verify(issuer.token(scope="read"), scopes=[]))["scope"] == "read"
        with pytest.raises(InsufficientScope) as excinfo:
            await verifier.verify(issuer.token(scope="read"), scopes=["write"])
        assert excinfo.value.required == ("read", "write")
        assert isinstance(excinfo.value, InvalidToken)
        with pytest.raises(InsufficientScope):
            await verifier.verify(issuer.token(scope=None))
        with pytest.raises(InsufficientScope):
            await verifier.verify(issuer.token(scope="reader"))


async def test_scopes_given_as_a_string_are_space_separated(
    issuer: FakeIssuer, clock: Clock
) -> None:
    """A string of scopes means what the token's scope claim means: space-separated
    scopes (RFC 6749 §3.3), not one scope per letter."""
    async with issuer.async_client() as http:
        verifier = TokenVerifier(
            ISSUER, AUDIENCE, require_scopes="read", http_client=http, clock=clock
        )
        assert verifier.require_scopes == ("read",)
        token = issuer.token(scope="read write")
        assert (await verifier.verify(token, scopes="write"))["scope"] == "read write"
        with pytest.raises(InsufficientScope) as excinfo:
            await verifier.verify(token, scopes="write admin")
        assert excinfo.value.required == ("read", "write", "admin")


async def test_max_token_age(issuer: FakeIssuer, clock: Clock) -> None:
    """With max_token_age, a token issued longer ago is refused though not yet expired."""
    async with issuer.async_client() as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, max_token_age=60, http_client=http, clock=clock)
        now = int(time.time())
        assert await verifier.verify(issuer.token(iat=now - 50))
        with pytest.raises(ExpiredToken, match="older"):
            await verifier.verify(issuer.token(iat=now - 70, nbf=now - 70))


async def test_wrong_audience_and_issuer_use_the_shared_core(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """Audience and issuer are checked by the shared verification core."""
    with pytest.raises(InvalidToken, match="audience"):
        await verifier.verify(issuer.token(aud="other-api"))
    with pytest.raises(InvalidToken, match="issuer"):
        await verifier.verify(issuer.token(iss=ISSUER + "/"))


# -- against the real dealer ---------------------------------------------------------------


async def test_verifies_dealer_tokens_through_its_http_surface(
    app: Quart, client: QuartClient, register: Register
) -> None:
    """Tokens from the dealer verify with keys discovered from the dealer's own metadata."""
    secret = await register("worker", scopes=("write",), audiences=(AUDIENCE,))
    token = await get_token(client, "worker", secret)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, http_client=http)
        claims = await verifier.verify(token, scopes=["write"])
    assert claims["client_id"] == "worker" and claims["scope"] == "write"


def test_library_does_not_import_the_server() -> None:
    """Importing the library (verify, client, protect) loads no module of tokendealer's
    outside ``tokendealer.library``, nor the server's dependencies."""
    code = (
        "import sys\n"
        "import tokendealer.library.verify, tokendealer.library.client\n"
        "import tokendealer.library.protect\n"
        "bad = [m for m in sys.modules if m.startswith('tokendealer.')"
        " and not m.startswith('tokendealer.library')"
        " or m in ('sqlalchemy', 'quart', 'structlog', 'redis', 'uvicorn')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
