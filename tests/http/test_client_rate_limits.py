"""Per-client limits (issue 14) at the OAuth endpoints: a registered client's own limit
in place of ``TOKENDEALER_RATE_LIMIT``, enforced or only monitored (a log line and the
``observe.events`` hook, never a refusal), and what the limiter costs for an id that is
not a client's. Setting limits: the CLI and ``apply`` in
tests/operations/test_client_rate_limits.py, the admin API in test_admin_api.py, the
console in test_console.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import structlog

from tests.support.apps import add_client, running
from tests.support.environment import QuartClient
from tests.support.tokens import basic, get_token, request_token
from tokendealer.observe import events
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings

#: The service-wide per-client limit of these tests: a few requests a minute.
DEFAULT_LIMIT = 5


@pytest.fixture(name="settings")
def _limited_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, rate_limit=Rate(DEFAULT_LIMIT, 60))


async def statuses(client: QuartClient, client_id: str, secret: str, count: int) -> list[int]:
    """The statuses of ``count`` token requests of ``client_id``, one after the other."""
    return [(await request_token(client, client_id, secret)).status_code for _ in range(count)]


@dataclasses.dataclass
class Hook:
    calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __call__(self, endpoint: str, client_id: str) -> None:
        self.calls.append((endpoint, client_id))


@pytest.fixture(name="hook")
def _hook(monkeypatch: pytest.MonkeyPatch) -> Hook:
    """``observe.events.rate_limit_monitored``, recorded."""
    hook = Hook()
    monkeypatch.setattr(events, "rate_limit_monitored", hook)
    return hook


# -- enforced and monitored ------------------------------------------------------------------


async def test_an_own_limit_is_enforced_in_place_of_the_services(
    client: QuartClient, dealer: Dealer
) -> None:
    """2/minute: the third token request is 429 (Retry-After within the half minute the
    next one takes); a client with 8/minute gets more than the service's 5; a client on
    the service's limit is not affected by either."""
    slow = await add_client(dealer, "slow", rate_limit=Rate(2, 60))
    fast = await add_client(dealer, "fast", rate_limit=Rate(8, 60))
    plain = await add_client(dealer, "plain")
    assert await statuses(client, "slow", slow, 3) == [200, 200, 429]
    refused = await request_token(client, "slow", slow)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 30
    assert await statuses(client, "fast", fast, 9) == [200] * 8 + [429]
    assert await statuses(client, "plain", plain, DEFAULT_LIMIT + 1) == [200] * 5 + [429]


async def test_monitor_mode_logs_and_reports_and_refuses_nothing_over_its_own_limit(
    client: QuartClient, dealer: Dealer, hook: Hook
) -> None:
    """Over its own 2/minute in monitor mode, a request is answered (200), logged as
    ``rate_limit_monitored`` and reported to the hook; the service's limit stays in force
    (the 6th request is 429, and a refused request is not reported)."""
    secret = await add_client(dealer, "watched", rate_limit=Rate(2, 60), rate_limit_mode="monitor")
    with structlog.testing.capture_logs() as logs:
        assert await statuses(client, "watched", secret, 3) == [200, 200, 200]
    monitored = [
        {name: line.get(name) for name in ("client_id", "endpoint", "limit")}
        for line in logs
        if line["event"] == "rate_limit_monitored"
    ]
    assert monitored == [{"client_id": "watched", "endpoint": "token", "limit": "2/minute"}]
    assert hook.calls == [("token", "watched")]
    assert await statuses(client, "watched", secret, 3) == [200, 200, 429]
    assert hook.calls == [("token", "watched")] * 3


async def test_an_own_limit_applies_to_introspection_and_revocation_too(
    client: QuartClient, dealer: Dealer
) -> None:
    """The per-client limit of every endpoint that has one: each counted apart."""
    secret = await add_client(dealer, "rs", rate_limit=Rate(1, 60))
    token = await get_token(client, "rs", secret)
    for path in ("/oauth/introspect", "/oauth/revoke"):
        answers = [
            await client.post(path, form={"token": token}, headers=basic("rs", secret))
            for _ in range(2)
        ]
        assert [answer.status_code for answer in answers] == [200, 429], path


async def test_unknown_ids_cost_no_read_and_a_limited_client_none_of_its_own(
    settings: Settings, dealer: Dealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests presenting ids of no client (refused before authentication: a wrong
    grant type) cost no read of a client; a client with a limit of its own is read by
    the one query of the clients with limits, and then not at all while its record is
    fresh: its requests read nothing the service would not read without the limit."""
    await add_client(dealer, "slow", "s3cret", rate_limit=Rate(2, 60))
    reads: list[str] = []
    async with running(dataclasses.replace(settings, client_cache_ttl=60.0)) as other:
        store = other.app.extensions["tokendealer"].store
        read = store.get_client

        async def counted(client_id: str) -> Any:
            reads.append(client_id)
            return await read(client_id)

        monkeypatch.setattr(store, "get_client", counted)
        for i in range(20):
            answer = await request_token(other, f"random-{i}", "x", grant_type="password")
            assert answer.status_code == 400
        assert reads == []
        assert await statuses(other, "slow", "s3cret", 3) == [200, 200, 429]
        assert reads == []
