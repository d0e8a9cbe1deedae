"""Rate limits and brute-force protection through the HTTP surface (RFC 6749 §2.3.1).

Per-client request limits, failed-authentication limits per client id and per client
address, the client address behind trusted proxies, the JSON 429 with ``Retry-After``,
every route limited or exempt on purpose, and limit settings refused at startup.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Blueprint, Quart
from quart_rate_limiter import (
    QUART_RATE_LIMITER_EXEMPT_ATTRIBUTE,
    QUART_RATE_LIMITER_LIMITS_ATTRIBUTE,
)

from tests.support.apps import fresh_address, running
from tests.support.cli import CLI
from tests.support.environment import QuartClient, Register
from tests.support.servers import run_server, server_env
from tests.support.tokens import TOKEN_PATH, request_token, token_request_parts
from tokendealer.http import create_app
from tokendealer.http.endpoints import ENDPOINTS
from tokendealer.http.endpoints.token import token
from tokendealer.http.limits import limit_per_address
from tokendealer.http.pipeline import Endpoint
from tokendealer.ratelimit.gcra import MemoryStore, Mode, Slot, client_address
from tokendealer.settings import ConfigError, Rate, Settings

#: Small limits so that tests cross them in a few requests.
CLIENT_LIMIT = 5
FAILURE_LIMIT = 3
ADDRESS_LIMIT = 4


@pytest.fixture(name="settings")
def _limited_settings(settings: Settings) -> Settings:
    """The shared test settings with small limits (overrides conftest's ``settings``)."""
    return dataclasses.replace(
        settings,
        rate_limit=Rate(CLIENT_LIMIT, 60),
        auth_failure_limit=Rate(FAILURE_LIMIT, 60),
        verify_rate_limit=Rate(ADDRESS_LIMIT, 60),
    )


async def assert_rate_limited(response: Any) -> None:
    """The 429 shape: RFC 6749 §5.2-style JSON, Retry-After in whole seconds, no-store."""
    assert response.status_code == 429
    assert response.content_type == "application/json"
    body = await response.get_json()
    assert body["error"] == "temporarily_unavailable"
    assert isinstance(body["error_description"], str)
    assert set(body) == {"error", "error_description"}
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    assert response.headers["Cache-Control"] == "no-store"


# -- per-client limit -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_per_client_limit_answers_json_429(
    client: QuartClient, register: Register, method: str
) -> None:
    """A client gets CLIENT_LIMIT tokens a minute, then 429 JSON with Retry-After; another
    client is not affected, whichever authentication method is used."""
    secret = await register("busy")
    other = await register("calm")
    for _ in range(CLIENT_LIMIT):
        response = await request_token(client, "busy", secret, method=method)
        assert response.status_code == 200
    await assert_rate_limited(await request_token(client, "busy", secret, method=method))
    assert (await request_token(client, "calm", other, method=method)).status_code == 200


async def test_successes_never_count_as_failures(client: QuartClient, register: Register) -> None:
    """More successful authentications than the failure limit all succeed."""
    secret = await register("good")
    for _ in range(CLIENT_LIMIT):
        assert (await request_token(client, "good", secret)).status_code == 200


# -- failed authentications -----------------------------------------------------------


async def test_failures_limited_per_client_id_and_address(
    client: QuartClient, register: Register
) -> None:
    """Failures for one id from one address lock that id at that address (even its right
    secret); the id's right secret from another address and another client still work.
    (The per-id ceiling over all addresses: tests/http/test_auth_failures.py.)"""
    secret = await register("victim")
    other = await register("bystander")
    attacker = fresh_address()
    for _ in range(FAILURE_LIMIT):
        response = await request_token(client, "victim", "wrong", peer=attacker)
        assert response.status_code == 401
    # (CLIENT_LIMIT requests for the id in all: the per-client limit is not what refuses.)
    await assert_rate_limited(await request_token(client, "victim", secret, peer=attacker))
    response = await request_token(client, "victim", secret, peer=fresh_address())
    assert response.status_code == 200
    response = await request_token(client, "bystander", other, peer=fresh_address())
    assert response.status_code == 200


async def test_failures_limited_per_address(client: QuartClient, register: Register) -> None:
    """Failures with a new id each time from one address lock that address; a client at
    another address still gets its token."""
    secret = await register("elsewhere")
    attacker = fresh_address()
    for i in range(FAILURE_LIMIT):
        response = await request_token(client, f"guess-{i}", "wrong", peer=attacker)
        assert response.status_code == 401
    await assert_rate_limited(await request_token(client, "guess-x", "wrong", peer=attacker))
    response = await request_token(client, "elsewhere", secret, peer=fresh_address())
    assert response.status_code == 200


async def test_unknown_and_known_ids_limited_alike(client: QuartClient, register: Register) -> None:
    """An unregistered id is counted and refused exactly like a registered one, so a 429
    does not reveal which ids exist."""
    await register("exists")
    answers = {}
    for client_id in ("exists", "does-not-exist"):
        peer = fresh_address()
        statuses = [
            (await request_token(client, client_id, "wrong", peer=peer)).status_code
            for _ in range(FAILURE_LIMIT + 1)
        ]
        answers[client_id] = statuses
    assert answers["exists"] == answers["does-not-exist"] == [401] * FAILURE_LIMIT + [429]


async def test_rotating_forwarded_for_without_trusted_proxy_is_still_limited(
    client: QuartClient,
) -> None:
    """With no trusted proxy, X-Forwarded-For is ignored: rotating it (and the id) from
    one connection address does not escape the per-address failure limit."""
    peer = fresh_address()
    statuses = [
        (
            await request_token(
                client,
                f"rotating-{i}",
                "wrong",
                peer=peer,
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            )
        ).status_code
        for i in range(FAILURE_LIMIT + 3)
    ]
    assert statuses == [401] * FAILURE_LIMIT + [429] * 3


async def test_trusted_proxy_counts_the_address_it_saw(
    settings: Settings, register: Register
) -> None:
    """Behind one trusted proxy, failures count against the entry the proxy appended (not
    the client-written leftmost entries, not the proxy's own address)."""
    secret = await register("behind-proxy")
    proxy = "10.0.0.1"
    async with running(dataclasses.replace(settings, trusted_proxies=1)) as client:
        statuses = [
            (
                await request_token(
                    client,
                    f"probe-{i}",
                    "wrong",
                    peer=proxy,
                    headers={"X-Forwarded-For": f"6.6.6.{i}, 203.0.113.7"},
                )
            ).status_code
            for i in range(FAILURE_LIMIT + 1)
        ]
        assert statuses == [401] * FAILURE_LIMIT + [429]
        # Same proxy, another client address: not limited by 203.0.113.7's failures.
        response = await request_token(
            client, "behind-proxy", secret, peer=proxy, headers={"X-Forwarded-For": "203.0.113.8"}
        )
        assert response.status_code == 200
        # A header with fewer hops than trusted proxies counts the connection's address.
        statuses = [
            (await request_token(client, f"direct-{i}", "wrong", peer="192.0.2.99")).status_code
            for i in range(FAILURE_LIMIT + 1)
        ]
        assert statuses == [401] * FAILURE_LIMIT + [429]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "hops", "expected"),
    [
        ("192.0.2.1", ["203.0.113.5"], 0, "192.0.2.1"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.5"], 1, "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1", "203.0.113.5, 10.0.0.2"], 2, "203.0.113.5"),
        ("10.0.0.1", ["203.0.113.5"], 2, "10.0.0.1"),
        ("2001:db8:1:2::1", [], 0, "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", [], 0, "192.0.2.7"),
        ("10.0.0.1", ["203.0.113.5:1234"], 1, "203.0.113.5"),
        ("10.0.0.1", ["[2001:db8:1:2::1]:443"], 1, "2001:db8:1:2::/64"),
        ("10.0.0.1", ["[2001:db8:1:2::1]"], 1, "2001:db8:1:2::/64"),
        ("10.0.0.1", ["[::ffff:203.0.113.5]:443"], 1, "203.0.113.5"),
        ("10.0.0.1", ["::ffff:203.0.113.5"], 1, "203.0.113.5"),
    ],
)
def test_client_address(peer: str, forwarded_for: list[str], hops: int, expected: str) -> None:
    """The address is the entry ``hops`` from the right of all X-Forwarded-For lines, the
    peer when there are too few, and an IPv6 /64; a port is dropped, an IPv4-mapped IPv6
    address is its IPv4 address."""
    assert client_address(peer, forwarded_for, hops) == expected


async def test_ipv6_addresses_limited_per_64(client: QuartClient) -> None:
    """Failures from different addresses of one IPv6 /64 share one count."""
    statuses = [
        (
            await request_token(client, f"v6-{i}", "wrong", peer=f"2001:db8:77:1::{i + 1:x}")
        ).status_code
        for i in range(FAILURE_LIMIT + 1)
    ]
    assert statuses == [401] * FAILURE_LIMIT + [429]


# -- every route ----------------------------------------------------------------------


def test_an_endpoint_cannot_be_declared_without_limits() -> None:
    """The pipeline's endpoints declare their limits, and cannot leave them out."""
    assert all(endpoint.limits for endpoint in ENDPOINTS)
    with pytest.raises(ValueError, match="declare the endpoint's limits"):
        Endpoint("POST", "/oauth/unlimited", (), token, authenticates=True)


def test_every_quart_route_is_limited_or_exempt(app: Quart) -> None:
    """Each Quart route carries a quart-rate-limiter limit (its own or its blueprint's) or
    its exempt marker: a route cannot go unlimited by accident."""
    unmarked = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        blueprint = app.blueprints.get(rule.endpoint.rpartition(".")[0])
        limited = getattr(view, QUART_RATE_LIMITER_LIMITS_ATTRIBUTE, None) or getattr(
            blueprint, QUART_RATE_LIMITER_LIMITS_ATTRIBUTE, None
        )
        if not (limited or getattr(view, QUART_RATE_LIMITER_EXEMPT_ATTRIBUTE, False)):
            unmarked.append(rule.rule)
    assert unmarked == []


async def test_a_blueprint_limited_per_address_answers_429(settings: Settings) -> None:
    """A Quart blueprint added later (the admin pages, say) limited with
    ``limit_per_address`` is counted in the shared store and refused over the limit."""
    app = create_app(settings)
    added = Blueprint("added", __name__)

    @added.get("/added-later")
    async def added_later() -> str:
        return "ok"

    app.register_blueprint(limit_per_address(added, settings))
    async with app.test_app():
        client = app.test_client()
        peer = {"client": (fresh_address(), 1)}
        statuses = [
            (await client.get("/added-later", scope_base=peer)).status_code
            for _ in range(ADDRESS_LIMIT + 1)
        ]
        other = await client.get("/added-later", scope_base={"client": (fresh_address(), 1)})
    assert statuses == [200] * ADDRESS_LIMIT + [429]
    assert other.status_code == 200


async def test_not_found_carries_no_rate_limit_headers(client: QuartClient) -> None:
    """A 404 costs no limit-store read and says nothing of limits."""
    response = await client.get("/nope")
    assert response.status_code == 404
    names = [name.lower() for name, _ in response.headers.items()]
    assert not [name for name in names if name.startswith("ratelimit")]


@pytest.mark.parametrize("path", ["/oauth/introspect", "/oauth/revoke", "/verify_token"])
async def test_oversized_bodies_are_counted_too(client: QuartClient, path: str) -> None:
    """A body too large to read (413) still counts against the per-address limit: a
    flood of 64 kB bodies is refused like any other flood."""
    peer = {"client": (fresh_address(), 1)}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"token=" + b"x" * 70_000
    statuses = [
        (await client.post(path, data=body, headers=headers, scope_base=peer)).status_code
        for _ in range(ADDRESS_LIMIT + 1)
    ]
    assert statuses == [413] * ADDRESS_LIMIT + [429]


LIMITED = [
    ("/oauth/token", ADDRESS_LIMIT),  # unauthenticated: keyed by address, sized per client
    ("/oauth/introspect", ADDRESS_LIMIT),
    ("/oauth/revoke", ADDRESS_LIMIT),
    ("/verify_token", ADDRESS_LIMIT),
]


@pytest.mark.parametrize("path", [path for path, _ in LIMITED])
async def test_limited_routes_answer_429(client: QuartClient, path: str) -> None:
    """Each limited route answers 429 once a caller with no credentials goes over."""
    peer = fresh_address()
    statuses = []
    for _ in range(CLIENT_LIMIT + 1):
        response = await client.post(path, form={}, scope_base={"client": (peer, 1)})
        statuses.append(response.status_code)
    assert 429 in statuses
    assert statuses.index(429) <= CLIENT_LIMIT
    assert all(status < 500 for status in statuses)


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
    ],
)
async def test_exempt_routes_never_answer_429(client: QuartClient, path: str) -> None:
    """Probes, the JWKS and the metadata answer far beyond any configured limit."""
    for _ in range(3 * CLIENT_LIMIT):
        response = await client.get(path, scope_base={"client": ("192.0.2.200", 1)})
        assert response.status_code == 200


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable",
    [
        "TOKENDEALER_RATE_LIMIT",
        "TOKENDEALER_AUTH_FAILURE_LIMIT",
        "TOKENDEALER_VERIFY_RATE_LIMIT",
    ],
)
@pytest.mark.parametrize(
    "value", ["fast", "0/minute", "10/0 seconds", "10", "10/fortnight", "-1/minute", "1.5/minute"]
)
def test_bad_limit_refused_at_startup(variable: str, value: str) -> None:
    """A malformed rate stops Settings.from_env with a message naming the variable."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOKENDEALER_TRUSTED_PROXIES", "-1"),
        ("TOKENDEALER_TRUSTED_PROXIES", "one"),
        ("TOKENDEALER_TRUSTED_PROXIES", "99"),
        ("TOKENDEALER_REDIS_URL", "http://127.0.0.1:6379"),
    ],
)
def test_bad_proxy_and_redis_settings_refused(variable: str, value: str) -> None:
    """Trusted proxies must be a small count and the Redis URL a redis URL."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_limits_read_from_environment() -> None:
    """Documented spellings parse to the expected rates; defaults apply when unset."""
    settings = Settings.from_env(
        {
            "TOKENDEALER_RATE_LIMIT": "100/second",
            "TOKENDEALER_AUTH_FAILURE_LIMIT": "5/10 seconds",
            "TOKENDEALER_VERIFY_RATE_LIMIT": "2/hours",
            "TOKENDEALER_TRUSTED_PROXIES": "2",
            "TOKENDEALER_REDIS_URL": "redis://127.0.0.1:6379/0",
        }
    )
    assert settings.rate_limit == Rate(100, 1)
    assert settings.auth_failure_limit == Rate(5, 10)
    assert settings.verify_rate_limit == Rate(2, 3600)
    assert settings.trusted_proxies == 2
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    defaults = Settings.from_env({})
    assert (defaults.rate_limit, defaults.auth_failure_limit) == (Rate(1200, 60), Rate(20, 60))
    assert (defaults.trusted_proxies, defaults.redis_url) == (0, None)


def test_serve_refuses_bad_limit(tmp_path: Path) -> None:
    """``tokendealer serve`` with a malformed limit exits non-zero naming the variable,
    without a traceback. (The console script itself: in process, a ``serve`` that did
    not refuse would serve for ever.)"""
    env = server_env(tmp_path, 1, {"TOKENDEALER_AUTH_FAILURE_LIMIT": "lots"})
    result = CLI(env, cwd=tmp_path, script=True).fails("serve", "--port", "1")
    assert "TOKENDEALER_AUTH_FAILURE_LIMIT" in result.stderr
    assert "Traceback" not in result.stderr


# -- the in-memory store ----------------------------------------------------------------


async def test_memory_store_is_bounded() -> None:
    """A flood of distinct keys keeps at most max_keys entries, the newest ones."""
    store = MemoryStore(max_keys=100)
    for i in range(1000):
        await store.update([Slot(f"k{i}", Rate(1, 60))], Mode.HIT)
    assert len(store) == 100
    assert await store.update([Slot("k999", Rate(1, 60))], Mode.PEEK) > 0


# -- a real server ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_real_server_ignores_forwarded_for_without_trusted_proxy(
    tmp_path: Path, server: str
) -> None:
    """On a real server reached from loopback, rotating X-Forwarded-For does not escape the
    failure limit: the ASGI server must not rewrite the client address from the header
    (uvicorn does by default for 127.0.0.1)."""
    env = {"TOKENDEALER_AUTH_FAILURE_LIMIT": f"{FAILURE_LIMIT}/hour"}
    with run_server(tmp_path, server=server, env=env) as running_server:
        statuses = []
        with httpx.Client(timeout=10) as http:
            for i in range(FAILURE_LIMIT + 3):
                form, headers = token_request_parts(f"rotating-{i}", "wrong")
                response = http.post(
                    running_server.url + TOKEN_PATH,
                    data=form,
                    headers={**headers, "X-Forwarded-For": f"203.0.113.{i}"},
                )
                statuses.append(response.status_code)
    assert statuses == [401] * FAILURE_LIMIT + [429] * 3
