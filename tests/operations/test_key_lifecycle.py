"""Signing-key lifecycle (issue 5): states, rotate, prune, remove, live reload, bad changes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.environment import QuartClient, Register
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

TOKENDEALER = str(Path(sys.executable).parent / "tokendealer")


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(
        TOKENDEALER_DATABASE_URL=settings.database_url,
        TOKENDEALER_KEYS_DIR=str(settings.keys_dir),
        TOKENDEALER_ISSUER=settings.issuer,
    )
    return subprocess.run(
        [TOKENDEALER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def token_for(client: QuartClient, secret: str) -> str:
    response = await client.post(
        "/oauth/token", form={"grant_type": "client_credentials"}, auth=("svc", secret)
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    return str((await response.get_json())["access_token"])


async def jwks_kids(client: QuartClient) -> set[str]:
    return {
        key["kid"]
        for key in (await (await client.get("/.well-known/jwks.json")).get_json())["keys"]
    }


async def wait_for(condition, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def states(settings: Settings) -> dict[str, str]:
    rows = json.loads(cli(settings, "keys", "list", "--json").stdout)
    return {row["kid"]: row["state"] for row in rows}


async def test_rotate_publishes_next_key_then_it_signs(
    client: QuartClient, dealer: Dealer, register: Register, settings: Settings
) -> None:
    """A rotated key is in the JWKS at once, signs only after its delay, and the old key
    is retired yet still verifies its tokens."""
    secret = await register("svc")
    old_kid = dealer.keyset.keys[0].kid
    old_token = await token_for(client, secret)

    result = cli(settings, "keys", "rotate", "--activate-after", "3")
    assert result.returncode == 0, result.stderr
    new_kid = result.stdout.strip()
    assert states(settings) == {old_kid: "active", new_kid: "next"}

    rotated_at = time.monotonic()
    await wait_for(lambda: _has(client, new_kid))  # the watcher picks it up
    # Published but not yet signing.
    if time.monotonic() - rotated_at < 2.5:
        assert jwt.get_unverified_header(await token_for(client, secret))["kid"] == old_kid
    await asyncio.sleep(max(0.0, 3.2 - (time.monotonic() - rotated_at)))
    assert states(settings) == {old_kid: "retired", new_kid: "active"}
    assert jwt.get_unverified_header(await token_for(client, secret))["kid"] == new_kid
    verified = await client.post("/verify_token", form={"access_token": old_token})
    assert verified.status_code == 200


async def _has(client: QuartClient, kid: str) -> bool:
    return kid in await jwks_kids(client)


async def test_rotate_on_an_empty_directory_makes_a_key_that_signs_at_once(
    settings: Settings,
) -> None:
    """With no key at all, `keys rotate` has nothing to wait for: its key is active at
    once (not `next` for a max-age with nothing signing), and a fresh server issues tokens
    with it."""
    rotated = cli(settings, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    kid = rotated.stdout.strip()
    assert "signs in 0 seconds" in rotated.stderr
    assert states(settings) == {kid: "active"}
    app = create_app(settings)
    async with app.test_app():
        dealer: Dealer = app.extensions["tokendealer"]
        secret = generate_secret()
        await dealer.store.add_client(Client("svc", digest_secret(secret)))
        token = await token_for(app.test_client(), secret)
    assert jwt.get_unverified_header(token)["kid"] == kid


async def test_second_rotation_while_one_is_pending_fails_cleanly(settings: Settings) -> None:
    """Two rotations: the second fails with one line and the manifest keeps one successor."""
    generate_key(settings.keys_dir)
    first = cli(settings, "keys", "rotate", "--activate-after", "60")
    second = cli(settings, "keys", "rotate", "--activate-after", "60")
    assert first.returncode == 0
    assert second.returncode != 0
    assert "already pending" in second.stderr and "Traceback" not in second.stderr
    assert sorted(states(settings).values()) == ["active", "next"]


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
    client: QuartClient, dealer: Dealer, register: Register, settings: Settings
) -> None:
    """`keys remove` of a retired key: gone from the JWKS within seconds, its tokens fail."""
    secret = await register("svc")
    old_kid = dealer.keyset.keys[0].kid
    old_token = await token_for(client, secret)
    assert cli(settings, "keys", "rotate", "--activate-after", "0").returncode == 0

    refused = cli(settings, "keys", "remove", states_kid(settings, "active"))
    assert refused.returncode != 0 and "active signing key" in refused.stderr

    removed = cli(settings, "keys", "remove", old_kid)
    assert removed.returncode == 0, removed.stderr
    await wait_for(lambda: _lacks(client, old_kid))
    response = await client.post("/verify_token", form={"access_token": old_token})
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_token"
    assert not (settings.keys_dir / f"{old_kid}.pem").exists()


async def _lacks(client: QuartClient, kid: str) -> bool:
    return kid not in await jwks_kids(client)


def states_kid(settings: Settings, state: str) -> str:
    return next(kid for kid, found in states(settings).items() if found == state)


def test_remove_refuses_the_only_active_key(settings: Settings) -> None:
    """The only active key cannot be removed: the service would have nothing to sign with."""
    kid = generate_key(settings.keys_dir)
    result = cli(settings, "keys", "remove", kid)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert states(settings) == {kid: "active"}


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


def test_prune_cli_reports_kept_keys(settings: Settings) -> None:
    """`keys prune` exits 0, names the retired keys it keeps, and removes them with --force."""
    first = generate_key(settings.keys_dir)
    generate_key(settings.keys_dir)
    kept = cli(settings, "keys", "prune")
    assert kept.returncode == 0 and first in kept.stderr and "--force" in kept.stderr
    assert first in states(settings)
    forced = cli(settings, "keys", "prune", "--force")
    assert forced.returncode == 0 and f"removed {first}" in forced.stdout
    assert first not in states(settings)


def test_keys_list_json_reports_every_field(settings: Settings) -> None:
    """`keys list --json` gives kid, state, alg, bits, created, activate and retired times."""
    first = generate_key(settings.keys_dir)
    assert (
        cli(settings, "keys", "rotate", "--alg", "RS256", "--activate-after", "60").returncode == 0
    )
    rows = {row["kid"]: row for row in json.loads(cli(settings, "keys", "list", "--json").stdout)}
    assert rows[first]["state"] == "active" and rows[first]["retired_at"] is not None
    (nxt,) = [row for kid, row in rows.items() if kid != first]
    assert nxt["state"] == "next" and nxt["alg"] == "RS256" and nxt["bits"] == 2048
    assert set(nxt) >= {"kid", "state", "alg", "bits", "created_at", "activate_at", "retired_at"}


async def test_rs256_key_signs_rs256_tokens(
    client: QuartClient, register: Register, settings: Settings
) -> None:
    """A key generated with --alg RS256 signs RS256 tokens, published with alg RS256."""
    secret = await register("svc")
    assert (
        cli(settings, "keys", "rotate", "--alg", "RS256", "--activate-after", "0").returncode == 0
    )
    await asyncio.sleep(1.3)
    token = await token_for(client, secret)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
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
    ["corrupt", "group-readable", "ec", "short"],
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
    elif fault == "ec":
        _write(bad, _pem(ec.generate_private_key(ec.SECP256R1())))
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
    token = await token_for(client, secret)
    assert (await client.post("/verify_token", form={"access_token": token})).status_code == 200
    bad.unlink()
    assert await dealer.refresh_keys() is True
    assert len(await jwks_kids(client)) == 2


def test_remove_takes_a_kid_that_starts_with_a_dash(settings: Settings) -> None:
    """Key ids are base64url and may begin with '-': `keys remove` reads one as a kid,
    not as an option."""
    generate_key(settings.keys_dir)
    result = cli(settings, "keys", "remove", "-20Y6hs6MEQU")
    assert result.returncode == 1
    assert "no key '-20Y6hs6MEQU'" in result.stderr and "No such option" not in result.stderr


def test_an_existing_open_keys_directory_is_closed_to_others(tmp_path: Path) -> None:
    """A keys directory that already exists with mode 0755 (as ./keys of a checkout) is
    made 0700 when the first key is written into it."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o755)
    keys_dir.chmod(0o755)
    generate_key(keys_dir)
    assert keys_dir.stat().st_mode & 0o777 == 0o700
