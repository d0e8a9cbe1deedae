"""Incident response holds against workers minting from a stale client cache.

Each worker caches a client record for ``client_cache_ttl``. For that long after
``clients disable --revoke-tokens``, ``clients rotate-secret --grace 0`` or ``clients
remove`` return, a worker may still see the old record and mint tokens. Those tokens carry
the client's old token epoch, and the dealer honours only the current one: once every
worker's copy is current (one cache interval), each token minted under the old state is
refused by ``/verify_token`` and introspection, and stays refused after ``enable`` or a
new registration of the id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from quart import Quart

from tests.support.cli import CLI
from tests.support.environment import QuartClient
from tests.support.servers import run_server
from tests.support.tokens import get_token
from tokendealer.http import create_app
from tokendealer.settings import Settings

TOKEN = "/oauth/token"


async def run(settings: Settings | dict[str, str], *args: str) -> dict[str, Any] | None:
    """The CLI (in process, off the event loop: it runs its own) on an app's ``settings``
    or a server's environment; the JSON it printed, if any."""
    cli = CLI.for_settings(settings) if isinstance(settings, Settings) else CLI(settings)
    result = await asyncio.to_thread(cli.ok, *args)
    return result.json() if result.stdout.startswith("{") else None


async def add(settings: Settings | dict[str, str], client_id: str) -> str:
    printed = await run(settings, "clients", "add", client_id, "--json")
    assert printed is not None
    secret: str = printed["client_secret"]
    return secret


async def honoured(client: QuartClient, token: str, caller: tuple[str, str]) -> bool:
    """Whether ``/verify_token`` and introspection (which must agree) accept ``token``."""
    verified = await client.post("/verify_token", form={"access_token": token})
    introspected = await client.post("/oauth/introspect", form={"token": token}, auth=caller)
    active = (await introspected.get_json())["active"]
    assert (verified.status_code == 200) is active
    return bool(active)


@dataclass
class Pair:
    """Two apps on one database: ``stale`` trusts its cached records for an hour (a worker
    that has not seen the change yet), ``fresh`` reads the store on every request (any
    worker one cache interval later)."""

    settings: Settings
    stale: QuartClient
    fresh: QuartClient
    caller: tuple[str, str]


@pytest.fixture(name="pair")
async def _pair(settings: Settings) -> AsyncIterator[Pair]:
    stale_app: Quart = create_app(replace(settings, client_cache_ttl=3600.0))
    fresh_app: Quart = create_app(replace(settings, client_cache_ttl=0.0))
    async with stale_app.test_app(), fresh_app.test_app():
        caller = ("rs", await add(settings, "rs"))
        yield Pair(settings, stale_app.test_client(), fresh_app.test_client(), caller)


@pytest.fixture(name="later")
def _later(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the dealer's wall clock ``seconds`` ahead: a stale worker minting a token one
    or two seconds after the command returned (``iat`` counts whole seconds)."""

    def shift(seconds: float) -> None:
        clock = SimpleNamespace(
            time=lambda: time.time() + seconds,
            monotonic=time.monotonic,
            perf_counter=time.perf_counter,
        )
        monkeypatch.setattr("tokendealer.service.dealer.time", clock)

    return shift


async def test_disable_revoke_tokens_refuses_tokens_minted_from_a_stale_cache(
    pair: Pair, later: Callable[[float], None]
) -> None:
    secret = await add(pair.settings, "svc")
    before = await get_token(pair.stale, "svc", secret)  # the stale worker caches the record
    await run(pair.settings, "clients", "disable", "--revoke-tokens", "svc")
    later(2.0)
    # The stale worker does not know yet: it still mints, after the command returned.
    after = [await get_token(pair.stale, "svc", secret) for _ in range(3)]
    for token in [before, *after]:
        assert not await honoured(pair.fresh, token, pair.caller)
    await run(pair.settings, "clients", "enable", "svc")
    for token in [before, *after]:
        assert not await honoured(pair.fresh, token, pair.caller)
    # Tokens minted once enabled, from a current record, are honoured at once.
    assert await honoured(pair.fresh, await get_token(pair.fresh, "svc", secret), pair.caller)


async def test_immediate_rotation_refuses_every_token_of_the_old_secret(
    pair: Pair, later: Callable[[float], None]
) -> None:
    old = await add(pair.settings, "svc")
    before = await get_token(pair.stale, "svc", old)
    printed = await run(pair.settings, "clients", "rotate-secret", "svc", "--grace", "0", "--json")
    assert printed is not None
    later(2.0)
    after = await get_token(pair.stale, "svc", old)  # the stale worker still takes the old secret
    for token in (before, after):
        assert not await honoured(pair.fresh, token, pair.caller)
    fresh = await get_token(pair.fresh, "svc", printed["client_secret"])
    assert await honoured(pair.fresh, fresh, pair.caller)
    refused = await pair.fresh.post(
        TOKEN, form={"grant_type": "client_credentials"}, auth=("svc", old)
    )
    assert refused.status_code == 401


async def test_rotation_with_grace_keeps_tokens_of_the_old_secret(pair: Pair) -> None:
    old = await add(pair.settings, "svc")
    before = await get_token(pair.fresh, "svc", old)
    await run(pair.settings, "clients", "rotate-secret", "svc", "--grace", "60")
    during = await get_token(pair.fresh, "svc", old)
    for token in (before, during):
        assert await honoured(pair.fresh, token, pair.caller)


async def test_remove_then_add_refuses_tokens_of_the_removed_registration(
    pair: Pair, later: Callable[[float], None]
) -> None:
    old = await add(pair.settings, "svc")
    before = await get_token(pair.stale, "svc", old)
    await run(pair.settings, "clients", "remove", "svc")
    later(1.0)
    after_remove = await get_token(pair.stale, "svc", old)
    new = await add(pair.settings, "svc")
    later(2.0)
    after_add = await get_token(pair.stale, "svc", old)
    for token in (before, after_remove, after_add):
        assert not await honoured(pair.fresh, token, pair.caller)
    assert await honoured(pair.fresh, await get_token(pair.fresh, "svc", new), pair.caller)


# -- the scenario: real workers, a client hammering, the commands meanwhile -------

#: The workers' client cache interval, shrunk so that 20 rounds take seconds.
CACHE_TTL = 0.1
ROUNDS = 20
HAMMERS = 3


class Hammer:
    """Clients asking for tokens from several tasks until stopped; counts the tokens
    minted after ``mark()``."""

    def __init__(self, http: httpx.AsyncClient, secret: str) -> None:
        self.http = http
        self.secret = secret
        self.tokens: list[str] = []
        self.minted_after_mark = 0
        self.marked = False
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._ask()) for _ in range(HAMMERS)]

    def mark(self) -> None:
        self.marked = True

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _ask(self) -> None:
        form = {"grant_type": "client_credentials"}
        while not self._stop.is_set():
            response = await self.http.post(TOKEN, data=form, auth=("svc", self.secret))
            if response.status_code == 200:
                self.tokens.append(response.json()["access_token"])
                self.minted_after_mark += self.marked
                self.started.set()


async def verified(http: httpx.AsyncClient, token: str) -> int:
    """The status ``/verify_token`` answers for ``token``."""
    return (await http.post("/verify_token", data={"access_token": token})).status_code


@pytest.mark.e2e
async def test_no_token_survives_incident_response_on_two_workers(tmp_path: Path) -> None:
    """20 rounds of: a client hammers the token endpoint of 2 workers from several tasks
    while ``disable --revoke-tokens``, ``rotate-secret --grace 0`` or ``remove`` + ``add``
    runs; one cache interval after the command returned, every token minted under the old
    state is refused, on both workers."""
    env = {
        "TOKENDEALER_CLIENT_CACHE_TTL": str(CACHE_TTL),
        "TOKENDEALER_RATE_LIMIT": "1000000/minute",
        "TOKENDEALER_AUTH_FAILURE_LIMIT": "1000000/minute",
        "TOKENDEALER_VERIFY_RATE_LIMIT": "1000000/minute",
    }
    with run_server(tmp_path, workers=2, env=env) as server:
        settings = server.env
        secret = await add(settings, "svc")
        survivors: list[str] = []
        minted_after = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for round_number in range(ROUNDS):
                kind = ("disable", "rotate", "remove")[round_number % 3]
                hammer = Hammer(http, secret)
                await hammer.started.wait()
                if kind == "disable":
                    await run(settings, "clients", "disable", "--revoke-tokens", "svc")
                elif kind == "rotate":
                    printed = await run(
                        settings, "clients", "rotate-secret", "svc", "--grace", "0", "--json"
                    )
                    assert printed is not None
                    secret = printed["client_secret"]
                else:
                    await run(settings, "clients", "remove", "svc")
                hammer.mark()
                # The window the issue describes: workers may still mint for one cache
                # interval after the command returned. Keep asking through it.
                await asyncio.sleep(CACHE_TTL)
                await hammer.stop()
                minted_after += hammer.minted_after_mark
                if kind == "disable":
                    await run(settings, "clients", "enable", "svc")
                elif kind == "remove":
                    secret = await add(settings, "svc")
                # One cache interval later, every worker's copy is current.
                await asyncio.sleep(CACHE_TTL)
                statuses = await asyncio.gather(*(verified(http, t) for t in hammer.tokens))
                survivors += [f"round {round_number} ({kind}): {s}" for s in statuses if s != 400]
        assert survivors == []
        assert minted_after > 0, "no token was minted after a command returned: no race seen"
