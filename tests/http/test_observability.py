"""What an operator sees (issue 14): request ids, the access line, the events with their
own line, and ``GET /metrics``, through the test client.

Metrics are process-wide (prometheus-client's default registry, as in a one-worker
server), so every test asserts how a value moved, never its absolute value.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import structlog
from quart import Quart

from tests.support.apps import add_client, running
from tests.support.environment import QuartClient
from tests.support.metrics import moved, scrape, value
from tests.support.tokens import basic, get_token, introspect, request_token
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings

NEW_ID = re.compile(r"[0-9a-f]{32}")


# -- request ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/nope", "/oauth/token"])
async def test_a_well_formed_request_id_comes_back(client: QuartClient, path: str) -> None:
    sent = "edge-7f3a:req.42_" + "x" * 100  # 118 characters of the allowed set
    response = await client.get(path, headers={"X-Request-ID": sent})
    assert response.headers.getlist("X-Request-ID") == [sent]


@pytest.mark.parametrize(
    "sent", ["", "x" * 129, "has space", "new\\nline", 'quote"d', "caf\u00e9", "a/b"]
)
async def test_a_malformed_request_id_is_replaced(client: QuartClient, sent: str) -> None:
    headers = {"X-Request-ID": sent.encode("utf-8").decode("latin-1")}
    response = await client.get("/healthz", headers=headers)
    [given] = response.headers.getlist("X-Request-ID")
    assert given != sent and NEW_ID.fullmatch(given)


async def test_each_request_gets_its_own_id(client: QuartClient, register: Any) -> None:
    secret = await register("svc")
    ids = {
        (await request_token(client, "svc", secret)).headers["X-Request-ID"],
        (await request_token(client, "svc", "wrong")).headers["X-Request-ID"],
        (await client.get("/.well-known/jwks.json")).headers["X-Request-ID"],
    }
    assert len(ids) == 3 and all(NEW_ID.fullmatch(i) for i in ids)


# -- the access line and the events ---------------------------------------------------------


@pytest.fixture(name="logged_app")
async def _logged_app(settings: Settings) -> AsyncIterator[Quart]:
    async with running(replace(settings, access_log=True)) as client:
        yield client.app  # type: ignore[attr-defined]


async def test_the_access_line_says_who_and_what(logged_app: Quart) -> None:
    client = logged_app.test_client()
    dealer: Dealer = logged_app.extensions["tokendealer"]
    secret = await add_client(dealer, "billing", scopes=("read",))
    with structlog.testing.capture_logs() as logs:
        ok = await request_token(
            client, "billing", secret, headers={"X-Request-ID": "trace-1"}, peer="10.1.2.3"
        )
        refused = await request_token(client, "billing", "not-the-secret", peer="10.1.2.4")
        missing = await client.get("/nowhere?secret=query-value")
    assert ok.status_code == 200 and refused.status_code == 401 and missing.status_code == 404
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert [line["status"] for line in lines] == [200, 401, 404]
    first, second, third = lines
    assert first["request_id"] == "trace-1"
    assert (first["method"], first["path"], first["address"]) == (
        "POST",
        "/oauth/token",
        "10.1.2.3",
    )
    assert first["client_id"] == "billing" and "error" not in first
    assert isinstance(first["ms"], float) and first["ms"] >= 0
    assert second["error"] == "invalid_client" and "client_id" not in second
    assert second["request_id"] == refused.headers["X-Request-ID"]
    assert third["path"] == "/nowhere" and third["error"] == "not_found"
    # The failure has its own line: the method, why, and the id (registered).
    [failure] = [entry for entry in logs if entry["event"] == "client_authentication_failed"]
    assert failure["method"] == "client_secret_basic"
    assert failure["reason"] == "wrong secret" and failure["client_id"] == "billing"
    token = (await ok.get_json())["access_token"]
    for entry in logs:
        text = repr(entry)
        assert secret not in text and token not in text and "not-the-secret" not in text
        assert "query-value" not in text


async def test_an_unknown_client_id_is_not_logged(client: QuartClient) -> None:
    """An attacker's invented ids stay out of the failure line (and of the metrics)."""
    with structlog.testing.capture_logs() as logs:
        await request_token(client, "invented-id", "guess", method="post")
    [failure] = [entry for entry in logs if entry["event"] == "client_authentication_failed"]
    assert failure["method"] == "client_secret_post" and "client_id" not in failure
    assert failure["reason"] == "no client by that id"
    assert "invented-id" not in repr(logs)


async def test_the_access_log_can_be_turned_off(client: QuartClient) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.get("/healthz")
    assert not [entry for entry in logs if entry["event"] == "request"]


# -- /metrics -------------------------------------------------------------------------------


async def test_tokens_and_failures_are_counted_with_bounded_labels(
    client: QuartClient, register: Any
) -> None:
    secret = await register("svc", scopes=("read",))
    before = await scrape(client)
    for _ in range(2):
        assert (await request_token(client, "svc", secret)).status_code == 200
    await request_token(client, "svc", "wrong")
    await request_token(client, "svc", "wrong", method="post")
    invented = [f"random-{secrets.token_hex(4)}" for _ in range(5)]
    for client_id in invented:
        await request_token(client, client_id, "guess")
    no_credentials = await client.post("/oauth/token", form={"grant_type": "client_credentials"})
    assert no_credentials.status_code == 401
    scope = await request_token(client, "svc", secret, scope="admin")
    assert scope.status_code == 400
    after = await scrape(client)
    assert moved(before, after, "tokendealer_tokens_issued_total", client_id="svc") == 2
    failures = "tokendealer_client_auth_failures_total"
    assert moved(before, after, failures, method="client_secret_basic") == 6
    assert moved(before, after, failures, method="client_secret_post") == 1
    assert moved(before, after, failures, method="none") == 1
    errors = "tokendealer_token_errors_total"
    assert moved(before, after, errors, error="invalid_client") == 8
    assert moved(before, after, errors, error="invalid_scope") == 1
    assert moved(before, after, "tokendealer_signing_duration_seconds_count", alg="RS512") == 2
    duration = "tokendealer_request_duration_seconds_count"
    assert moved(before, after, duration, endpoint="token") == 11
    # No series names an id nobody registered.
    labelled = {dict(labels).get("client_id") for _, labels in after}
    assert not labelled & set(invented)


async def test_introspections_and_revocations_are_counted(
    client: QuartClient, register: Any
) -> None:
    secret = await register("svc")
    token = await get_token(client, "svc", secret)
    before = await scrape(client)
    caller = ("svc", secret)
    assert (await introspect(client, token, caller))[1]["active"] is True
    assert (await introspect(client, "not-a-token", caller))[1]["active"] is False
    revoked = await client.post("/oauth/revoke", form={"token": token}, headers=basic(*caller))
    assert revoked.status_code == 200
    assert (await introspect(client, token, caller))[1]["active"] is False
    after = await scrape(client)
    assert moved(before, after, "tokendealer_introspections_total", active="true") == 1
    assert moved(before, after, "tokendealer_introspections_total", active="false") == 2
    assert moved(before, after, "tokendealer_revocations_total") == 1


async def test_keys_and_backends_are_shown(client: QuartClient, dealer: Dealer) -> None:
    samples = await scrape(client)
    active = dealer.keyset.active()
    assert active is not None
    info = (
        "tokendealer_signing_key_info",
        (("alg", "RS512"), ("kid", active.kid), ("state", "active")),
    )
    assert samples[info] == 1
    age = value(samples, "tokendealer_active_key_age_seconds")
    assert 0 <= age < 86400 * 366
    assert value(samples, "tokendealer_store_up") == 1
    assert value(samples, "tokendealer_rate_limit_store_up") == 1


async def test_rate_limited_requests_are_counted(settings: Settings) -> None:
    tight = replace(settings, verify_rate_limit=Rate(2, 60))
    async with running(tight) as client:
        before = await scrape(client)
        statuses = [
            (await client.post("/verify_token", form={"access_token": "x"})).status_code
            for _ in range(3)
        ]
        # /metrics itself is never limited, however often it is read.
        for _ in range(5):
            await scrape(client)
        after = await scrape(client)
    assert statuses[-1] == 429
    assert moved(before, after, "tokendealer_rate_limited_total", endpoint="verify_token") == 1


async def test_metrics_can_be_turned_off(settings: Settings) -> None:
    async with running(replace(settings, metrics=False)) as client:
        assert (await client.get("/metrics")).status_code == 404


# -- token waste ------------------------------------------------------------------------------


async def test_a_client_that_does_not_cache_its_tokens_is_counted(
    client: QuartClient, register: Any, dealer: Dealer
) -> None:
    secret = await register("chatty", scopes=("read", "write"))
    before = await scrape(client)
    await get_token(client, "chatty", secret, scope="read")
    await get_token(client, "chatty", secret, scope="read")  # holds one with 100% left
    await get_token(client, "chatty", secret, scope="read")
    await get_token(client, "chatty", secret, scope="write")  # another scope: no waste
    after = await scrape(client)
    assert moved(before, after, "tokendealer_early_token_requests_total", client_id="chatty") == 2
    await dealer.activity.drain()
    record = await dealer.store.get_client("chatty")
    assert record is not None and record.early_token_requests == 2
