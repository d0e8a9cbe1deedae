"""tokendealer.library.client: TokenClient against the real dealer app, TokenAuth's refresh-on-401.

The async paths talk to the dealer's Quart app through ``httpx.ASGITransport`` (its real
HTTP surface, in process); the sync paths and odd answers use a fake token endpoint on an
``httpx.MockTransport``. The sync flow against real processes is in ``test_examples``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from quart import Quart

from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.issuer import Clock
from tokendealer.library.client import Token, TokenAuth, TokenClient, TokenError

TOKEN_URL = ISSUER + "/oauth/token"
AUDIENCE = "orders-api"


@pytest.fixture(name="http")
async def _http(app: Quart) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as http:
        yield http


async def _verify(client: QuartClient, token: str) -> dict[str, object]:
    response = await client.post("/verify_token", form={"access_token": token})
    assert response.status_code == 200
    claims: dict[str, object] = await response.get_json()
    return claims


# -- against the dealer ------------------------------------------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_get_token_from_the_dealer(
    http: httpx.AsyncClient,
    client: QuartClient,
    register: Register,
    auth_method: str,
) -> None:
    """Both client authentication methods get a token with the requested scope and audience."""
    secret = await register("worker", scopes=("read", "write"), audiences=(AUDIENCE, "other"))
    tokens = TokenClient(
        TOKEN_URL,
        "worker",
        secret,
        audience=AUDIENCE,
        scope=["write"],
        auth_method=auth_method,
        http_client=http,
    )
    claims = await _verify(client, await tokens.get_token())
    assert claims["aud"] == AUDIENCE and claims["scope"] == "write"
    assert tokens.token is not None and tokens.token.scope == "write"


async def test_basic_auth_form_encodes_the_client_id(
    http: httpx.AsyncClient, client: QuartClient, register: Register
) -> None:
    """RFC 6749 App. B: an id with ':' and '@' authenticates because it is encoded first."""
    secret = await register("team:worker@eu")
    tokens = TokenClient(TOKEN_URL, "team:worker@eu", secret, http_client=http)
    assert (await _verify(client, await tokens.get_token()))["client_id"] == "team:worker@eu"


async def test_token_is_cached_until_shortly_before_expiry(
    http: httpx.AsyncClient, register: Register
) -> None:
    """A 100 s token is reused for 90 s (10 % early), then fetched anew."""
    secret = await register("worker", ttl=100)
    clock = Clock()
    tokens = TokenClient(TOKEN_URL, "worker", secret, http_client=http, clock=clock)
    first = await tokens.get_token()
    clock.advance(89)
    assert await tokens.get_token() == first
    assert tokens.fetches == 1
    clock.advance(1)
    assert await tokens.get_token() != first
    assert tokens.fetches == 2


async def test_long_tokens_refresh_thirty_seconds_early(
    http: httpx.AsyncClient, register: Register
) -> None:
    """A one-hour token is refreshed 30 s before it expires (min(30 s, 10 %))."""
    secret = await register("worker", ttl=3600)
    clock = Clock()
    tokens = TokenClient(TOKEN_URL, "worker", secret, http_client=http, clock=clock)
    await tokens.get_token()
    clock.advance(3569)
    await tokens.get_token()
    assert tokens.fetches == 1
    clock.advance(1)
    await tokens.get_token()
    assert tokens.fetches == 2


async def test_force_fetches_a_new_token(http: httpx.AsyncClient, register: Register) -> None:
    """force=True fetches a new token although the cached one is still fresh."""
    secret = await register("worker")
    tokens = TokenClient(TOKEN_URL, "worker", secret, http_client=http)
    first = await tokens.get_token()
    assert await tokens.get_token(force=True) != first
    assert tokens.fetches == 2


async def test_concurrent_callers_share_one_fetch(
    http: httpx.AsyncClient, register: Register
) -> None:
    """Twenty concurrent get_token calls make one request; twenty forced ones make one more."""
    secret = await register("worker")
    tokens = TokenClient(TOKEN_URL, "worker", secret, http_client=http)
    results = await asyncio.gather(*(tokens.get_token() for _ in range(20)))
    assert len(set(results)) == 1 and tokens.fetches == 1
    forced = await asyncio.gather(*(tokens.get_token(force=True) for _ in range(20)))
    assert len(set(forced)) == 1 and forced[0] != results[0]
    assert tokens.fetches == 2


@pytest.mark.parametrize(
    ("client_id", "secret_ok", "kwargs", "error", "status"),
    [
        ("worker", False, {}, "invalid_client", 401),
        ("nobody", True, {}, "invalid_client", 401),
        ("worker", True, {"scope": "admin"}, "invalid_scope", 400),
        ("worker", True, {"audience": "elsewhere"}, "invalid_target", 400),
    ],
)
async def test_dealer_errors_raise_token_error(
    http: httpx.AsyncClient,
    register: Register,
    client_id: str,
    secret_ok: bool,
    kwargs: dict[str, str],
    error: str,
    status: int,
) -> None:
    """Every refusal by the dealer raises TokenError with its RFC 6749 code and status."""
    secret = await register("worker", scopes=("read",), audiences=(AUDIENCE,))
    used = secret if secret_ok else secret[:-4] + "AAAA"
    tokens = TokenClient(TOKEN_URL, client_id, used, http_client=http, **kwargs)
    with pytest.raises(TokenError) as excinfo:
        await tokens.get_token()
    assert (excinfo.value.error, excinfo.value.status_code) == (error, status)
    assert excinfo.value.description
    assert used not in str(excinfo.value) and used not in repr(tokens)


# -- against a fake token endpoint ---------------------------------------------------------------


@dataclass
class FakeDealer:
    """A token endpoint on a MockTransport: numbered tokens, or a canned answer."""

    answer: tuple[int, dict[str, Any]] | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answer is not None:
            status, kwargs = self.answer
            return httpx.Response(status, **kwargs)
        n = len(self.requests)
        return httpx.Response(
            200,
            json={"access_token": f"tok-{n}", "token_type": "Bearer", "expires_in": 3600},
            headers={"Cache-Control": "no-store"},
        )

    def client(self) -> TokenClient:
        return TokenClient(
            TOKEN_URL,
            "worker",
            "p@ss w:rd+",
            audience=AUDIENCE,
            sync_http_client=httpx.Client(transport=httpx.MockTransport(self.handler)),
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(self.handler)),
        )


@pytest.fixture(name="fake")
def _fake() -> FakeDealer:
    return FakeDealer()


async def test_request_is_exactly_rfc_6749(fake: FakeDealer) -> None:
    """The request is a form POST with grant_type and audience, Basic over encoded parts."""
    tokens = fake.client()
    try:
        tokens.get_token_sync()
    finally:
        await _close(tokens)
    request = fake.requests[0]
    assert request.method == "POST" and str(request.url) == TOKEN_URL
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "audience": [AUDIENCE],
    }
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "worker:p%40ss+w%3Ard%2B"


async def _close(tokens: TokenClient) -> None:
    # The fake's clients were passed in, so TokenClient does not close them.
    assert tokens._http is not None and tokens._sync_http is not None
    await tokens._http.aclose()
    tokens._sync_http.close()


def test_sync_client_caches_and_forces(fake: FakeDealer) -> None:
    """get_token_sync caches like get_token and refetches with force=True."""
    tokens = fake.client()
    try:
        assert tokens.get_token_sync() == "tok-1"
        assert tokens.get_token_sync() == "tok-1"
        assert tokens.get_token_sync(force=True) == "tok-2"
        assert tokens.get_token_sync(rejected="tok-1") == "tok-2"
        assert tokens.get_token_sync(rejected="tok-2") == "tok-3"
    finally:
        asyncio.run(_close(tokens))
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("answer", "error", "status"),
    [
        ((502, {"text": "<html>Bad gateway</html>"}), "server_error", 502),
        ((400, {"json": {"error": "invalid_grant"}}), "invalid_grant", 400),
        ((429, {"json": {"error": "temporarily_unavailable"}}), "temporarily_unavailable", 429),
        # A JSON error that no token endpoint answers (a proxy's 404 page, a wrong URL).
        ((404, {"json": {"error": "not_found"}}), "server_error", 404),
        ((400, {"json": {"error": ["invalid_client"]}}), "server_error", 400),
        ((500, {"json": {"nothing": "useful"}}), "server_error", 500),
        ((200, {"json": {"access_token": "t", "token_type": "mac"}}), "server_error", 200),
        ((200, {"json": {"token_type": "Bearer"}}), "server_error", 200),
        (
            (200, {"json": {"access_token": "t", "token_type": "Bearer", "expires_in": "9"}}),
            "server_error",
            200,
        ),
    ],
)
async def test_odd_answers_raise_token_error(
    fake: FakeDealer, answer: tuple[int, dict[str, Any]], error: str, status: int
) -> None:
    """Non-OAuth answers, unknown token types and broken responses raise TokenError too."""
    fake.answer = answer
    tokens = fake.client()
    try:
        with pytest.raises(TokenError) as excinfo:
            await tokens.get_token()
        with pytest.raises(TokenError):
            tokens.get_token_sync()
    finally:
        await _close(tokens)
    assert (excinfo.value.error, excinfo.value.status_code) == (error, status)


async def test_unreachable_dealer_raises_token_error() -> None:
    """A connection error is a TokenError with server_error and no status code."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        tokens = TokenClient(TOKEN_URL, "worker", "s3cret", http_client=http)
        with pytest.raises(TokenError) as excinfo:
            await tokens.get_token()
    assert (excinfo.value.error, excinfo.value.status_code) == ("server_error", None)
    assert isinstance(excinfo.value.__cause__, httpx.ConnectError)


def test_reprs_never_show_secret_or_token() -> None:
    """Neither TokenClient nor Token shows the secret or the access token in its repr."""
    tokens = TokenClient(TOKEN_URL, "worker", "very-secret-value")
    token = Token("the-access-token", "Bearer", 60, None, 0.0)
    assert "very-secret-value" not in repr(tokens)
    assert "the-access-token" not in repr(token)


# -- TokenAuth -----------------------------------------------------------------------------------


@dataclass
class Target:
    """A protected service accepting only tokens in ``accepted``; records what it saw."""

    accepted: set[str] = field(default_factory=set)
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.seen.append((token, request.content))
        if token in self.accepted:
            return httpx.Response(201, json={"ok": True})
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="t", error="invalid_token"'}
        )


async def test_async_auth_refetches_once_after_401_and_replays_the_body(fake: FakeDealer) -> None:
    """A 401 makes TokenAuth fetch a new token and retry the same request once."""
    target = Target(accepted={"tok-2"})
    tokens = fake.client()
    try:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(target.handler), auth=TokenAuth(tokens)
        ) as http:
            response = await http.post("https://data.test/items", json={"n": 1})
    finally:
        await _close(tokens)
    assert response.status_code == 201
    assert [token for token, _ in target.seen] == ["tok-1", "tok-2"]
    assert target.seen[0][1] == target.seen[1][1]
    assert json.loads(target.seen[1][1]) == {"n": 1}
    assert len(fake.requests) == 2


def test_sync_auth_retries_only_once(fake: FakeDealer) -> None:
    """When the new token is refused too, the 401 is returned: one refetch, one retry."""
    target = Target(accepted=set())
    tokens = fake.client()
    try:
        with httpx.Client(
            transport=httpx.MockTransport(target.handler), auth=TokenAuth(tokens)
        ) as http:
            response = http.post("https://data.test/items", content=b"payload")
    finally:
        asyncio.run(_close(tokens))
    assert response.status_code == 401
    assert target.seen == [("tok-1", b"payload"), ("tok-2", b"payload")]
    assert len(fake.requests) == 2


def test_sync_auth_uses_the_cached_token(fake: FakeDealer) -> None:
    """Requests that succeed reuse the cached token: one fetch for many calls."""
    target = Target(accepted={"tok-1"})
    tokens = fake.client()
    try:
        with httpx.Client(
            transport=httpx.MockTransport(target.handler), auth=TokenAuth(tokens)
        ) as http:
            statuses = [http.get("https://data.test/items").status_code for _ in range(5)]
    finally:
        asyncio.run(_close(tokens))
    assert statuses == [201] * 5 and len(fake.requests) == 1


async def test_concurrent_401s_share_one_refetch(fake: FakeDealer) -> None:
    """Ten requests refused with the same token cause one refetch, not ten."""
    target = Target(accepted={"tok-2"})
    tokens = fake.client()
    try:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(target.handler), auth=TokenAuth(tokens)
        ) as http:
            await tokens.get_token()
            responses = await asyncio.gather(
                *(http.get("https://data.test/items") for _ in range(10))
            )
    finally:
        await _close(tokens)
    assert [r.status_code for r in responses] == [201] * 10
    assert len(fake.requests) == 2
