"""The README's emergency rotation (``keys rotate --activate-after 0``, then ``keys remove``)
while a routine rotation is pending: the pending key is replaced, never activated, and
a command that still refuses because of it says what to do.

The CLI runs in process on the store and keys of an app started in process, whose key
watcher looks every ``WATCH_INTERVAL`` seconds; tokens come from that app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Awaitable, Callable

import jwt
import pytest

from tests.support.cli import CLI
from tests.support.environment import QuartClient, Register
from tests.support.tokens import get_token
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings

#: A fresh keys directory per test: the app's first key is the one that "leaked".
pytestmark = pytest.mark.fresh_keys

WATCH_INTERVAL = 0.05
#: The routine rotation's delay: far beyond the test, so its key stays pending.
ROUTINE_DELAY = "3600"
KID = re.compile(r"[A-Za-z0-9_-]{43}")


@pytest.fixture(name="settings")
def _quick_key_watch(settings: Settings) -> Settings:
    return dataclasses.replace(settings, key_watch_interval=WATCH_INTERVAL)


@pytest.fixture(name="cli")
def _cli(settings: Settings) -> CLI:
    """The CLI on the app's store and keys, its database created (the keys commands
    audit their changes there); async tests use ``aok`` for commands that open the store."""
    return CLI.for_settings(settings).create_database()


def states(cli: CLI) -> dict[str, str]:
    return {row["kid"]: row["state"] for row in cli.ok("keys", "list", "--json").json()}


async def jwks_kids(client: QuartClient) -> set[str]:
    document = await (await client.get("/.well-known/jwks.json")).get_json()
    return {key["kid"] for key in document["keys"]}


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(WATCH_INTERVAL)


async def test_emergency_rotation_replaces_a_pending_rotation(
    client: QuartClient, dealer: Dealer, register: Register, settings: Settings, cli: CLI
) -> None:
    """With a routine rotation pending, ``keys rotate --activate-after 0`` succeeds: the
    pending key (never used to sign) is unpublished and deleted, a new key signs the next
    token, and the leaked key is retired; ``keys remove`` of the leaked key then works and
    its tokens fail at the dealer."""
    secret = await register("svc")
    leaked = dealer.keyset.keys[0].kid
    leaked_token = await get_token(client, "svc", secret)
    pending = (await cli.aok("keys", "rotate", "--activate-after", ROUTINE_DELAY)).stdout.strip()
    assert states(cli) == {leaked: "active", pending: "next"}

    emergency = await cli.aok("keys", "rotate", "--activate-after", "0")
    fresh = emergency.stdout.strip()
    assert KID.fullmatch(fresh) and fresh not in (leaked, pending)
    assert f"replaced the pending key {pending}" in emergency.stderr
    assert "signs in 0 seconds" in emergency.stderr
    assert states(cli) == {leaked: "retired", fresh: "active"}
    assert not (settings.keys_dir / f"{pending}.pem").exists()

    async def served() -> bool:
        return await jwks_kids(client) == {leaked, fresh}

    await wait_for(served)
    token = await get_token(client, "svc", secret)
    assert jwt.get_unverified_header(token)["kid"] == fresh

    await cli.aok("keys", "remove", leaked)

    async def leaked_gone() -> bool:
        return await jwks_kids(client) == {fresh}

    await wait_for(leaked_gone)
    refused = await client.post("/verify_token", form={"access_token": leaked_token})
    assert refused.status_code == 400
    assert (await client.post("/verify_token", form={"access_token": token})).status_code == 200


def test_refused_rotation_says_what_to_do_and_the_advice_works(dealer: Dealer, cli: CLI) -> None:
    """A second routine rotation is refused with one line naming the pending key and the
    two ways out (cancel it with ``keys remove KID``, or ``--activate-after 0``); the
    first of them, followed word for word, lets the rotation through."""
    active = dealer.keyset.keys[0].kid
    pending = cli.ok("keys", "rotate", "--activate-after", ROUTINE_DELAY).stdout.strip()
    refused = cli.fails("keys", "rotate", "--activate-after", "60")
    refused.assert_one_line_error(f"a rotation is already pending: key {pending}")
    advice = re.findall(r"'tokendealer ([^']+)'", refused.stderr)
    assert advice == [f"keys remove {pending}", "keys rotate --activate-after 0"]
    assert states(cli) == {active: "active", pending: "next"}

    cli.ok(*advice[0].split())
    assert states(cli) == {active: "active"}
    again = cli.ok("keys", "rotate", "--activate-after", "60").stdout.strip()
    assert states(cli) == {active: "active", again: "next"}


def test_generate_is_refused_while_a_rotation_is_pending(dealer: Dealer, cli: CLI) -> None:
    """``keys generate`` during a routine rotation would make a key that signs only until
    the pending one takes over: it is refused with one line naming the pending key and
    the emergency rotation, writes no key and no event, and the advice works."""
    active = dealer.keyset.keys[0].kid
    pending = cli.ok("keys", "rotate", "--activate-after", ROUTINE_DELAY).stdout.strip()
    refused = cli.fails("keys", "generate")
    refused.assert_one_line_error(f"a rotation is already pending: key {pending}")
    assert "'tokendealer keys rotate --activate-after 0'" in refused.stderr
    assert states(cli) == {active: "active", pending: "next"}
    assert [event["action"] for event in cli.ok("audit", "--json").json()] == ["key.rotate"]

    emergency = cli.ok("keys", "rotate", "--activate-after", "0").stdout.strip()
    assert states(cli) == {active: "retired", emergency: "active"}
    generated = cli.ok("keys", "generate").stdout.strip()
    assert states(cli) == {active: "retired", emergency: "retired", generated: "active"}


def test_rotate_help_says_the_emergency_replaces_the_pending_key(cli: CLI) -> None:
    """The operator reads what --activate-after 0 does to a pending key before running it."""
    shown = " ".join(cli.ok("keys", "rotate", "-h").stdout.split())
    assert "0 for an emergency: the new key signs at once, replacing any pending next key" in (
        shown
    )
