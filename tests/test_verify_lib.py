"""tokendealer.verify: TokenVerifier over a fake issuer (httpx MockTransport) and the real dealer.

``FakeIssuer`` serves RFC 8414 metadata and a JWK Set the test controls, counts every
request, and signs tokens with its keys; ``test_protect`` and ``test_client_lib`` reuse it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from quart import Quart

from tests.conftest import ISSUER, QuartClient, Register
from tokendealer.jwk import b64url_uint, public_jwk, thumbprint, verification_keys
from tokendealer.verify import (
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

AUDIENCE = "orders-api"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


#: Generated once: RSA key generation is the slow part of these tests.
KEYS = [_key() for _ in range(3)]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeIssuer:
    """An issuer serving metadata and JWKS through an httpx MockTransport."""

    issuer: str = ISSUER
    keys: list[tuple[rsa.RSAPrivateKey, str]] = field(default_factory=lambda: [(KEYS[0], "RS512")])
    metadata: bool = True
    metadata_issuer: str | None = None
    cache_control: str | None = "public, max-age=300"
    jwks_status: int = 200
    jwks_override: bytes | None = None
    delay: float = 0.0
    requests: list[str] = field(default_factory=list)

    @property
    def kid(self) -> str:
        return thumbprint(self.keys[0][0].public_key())

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                public_jwk(k.public_key(), alg, thumbprint(k.public_key())) for k, alg in self.keys
            ]
        }

    def respond(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        path = request.url.path
        if path.startswith("/.well-known/oauth-authorization-server"):
            if not self.metadata:
                return httpx.Response(404)
            return httpx.Response(
                200,
                json={
                    "issuer": self.metadata_issuer or self.issuer,
                    "jwks_uri": "https://keys.test/jwks",
                },
            )
        if path in ("/jwks", "/.well-known/jwks.json"):
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            body = self.jwks_override or json.dumps(self.jwks()).encode()
            return httpx.Response(self.jwks_status, content=body, headers=headers)
        return httpx.Response(404)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            time.sleep(self.delay)
        return self.respond(request)

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.respond(request)

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.async_handler))

    def sync_client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "worker",
            "client_id": "worker",
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": f"jti-{time.perf_counter_ns()}",
            "scope": "read write",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        key: rsa.RSAPrivateKey | None = None,
        alg: str = "RS512",
        kid: Any = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = key or self.keys[0][0]
        header = {"typ": "at+jwt", "kid": thumbprint(key.public_key()) if kid is None else kid}
        header.update(headers or {})
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers=header)


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
        await verifier.verify(token)
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
    assert verifier.fetches == 2
    clock.advance(30)
    issuer.jwks_status = 200
    await verifier.verify(token)
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
    assert verifier.fetches == 2


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
    """A JWKS document over 256 KiB is not read to the end and not used."""
    issuer.jwks_override = b'{"keys": [' + b" " * (300 * 1024) + b"]}"
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
        await asyncio.sleep(0.05)  # the second verification is now waiting (or fetching)
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


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["RS512", "HS512"], [], ["ES256"]])
def test_only_rsa_algorithms_can_be_configured(algorithms: list[str]) -> None:
    """none, HMAC and other families are refused at construction (RFC 8725 §3.1)."""
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
    response = await client.post(
        "/oauth/token", form={"grant_type": "client_credentials"}, auth=("worker", secret)
    )
    token = (await response.get_json())["access_token"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, http_client=http)
        claims = await verifier.verify(token, scopes=["write"])
    assert claims["client_id"] == "worker" and claims["scope"] == "write"


def test_library_does_not_import_the_server() -> None:
    """Importing tokendealer.verify, .client and .protect loads no store, app, dealer or keys."""
    code = (
        "import sys, tokendealer.verify, tokendealer.client, tokendealer.protect\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in (['tokendealer', 'store'],"
        " ['tokendealer', 'http'], ['tokendealer', 'dealer'], ['tokendealer', 'keys'])"
        " or m in ('sqlalchemy', 'quart', 'structlog')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
