"""Signing-key lifecycle (issue 5): states, rotate, prune, remove, live reload, bad changes."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.cli import CLI
from tests.support.environment import QuartClient, Register
from tests.support.tokens import get_token
from tokendealer.http import create_app
from tokendealer.keys.keyset import (
    KeyFileError,
    generate_key,
    load_keyset,
    prune_keys,
    rotate_key,
)
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings

#: These tests are about keys being created, rotated and pruned: no pre-filled key.
pytestmark = pytest.mark.fresh_keys

#: Seconds between the key watcher's checks in these tests' apps (the service: 1 s).
WATCH_INTERVAL = 0.05
#: Seconds a rotated key waits before it signs, in the rotation test: long enough to see
#: it published and not yet signing, short enough not to slow the suite.
ACTIVATE_AFTER = 2


@pytest.fixture(name="settings")
def _quick_key_watch(settings: Settings) -> Settings:
    """Apps started by these tests check the keys directory every WATCH_INTERVAL seconds
    (``key_watch_interval``): the tests wait (polling, with a deadline) for what the
    watcher does, not for its period."""
    return dataclasses.replace(settings, key_watch_interval=WATCH_INTERVAL)


@pytest.fixture(name="cli")
def _cli(settings: Settings) -> CLI:
    """The CLI on the test app's store and keys, in process, its database created (the
    keys commands audit their changes there). Async tests use ``aok``/``afails`` for
    the commands that open the store (they run an event loop of their own)."""
    return CLI.for_settings(settings).create_database()


async def jwks_kids(client: QuartClient) -> set[str]:
    return {
        key["kid"]
        for key in (await (await client.get("/.well-known/jwks.json")).get_json())["keys"]
    }


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(WATCH_INTERVAL)


def key_rows(cli: CLI) -> dict[str, dict[str, Any]]:
    """``keys list --json`` by kid."""
    return {row["kid"]: row for row in cli.ok("keys", "list", "--json").json()}


def states(cli: CLI) -> dict[str, str]:
    return {kid: row["state"] for kid, row in key_rows(cli).items()}


async def test_rotate_publishes_next_key_then_it_signs(
    client: QuartClient, dealer: Dealer, register: Register, cli: CLI, settings: Settings
) -> None:
    """A rotated key is in the JWKS at once, signs only after its delay, and the old key
    is retired yet still verifies its tokens."""
    secret = await register("svc")
    old_kid = dealer.keyset.keys[0].kid
    old_token = await get_token(client, "svc", secret)

    rotated = await cli.aok("keys", "rotate", "--activate-after", str(ACTIVATE_AFTER))
    new_kid = rotated.stdout.strip()
    assert states(cli) == {old_kid: "active", new_kid: "next"}
    (activate_at,) = [
        k.activate_at for k in load_keyset(settings.keys_dir).keys if k.kid == new_kid
    ]

    await wait_for(lambda: _has(client, new_kid))  # the watcher picks it up
    # Published but not yet signing: a token issued before the key's activation time.
    token = await get_token(client, "svc", secret)
    late = time.time() - activate_at
    assert late < 0, f"the token was asked {late:.2f} s after activation: machine too slow"
    assert jwt.get_unverified_header(token)["kid"] == old_kid

    # Signing from its activation time on, the previous key retired.
    retired = {old_kid: "retired", new_kid: "active"}
    await wait_for(lambda: _states_are(cli, retired), within=ACTIVATE_AFTER + 5)
    assert time.time() >= activate_at
    assert jwt.get_unverified_header(await get_token(client, "svc", secret))["kid"] == new_kid
    verified = await client.post("/verify_token", form={"access_token": old_token})
    assert verified.status_code == 200


async def _states_are(cli: CLI, expected: dict[str, str]) -> bool:
    return states(cli) == expected


async def _has(client: QuartClient, kid: str) -> bool:
    return kid in await jwks_kids(client)


async def test_rotate_on_an_empty_directory_makes_a_key_that_signs_at_once(
    settings: Settings, cli: CLI
) -> None:
    """With no key at all, `keys rotate` has nothing to wait for: its key is active at
    once (not `next` for a max-age with nothing signing), and a fresh server issues tokens
    with it."""
    rotated = await cli.aok("keys", "rotate")
    kid = rotated.stdout.strip()
    assert "signs in 0 seconds" in rotated.stderr
    assert states(cli) == {kid: "active"}
    app = create_app(settings)
    async with app.test_app():
        dealer: Dealer = app.extensions["tokendealer"]
        secret = generate_secret()
        await dealer.store.add_client(Client("svc", digest_secret(secret)))
        token = await get_token(app.test_client(), "svc", secret)
    assert jwt.get_unverified_header(token)["kid"] == kid


def test_second_rotation_while_one_is_pending_fails_cleanly(settings: Settings, cli: CLI) -> None:
    """Two rotations: the second fails with one line and the manifest keeps one successor."""
    generate_key(settings.keys_dir)
    cli.ok("keys", "rotate", "--activate-after", "60")
    second = cli.fails("keys", "rotate", "--activate-after", "60")
    assert "already pending" in second.stderr and "Traceback" not in second.stderr
    assert sorted(states(cli).values()) == ["active", "next"]


def test_concurrent_rotations_never_make_two_successors(tmp_path: Path) -> None:
    """Eight threads rotating at once: exactly one wins, never two next or active keys."""
    keys_dir = tmp_path / "keys"
    generate_key(keys_dir)
    results: list[str] = []

    def rotate() -> None:
        try:
            rotate_key(keys_dir, activate_after=60)
            results.append("ok")
        except KeyFileError:
            results.append("refused")

    threads = [threading.Thread(target=rotate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["ok"] + ["refused"] * 7
    keyset = load_keyset(keys_dir)
    assert sorted(keyset.state(key) for key in keyset.keys) == ["active", "next"]


async def test_remove_drops_key_from_jwks_and_its_tokens_fail(
    client: QuartClient, dealer: Dealer, register: Register, settings: Settings, cli: CLI
) -> None:
    """`keys remove` of a retired key: gone from the JWKS within seconds, its tokens fail."""
    secret = await register("svc")
    old_kid = dealer.keyset.keys[0].kid
    old_token = await get_token(client, "svc", secret)
    await cli.aok("keys", "rotate", "--activate-after", "0")

    active = states_kid(cli, "active")
    refused = await cli.afails("keys", "remove", active)
    assert "active signing key" in refused.stderr

    await cli.aok("keys", "remove", old_kid)
    await wait_for(lambda: _lacks(client, old_kid))
    response = await client.post("/verify_token", form={"access_token": old_token})
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_token"
    assert not (settings.keys_dir / f"{old_kid}.pem").exists()


async def _lacks(client: QuartClient, kid: str) -> bool:
    return kid not in await jwks_kids(client)


def states_kid(cli: CLI, state: str) -> str:
    return next(kid for kid, found in states(cli).items() if found == state)


def test_remove_refuses_the_only_active_key(settings: Settings, cli: CLI) -> None:
    """The only active key cannot be removed: the service would have nothing to sign with."""
    kid = generate_key(settings.keys_dir)
    result = cli.fails("keys", "remove", kid)
    assert "Traceback" not in result.stderr
    assert states(cli) == {kid: "active"}


def test_prune_keeps_young_retired_keys_unless_forced(tmp_path: Path) -> None:
    """Prune removes retired keys older than the longest token lifetime, and no other."""
    keys_dir = tmp_path / "keys"
    now = time.time()
    ancient = generate_key(keys_dir, now=now - 10_000)
    young = generate_key(keys_dir, now=now - 5_000)  # retires `ancient` at now - 5000
    active = generate_key(keys_dir, now=now - 100)  # retires `young` at now - 100
    removed, kept = prune_keys(keys_dir, max_token_lifetime=3630)
    assert removed == [ancient] and kept == [young]
    removed, kept = prune_keys(keys_dir, max_token_lifetime=3630, force=True)
    assert removed == [young] and kept == []
    assert [key.kid for key in load_keyset(keys_dir).keys] == [active]


def test_prune_cli_reports_kept_keys(settings: Settings, cli: CLI) -> None:
    """`keys prune` exits 0, names the retired keys it keeps, and removes them with --force."""
    first = generate_key(settings.keys_dir)
    generate_key(settings.keys_dir)
    cli.ok("init")  # prune reads the clients' lifetimes: it needs the database
    kept = cli.ok("keys", "prune")
    assert first in kept.stderr and "--force" in kept.stderr
    assert first in states(cli)
    forced = cli.ok("keys", "prune", "--force")
    assert f"removed {first}" in forced.stdout
    assert first not in states(cli)


def test_prune_judges_with_the_clients_lifetimes_as_they_are_now(
    settings: Settings, cli: CLI
) -> None:
    """A key retired two hours ago is past the service's lifetime (an hour, plus leeway),
    but not past that of a client whose tokens live four hours: `keys prune` keeps it
    while that client may hold tokens it signed, and removes it once the client's TTL
    is shortened (the lifetimes are read at each prune, not once)."""
    now = time.time()
    old = generate_key(settings.keys_dir, now=now - 3 * 3600)
    generate_key(settings.keys_dir, now=now - 2 * 3600)  # retires `old` two hours ago
    cli.add("short", "--ttl", "60")
    cli.add("long", "--ttl", str(4 * 3600))
    kept = cli.ok("keys", "prune")
    assert old in kept.stderr and f"retired less than {4 * 3600 + 30} s ago" in kept.stderr
    assert states(cli)[old] == "retired"
    cli.ok("clients", "update", "long", "--ttl", "600")
    pruned = cli.ok("keys", "prune")
    assert pruned.stdout.splitlines() == [f"removed {old}"]
    assert old not in states(cli)


def test_keys_list_json_reports_every_field(settings: Settings, cli: CLI) -> None:
    """`keys list --json` gives kid, state, alg, bits, created, activate and retired times."""
    first = generate_key(settings.keys_dir)
    cli.ok("keys", "rotate", "--alg", "RS256", "--activate-after", "60")
    rows = key_rows(cli)
    assert rows[first]["state"] == "active" and rows[first]["retired_at"] is not None
    (nxt,) = [row for kid, row in rows.items() if kid != first]
    assert nxt["state"] == "next" and nxt["alg"] == "RS256" and nxt["bits"] == 2048
    assert set(nxt) >= {"kid", "state", "alg", "bits", "created_at", "activate_at", "retired_at"}


async def test_rs256_key_signs_rs256_tokens(
    client: QuartClient, register: Register, cli: CLI
) -> None:
    """A key generated with --alg RS256 signs RS256 tokens, published with alg RS256."""
    secret = await register("svc")
    rotated = await cli.aok("keys", "rotate", "--alg", "RS256", "--activate-after", "0")
    kid = rotated.stdout.strip()
    await wait_for(lambda: _has(client, kid))  # the watcher picks it up
    token = await get_token(client, "svc", secret)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"] == kid
    jwks = (await (await client.get("/.well-known/jwks.json")).get_json())["keys"]
    assert {k["kid"]: k["alg"] for k in jwks}[header["kid"]] == "RS256"
    assert (await client.post("/verify_token", form={"access_token": token})).status_code == 200


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "fault",
    ["corrupt", "group-readable", "ec p-521", "short"],
)
async def test_running_server_keeps_last_good_keys_on_a_bad_change(
    fault: str,
    client: QuartClient,
    dealer: Dealer,
    register: Register,
    settings: Settings,
) -> None:
    """A bad key dropped in while running is logged and the last good set keeps working."""
    secret = await register("svc")
    kids_before = await jwks_kids(client)
    bad = settings.keys_dir / "intruder.pem"
    if fault == "corrupt":
        _write(bad, b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    elif fault == "group-readable":
        _write(bad, _pem(rsa.generate_private_key(65537, 2048)), 0o640)
    elif fault == "ec p-521":
        # EC P-256 and P-384 keys sign (ES256, ES384); no algorithm here uses P-521.
        _write(bad, _pem(ec.generate_private_key(ec.SECP521R1())))
    else:
        _write(bad, _pem(rsa.generate_private_key(65537, 1024)))  # noqa: S505 - the weak key under test
    # A rotation makes the watcher reload, which meets the bad file.
    rotate_key(settings.keys_dir, activate_after=0)
    with structlog.testing.capture_logs() as logs:
        assert await dealer.refresh_keys() is False
        assert await dealer.refresh_keys() is False  # logged once per change, not per poll
    failures = [e for e in logs if e["event"] == "keys_reload_failed_keeping_last_good_set"]
    assert len(failures) == 1 and "intruder.pem" in failures[0]["reason"]
    assert await jwks_kids(client) == kids_before
    token = await get_token(client, "svc", secret)
    assert (await client.post("/verify_token", form={"access_token": token})).status_code == 200
    bad.unlink()
    assert await dealer.refresh_keys() is True
    assert len(await jwks_kids(client)) == 2


def test_remove_takes_a_kid_that_starts_with_a_dash(settings: Settings, cli: CLI) -> None:
    """Key ids are base64url and may begin with '-': `keys remove` reads one as a kid,
    not as an option."""
    generate_key(settings.keys_dir)
    result = cli.run("keys", "remove", "-20Y6hs6MEQU")
    assert result.code == 1
    assert "no key '-20Y6hs6MEQU'" in result.stderr and "No such option" not in result.stderr


def test_an_existing_open_keys_directory_is_closed_to_others(tmp_path: Path) -> None:
    """A keys directory that already exists with mode 0755 (as ./keys of a checkout) is
    made 0700 when the first key is written into it."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o755)
    keys_dir.chmod(0o755)
    generate_key(keys_dir)
    assert keys_dir.stat().st_mode & 0o777 == 0o700
