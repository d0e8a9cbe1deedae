"""``POST /oauth/revoke`` (RFC 7009), the shared deny-list, ``clients disable --revoke-tokens``
and what every endpoint answers when the store cannot be read.

The store-down cases swap the running dealer's store for one that cannot connect (a
closed loopback port, a database file in a directory that does not exist), the way a
database outage looks to a process that started fine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.apps import add_client
from tests.support.cli import CLI
from tests.support.environment import QuartClient, Register
from tests.support.processes import free_port
from tests.support.tokens import (
    INACTIVE,
    INTROSPECT_PATH,
    basic,
    forge,
    get_token,
    introspect,
    request_token,
    unverified,
    verify_status,
)
from tokendealer.http import create_app
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings
from tokendealer.store import SQLStore, Store

REVOKE = "/oauth/revoke"


def jti_of(token: str) -> str:
    jti: str = unverified(token)[1]["jti"]
    return jti


async def revoke(client: QuartClient, token: str, caller: tuple[str, str], **extra: str) -> int:
    """Revoke ``token`` as ``caller``; the answer is always an empty, uncached body."""
    response = await client.post(REVOKE, form={"token": token, **extra}, headers=basic(*caller))
    if response.status_code == 200:
        assert await response.get_data() == b""
        assert response.headers["Cache-Control"] == "no-store"
    return response.status_code


@pytest.fixture(name="svc")
async def _svc(register: Register) -> tuple[str, str]:
    return "svc", await register("svc", scopes=("read",))


@pytest.fixture(name="caller")
async def _caller(register: Register) -> tuple[str, str]:
    """A resource server that introspects tokens."""
    return "rs", await register("rs")


# -- the endpoint ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        pytest.param({}, {}, id="none"),
        pytest.param(basic("svc", "wrong"), {}, id="basic-wrong-secret"),
        pytest.param({}, {"client_id": "svc", "client_secret": "wrong"}, id="post-wrong-secret"),
        pytest.param(basic("nobody", "x"), {}, id="unknown-client"),
    ],
)
async def test_client_must_authenticate(
    client: QuartClient, svc: tuple[str, str], headers: dict[str, str], form: dict[str, str]
) -> None:
    """Without valid client credentials revocation is 401 invalid_client and revokes nothing."""
    token = await get_token(client, *svc)
    response = await client.post(REVOKE, form={"token": token, **form}, headers=headers)
    assert response.status_code == 401
    assert (await response.get_json())["error"] == "invalid_client"
    assert "WWW-Authenticate" in response.headers
    assert await verify_status(client, token) == 200


async def test_missing_token_is_invalid_request(client: QuartClient, svc: tuple[str, str]) -> None:
    """A revocation request without a token is 400 invalid_request."""
    response = await client.post(REVOKE, form={}, headers=basic(*svc))
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_request"


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_revoke_own_token(
    client: QuartClient, caller: tuple[str, str], svc: tuple[str, str], method: str
) -> None:
    """A client revokes its own token: 200, then /verify_token and introspection refuse it."""
    token = await get_token(client, *svc)
    other = await get_token(client, *svc)
    assert await verify_status(client, token) == 200
    if method == "basic":
        assert await revoke(client, token, svc) == 200
    else:
        response = await client.post(
            REVOKE, form={"token": token, "client_id": svc[0], "client_secret": svc[1]}
        )
        assert response.status_code == 200
    assert await verify_status(client, token) == 400
    status, body, _ = await introspect(client, token, caller)
    assert status == 200 and body == INACTIVE
    # Only that token: the client's other tokens are untouched.
    assert await verify_status(client, other) == 200
    # Revoking again is still a success.
    assert await revoke(client, token, svc) == 200


@pytest.mark.parametrize("hint", ["access_token", "refresh_token", "unknown_kind"])
async def test_token_type_hint_does_not_matter(
    client: QuartClient, svc: tuple[str, str], hint: str
) -> None:
    """Whatever token_type_hint says, the token is found and revoked (RFC 7009 §2.1)."""
    token = await get_token(client, *svc)
    assert await revoke(client, token, svc, token_type_hint=hint) == 200
    assert await verify_status(client, token) == 400


async def test_other_clients_token_is_refused_and_left_alone(
    client: QuartClient,
    dealer: Dealer,
    register: Register,
    caller: tuple[str, str],
    svc: tuple[str, str],
) -> None:
    """Revoking another client's valid token is refused with 400 invalid_grant (RFC 7009
    §2.1: "the request is refused and the client is informed of the error"; RFC 6749 §5.2:
    "issued to another client"), and the token stays valid everywhere."""
    victim = ("victim", await register("victim"))
    token = await get_token(client, *victim)
    response = await client.post(REVOKE, form={"token": token}, headers=basic(*svc))
    assert response.status_code == 400
    assert response.headers["Cache-Control"] == "no-store"
    assert await response.get_json() == {
        "error": "invalid_grant",
        "error_description": "The token was issued to another client.",
    }
    assert await verify_status(client, token) == 200
    status, body, _ = await introspect(client, token, caller)
    assert status == 200 and body["active"] is True
    assert not await dealer.store.is_revoked(jti_of(token))
    # Its owner still can.
    assert await revoke(client, token, victim) == 200
    assert await verify_status(client, token) == 400


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJSUzUxMiIsInR5cCI6ImF0K2p3dCJ9.e30.AAAA",
        "x" * 4000,
    ],
)
async def test_unknown_or_malformed_token_is_200(
    client: QuartClient, dealer: Dealer, svc: tuple[str, str], token: str
) -> None:
    """Invalid tokens are answered 200 (RFC 7009 §2.2) and add nothing to the deny-list."""
    assert await revoke(client, token, svc) == 200
    # Purging with a far-future clock deletes, and so counts, every entry there is.
    assert await dealer.store.purge_revoked(time.time() + 10**9) == 0


async def test_expired_token_is_200_and_not_listed(
    client: QuartClient, dealer: Dealer, svc: tuple[str, str]
) -> None:
    """An already expired token of the client's own is answered 200; there is nothing to list."""
    token = await forge(dealer, now=time.time() - 7200, ttl=3600)
    assert await revoke(client, token, svc) == 200
    assert not await dealer.store.is_revoked(jti_of(token))


# -- the deny-list -------------------------------------------------------------------------


async def test_deny_list_entry_lives_until_exp(
    client: QuartClient, dealer: Dealer, svc: tuple[str, str]
) -> None:
    """A revoked jti is stored with the token's exp and purged only once that has passed."""
    token = await get_token(client, *svc)
    exp = unverified(token)[1]["exp"]
    assert await revoke(client, token, svc) == 200
    jti = jti_of(token)
    assert await dealer.store.is_revoked(jti)
    assert await dealer.store.purge_revoked(exp - 1) == 0
    assert await dealer.store.is_revoked(jti)
    assert await dealer.store.purge_revoked(exp + 1) == 1
    assert not await dealer.store.is_revoked(jti)


async def test_revocation_purges_expired_entries(
    client: QuartClient, dealer: Dealer, svc: tuple[str, str]
) -> None:
    """Revoking through HTTP drops deny-list entries whose tokens have expired, not live ones."""
    now = time.time()
    await dealer.store.revoke_token("stale-jti", "svc", now - 10)
    await dealer.store.revoke_token("live-jti", "svc", now + 600)
    token = await get_token(client, *svc)
    assert await revoke(client, token, svc) == 200
    assert not await dealer.store.is_revoked("stale-jti")
    assert await dealer.store.is_revoked("live-jti")
    assert await dealer.store.is_revoked(jti_of(token))


async def test_replicas_share_the_deny_list(settings: Settings, database_url: str) -> None:
    """A token revoked at one replica is refused by another on the same database (both stores)."""
    shared = dataclasses.replace(settings, database_url=database_url)
    first, second = create_app(shared), create_app(shared)
    async with first.test_app(), second.test_app():
        a, b = first.test_client(), second.test_client()
        dealer: Dealer = first.extensions["tokendealer"]
        await add_client(dealer, "svc", "svc-secret")
        await add_client(dealer, "rs", "rs-secret")
        token = await get_token(a, "svc", "svc-secret")
        assert await verify_status(b, token) == 200
        assert await revoke(a, token, ("svc", "svc-secret")) == 200
        for replica in (a, b):
            assert await verify_status(replica, token) == 400
            status, body, _ = await introspect(replica, token, ("rs", "rs-secret"))
            assert status == 200 and body == INACTIVE


# -- the incident command ------------------------------------------------------------------


async def test_disable_revoke_tokens_cli(
    client: QuartClient,
    dealer: Dealer,
    settings: Settings,
    caller: tuple[str, str],
    svc: tuple[str, str],
) -> None:
    """``clients disable --revoke-tokens`` kills issued tokens; ``enable`` allows new ones."""
    tokens = [await get_token(client, *svc) for _ in range(2)]
    for token in tokens:
        assert await verify_status(client, token) == 200

    cli = CLI.for_settings(settings)
    await asyncio.to_thread(cli.ok, "clients", "disable", "--revoke-tokens", "svc")
    for token in tokens:
        assert await verify_status(client, token) == 400
        status, body, _ = await introspect(client, token, caller)
        assert status == 200 and body == INACTIVE
    refused = await request_token(client, *svc)
    assert refused.status_code == 401

    await asyncio.to_thread(cli.ok, "clients", "enable", "svc")
    # At once, even within the second of the revocation: tokens carry the new epoch.
    fresh = await get_token(client, *svc)
    assert await verify_status(client, fresh) == 200
    status, body, _ = await introspect(client, fresh, caller)
    assert status == 200 and body["active"] is True
    # The tokens revoked by the incident stay revoked after the client is enabled again.
    for token in tokens:
        assert await verify_status(client, token) == 400


async def test_disable_without_revoke_keeps_issued_tokens(
    client: QuartClient, settings: Settings, caller: tuple[str, str], svc: tuple[str, str]
) -> None:
    """Plain ``clients disable`` refuses new tokens but leaves issued ones valid until exp."""
    token = await get_token(client, *svc)
    await asyncio.to_thread(CLI.for_settings(settings).ok, "clients", "disable", "svc")
    refused = await request_token(client, *svc)
    assert refused.status_code == 401
    assert await verify_status(client, token) == 200
    assert (await introspect(client, token, caller))[1]["active"] is True


# -- the store is down ---------------------------------------------------------------------

BROKEN_STORES: dict[str, Callable[[Path], str]] = {
    "postgres-closed-port": lambda _: f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
    "sqlite-missing-directory": lambda tmp: f"sqlite+aiosqlite:///{tmp / 'gone' / 'td.db'}",
}


@contextmanager
def swapped(dealer: Dealer, store: Store, *, deny_list_only: bool = False) -> Iterator[None]:
    """Point the running dealer (or only its deny-list) at ``store``; restore afterwards."""
    saved = (dealer.store, dealer.registry.store, dealer.denylist.store)
    dealer.denylist.store = store
    if not deny_list_only:
        dealer.store = dealer.registry.store = store
    try:
        yield
    finally:
        dealer.store, dealer.registry.store, dealer.denylist.store = saved


@pytest.fixture(name="broken_store", params=BROKEN_STORES.values(), ids=BROKEN_STORES.keys())
async def _broken_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store = SQLStore(request.param(tmp_path))
    try:
        yield store
    finally:
        await store.close()


def assert_unavailable(status: int, headers: object, body: bytes) -> None:
    assert status == 503, (status, body)
    assert int(headers["Retry-After"]) > 0  # type: ignore[index]
    assert headers["Cache-Control"] == "no-store"  # type: ignore[index]
    document = json.loads(body)
    assert document["error"] == "temporarily_unavailable"
    assert "active" not in document and "client_id" not in document


async def test_store_down_is_503_everywhere(
    client: QuartClient,
    dealer: Dealer,
    caller: tuple[str, str],
    svc: tuple[str, str],
    broken_store: Store,
) -> None:
    """With the store unreachable, verify, introspect, revoke and token answer 503, never 500."""
    token = await get_token(client, *svc)
    with swapped(dealer, broken_store):
        requests = [
            client.post("/verify_token", form={"access_token": token}),
            client.post(INTROSPECT_PATH, form={"token": token}, headers=basic(*caller)),
            client.post(REVOKE, form={"token": token}, headers=basic(*svc)),
            request_token(client, *svc),
        ]
        for request in requests:
            response = await request
            assert_unavailable(response.status_code, response.headers, await response.get_data())
    # Back to normal once the store answers again; nothing was revoked meanwhile.
    assert await verify_status(client, token) == 200


async def test_deny_list_unreadable_is_never_active(
    client: QuartClient,
    dealer: Dealer,
    caller: tuple[str, str],
    svc: tuple[str, str],
    broken_store: Store,
) -> None:
    """When only the deny-list cannot be read, a valid token is 503, not active (CVE-2020-15223)."""
    token = await get_token(client, *svc)
    with swapped(dealer, broken_store, deny_list_only=True):
        response = await client.post(INTROSPECT_PATH, form={"token": token}, headers=basic(*caller))
        assert_unavailable(response.status_code, response.headers, await response.get_data())
        response = await client.post("/verify_token", form={"access_token": token})
        assert_unavailable(response.status_code, response.headers, await response.get_data())
        response = await client.post(REVOKE, form={"token": token}, headers=basic(*svc))
        assert_unavailable(response.status_code, response.headers, await response.get_data())
    assert await verify_status(client, token) == 200


async def test_revoked_token_stays_inactive_during_outage(
    client: QuartClient,
    dealer: Dealer,
    caller: tuple[str, str],
    svc: tuple[str, str],
    broken_store: Store,
) -> None:
    """A token revoked before the deny-list became unreadable is still refused, not 503'd open."""
    token = await get_token(client, *svc)
    assert await revoke(client, token, svc) == 200
    with swapped(dealer, broken_store, deny_list_only=True):
        # Inactive (the process remembers the revocation) or 503: never active.
        status, body, _ = await introspect(client, token, caller)
        assert status in (200, 503)
        assert body.get("active") is not True
        assert await verify_status(client, token) in (400, 503)


async def test_leaked_secret_procedure(
    client: QuartClient,
    dealer: Dealer,
    settings: Settings,
    caller: tuple[str, str],
    svc: tuple[str, str],
) -> None:
    """The README's incident steps: old tokens and old secret dead, new secret works."""
    leaked = await get_token(client, *svc)
    cli = CLI.for_settings(settings)
    await asyncio.to_thread(cli.ok, "clients", "disable", "--revoke-tokens", "svc")
    rotated = await asyncio.to_thread(
        cli.ok, "clients", "rotate-secret", "svc", "--grace", "0", "--json"
    )
    new_secret: str = rotated.json()["client_secret"]
    await asyncio.to_thread(cli.ok, "clients", "enable", "svc")

    refused = await request_token(client, *svc)
    assert refused.status_code == 401
    assert await verify_status(client, leaked) == 400
    assert (await introspect(client, leaked, caller))[1] == INACTIVE
    fresh = await get_token(client, "svc", new_secret)
    assert await verify_status(client, fresh) == 200


async def test_deny_list_memory_stays_bounded_and_correct(dealer: Dealer) -> None:
    """The per-process cache of revoked jtis stays bounded under a flood of revocations,
    and a jti it forgot is still found revoked in the store."""
    from tokendealer.service import denylist

    far = time.time() + 3600
    original = denylist._MAX_ENTRIES
    denylist._MAX_ENTRIES = 50
    try:
        for i in range(200):
            await dealer.denylist.add(f"jti-{i}", "svc", far)
        assert len(dealer.denylist._revoked) <= 50
        assert await dealer.denylist.contains("jti-0", far) is True  # from the store
        assert await dealer.denylist.contains("jti-never", far) is False
    finally:
        denylist._MAX_ENTRIES = original
