"""``tokendealer keys migrate --to database|directory`` and ``keys rekey`` (issue 15), on
SQLite and on PostgreSQL, through the real CLI and apps on each key store.

A keys directory with a retired, an active and a next key moves into the database: an app
on the database store publishes the same keys, signs with the same active key, and
verifies a token an app on the directory store issued before the move; the keys move back
into a fresh directory with the same manifest. Refusals say so in one line and change
nothing; a rekey leaves keys that only the new key-encryption key opens.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.apps import running
from tests.support.cli import CLI, cli_env
from tests.support.environment import QuartClient
from tests.support.tokens import get_token
from tokendealer.keys.keyset import MANIFEST, key_pem, load_keyset
from tokendealer.service.key_migration import open_row, seal_entry
from tokendealer.settings import Settings
from tokendealer.store import store_for
from tokendealer.store.signing_keys import KeyChange, SealedKey

KEK = secrets.token_bytes(32)
NEW_KEK = secrets.token_bytes(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture(name="env")
def _env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The CLI's environment: the test's database (each backend), its keys directory,
    the key-encryption key; TOKENDEALER_KEY_STORE unset (the directory, the default)."""
    return cli_env(tmp_path, database_url=database_url, TOKENDEALER_KEY_ENCRYPTION_KEY=b64(KEK))


@pytest.fixture(name="cli")
def _cli(env: dict[str, str]) -> CLI:
    """The CLI on the directory store, its database created (no key in it)."""
    return CLI(env).create_database()


def settings_of(env: dict[str, str], **changes: Any) -> Settings:
    """The settings an app started with ``env`` runs on (``changes`` applied)."""
    settings = Settings.from_env(env)
    return dataclasses.replace(settings, client_cache_ttl=0.0, access_log=False, **changes)


def three_keys(cli: CLI) -> dict[str, str]:
    """A retired RSA key, an active ES256 key and an EdDSA key due in an hour, made in the
    keys directory with the CLI; their states by kid."""
    retired = cli.ok("keys", "generate").stdout.strip()
    active = cli.ok("keys", "generate", "--alg", "ES256").stdout.strip()
    upcoming = cli.ok("keys", "rotate", "--alg", "EdDSA", "--activate-after", "3600")
    states = {retired: "retired", active: "active", upcoming.stdout.strip(): "next"}
    assert {row["kid"]: row["state"] for row in listed(cli)} == states
    return states


def listed(cli: CLI) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli.ok("keys", "list", "--json").json()
    return rows


def on_database(cli: CLI, kek: bytes = KEK) -> CLI:
    return cli.with_env(TOKENDEALER_KEY_STORE="database", TOKENDEALER_KEY_ENCRYPTION_KEY=b64(kek))


def database_rows(env: dict[str, str]) -> list[SealedKey]:
    async def read() -> list[SealedKey]:
        store = store_for(Settings.from_env(env), log_outages=False)
        await store.open(create=False)
        try:
            return await store.signing_keys()
        finally:
            await store.close()

    return asyncio.run(read())


def directory_files(keys_dir: Path) -> dict[str, bytes]:
    """Every file of a keys directory but its lock, by name, with its bytes."""
    if not keys_dir.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(keys_dir.iterdir()) if p.name != ".lock"}


def manifest_entries(keys_dir: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((keys_dir / MANIFEST).read_bytes())["keys"]
    return sorted(entries, key=lambda entry: entry["kid"])


async def jwks(client: QuartClient) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = (await (await client.get("/.well-known/jwks.json")).get_json())[
        "keys"
    ]
    return sorted(keys, key=lambda key: key["kid"])


def events(cli: CLI, action: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cli.ok("audit", "--action", action, "--json").json()
    return found


# -- migrate --to database, and back --------------------------------------------------------


async def test_the_keys_move_into_the_database_and_sign_as_before(
    cli: CLI, env: dict[str, str], tmp_path: Path
) -> None:
    """After the move, an app on the database store publishes the same keys, signs with
    the same active kid, and verifies the token an app on the directory store issued
    before it; the directory is left as it was, and each key's move is in the trail."""
    states = await asyncio.to_thread(three_keys, cli)
    active = next(kid for kid, state in states.items() if state == "active")
    secret = await asyncio.to_thread(cli.add, "svc", "--scope", "read")
    keys_dir = tmp_path / "keys"

    async with running(settings_of(env)) as on_directory:
        published = await jwks(on_directory)
        before = await get_token(on_directory, "svc", secret)
    assert jwt.get_unverified_header(before)["kid"] == active
    assert {key["kid"] for key in published} == set(states)
    files = directory_files(keys_dir)

    moved = await cli.aok("keys", "migrate", "--to", "database")
    assert moved.stdout.split() == [
        w for kid in sorted_by_activation(states) for w in ("copied", kid)
    ]
    assert "3 keys copied into the database key store" in moved.stderr
    assert f"{keys_dir.resolve()} is left as it is" in moved.stderr
    assert directory_files(keys_dir) == files

    on_db = settings_of(env, key_store="database", key_encryption_key=KEK)
    async with running(on_db) as on_database_store:
        assert await jwks(on_database_store) == published
        after = await get_token(on_database_store, "svc", secret)
        assert jwt.get_unverified_header(after)["kid"] == active
        checked = await on_database_store.post("/verify_token", form={"access_token": before})
        assert checked.status_code == 200, await checked.get_data(as_text=True)
    listing = await asyncio.to_thread(listed, on_database(cli))
    assert listing == await asyncio.to_thread(listed, cli)

    trail = await asyncio.to_thread(events, cli, "key.migrate")
    assert sorted(event["target"] for event in trail) == sorted(f"key:{kid}" for kid in states)
    assert all(event["details"] == {"to": "database"} for event in trail)

    # Again: the database holds these very keys; nothing is changed or recorded.
    rows = await asyncio.to_thread(database_rows, env)
    again = await cli.aok("keys", "migrate", "--to", "database")
    assert again.stdout == ""
    assert "already holds these 3 keys with the same times: nothing changed" in again.stderr
    assert await asyncio.to_thread(database_rows, env) == rows
    assert len(await asyncio.to_thread(events, cli, "key.migrate")) == 3


def sorted_by_activation(states: dict[str, str]) -> list[str]:
    order = {"retired": 0, "active": 1, "next": 2}
    return sorted(states, key=lambda kid: order[states[kid]])


def test_the_keys_move_back_into_a_fresh_directory_with_the_same_manifest(
    cli: CLI, tmp_path: Path
) -> None:
    three_keys(cli)
    cli.ok("keys", "migrate", "--to", "database")
    back_dir = tmp_path / "back"
    back = on_database(cli).with_env(TOKENDEALER_KEYS_DIR=str(back_dir))
    moved = back.ok("keys", "migrate", "--to", "directory")
    assert moved.stdout.count("copied ") == 3
    assert f"3 keys copied into {back_dir.resolve()}" in moved.stderr

    assert manifest_entries(back_dir) == manifest_entries(tmp_path / "keys")
    original = {key.kid: key_pem(key.private_key) for key in load_keyset(tmp_path / "keys").keys}
    copied = {key.kid: key_pem(key.private_key) for key in load_keyset(back_dir).keys}
    assert copied == original
    for path in back_dir.glob("*.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((back_dir / MANIFEST).stat().st_mode) == 0o600
    # The directory store reads them as the database store does.
    assert listed(back.with_env(TOKENDEALER_KEY_STORE="directory")) == listed(on_database(cli))
    trail = events(cli, "key.migrate")
    assert sum(event["details"] == {"to": "directory"} for event in trail) == 3

    files = directory_files(back_dir)
    again = back.ok("keys", "migrate", "--to", "directory")
    assert again.stdout == "" and "already holds these 3 keys" in again.stderr
    assert directory_files(back_dir) == files


# -- refusals -------------------------------------------------------------------------------


def test_migrating_needs_the_key_encryption_key(cli: CLI, tmp_path: Path) -> None:
    three_keys(cli)
    without = cli.with_env(TOKENDEALER_KEY_ENCRYPTION_KEY="")
    for to in ("database", "directory"):
        without.fails("keys", "migrate", "--to", to).assert_one_line_error(
            f"keys migrate --to {to} needs the key-encryption key: set "
            "TOKENDEALER_KEY_ENCRYPTION_KEY"
        )
    assert database_rows(cli.env) == []


def test_a_database_holding_other_keys_is_refused_and_left_alone(
    cli: CLI, env: dict[str, str], tmp_path: Path
) -> None:
    """The database made a key of its own (a replica switched before the move): the move
    is refused, and neither store changes."""
    database = on_database(cli)
    own = database.ok("init").stdout.split("signing key ")[1].split(" ")[0]
    rows = database_rows(env)
    three_keys(cli)
    files = directory_files(tmp_path / "keys")
    cli.fails("keys", "migrate", "--to", "database").assert_one_line_error(
        "the database key store already holds other keys"
    )
    assert database_rows(env) == rows and [row.kid for row in rows] == [own]
    assert directory_files(tmp_path / "keys") == files
    assert events(cli, "key.migrate") == []


def test_the_same_keys_under_another_key_encryption_key_are_refused(
    cli: CLI, env: dict[str, str]
) -> None:
    three_keys(cli)
    cli.ok("keys", "migrate", "--to", "database")
    rows = database_rows(env)
    other = cli.with_env(TOKENDEALER_KEY_ENCRYPTION_KEY=b64(NEW_KEK))
    other.fails("keys", "migrate", "--to", "database").assert_one_line_error(
        "already holds these keys, but signing key"
    )
    assert database_rows(env) == rows


def test_an_empty_or_missing_keys_directory_is_refused(cli: CLI, env: dict[str, str]) -> None:
    missing = Path(env["TOKENDEALER_KEYS_DIR"])
    cli.fails("keys", "migrate", "--to", "database").assert_one_line_error(
        f"{missing} has no manifest.json: no key to copy"
    )
    assert not missing.exists()
    assert database_rows(env) == []


def test_a_directory_holding_other_keys_is_refused_and_left_alone(
    cli: CLI, env: dict[str, str], tmp_path: Path
) -> None:
    database = on_database(cli)
    database.ok("init")  # one key in the database
    three_keys(cli)  # three others in the keys directory
    files = directory_files(tmp_path / "keys")
    database.fails("keys", "migrate", "--to", "directory").assert_one_line_error(
        "manifest.json already names other keys"
    )
    assert directory_files(tmp_path / "keys") == files

    stray_dir = tmp_path / "stray"
    stray_dir.mkdir()
    (stray_dir / "someone.pem").write_bytes(files[next(n for n in files if n.endswith(".pem"))])
    database.with_env(TOKENDEALER_KEYS_DIR=str(stray_dir)).fails(
        "keys", "migrate", "--to", "directory"
    ).assert_one_line_error("holds key files that no manifest names (someone.pem)")
    assert sorted(p.name for p in stray_dir.iterdir() if p.name != ".lock") == ["someone.pem"]
    assert events(cli, "key.migrate") == []


def test_an_empty_database_key_store_is_refused(cli: CLI, tmp_path: Path) -> None:
    on_database(cli).fails("keys", "migrate", "--to", "directory").assert_one_line_error(
        "the database key store holds no key: nothing to copy"
    )
    assert not (tmp_path / "keys").exists()


# -- rekey ----------------------------------------------------------------------------------


@pytest.fixture(name="old_key_file")
def _old_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "old.kek"
    path.write_text(b64(KEK) + "\n")  # as ``base64`` writes it
    return path


async def test_rekey_seals_every_key_under_the_new_key_only(
    cli: CLI, env: dict[str, str], old_key_file: Path
) -> None:
    await asyncio.to_thread(three_keys, cli)
    await cli.aok("keys", "migrate", "--to", "database")
    secret = await asyncio.to_thread(cli.add, "svc")
    before = await asyncio.to_thread(database_rows, env)
    old_listing = await asyncio.to_thread(listed, on_database(cli))

    new = on_database(cli, NEW_KEK)
    rekeyed = await new.aok("keys", "rekey", "--old-key-file", str(old_key_file))
    assert sorted(rekeyed.stdout.split()[1::2]) == sorted(row.kid for row in before)
    assert "3 keys re-encrypted under the current key-encryption key" in rekeyed.stderr

    after = await asyncio.to_thread(database_rows, env)
    assert [(r.kid, r.alg, r.created_at, r.activate_at) for r in after] == [
        (r.kid, r.alg, r.created_at, r.activate_at) for r in before
    ]
    for old_row, new_row in zip(before, after, strict=True):
        assert new_row.sealed != old_row.sealed
        assert open_row(NEW_KEK, new_row) == open_row(KEK, old_row)
    assert await asyncio.to_thread(listed, new) == old_listing

    # The old key opens nothing any more: one line from init and keys list.
    old = on_database(cli, KEK)
    for command in (("init",), ("keys", "list")):
        (await old.afails(*command)).assert_one_line_error("does not open")
    async with running(settings_of(env, key_store="database", key_encryption_key=NEW_KEK)) as app:
        token = await get_token(app, "svc", secret)
        assert jwt.get_unverified_header(token)["kid"] == next(
            row["kid"] for row in old_listing if row["state"] == "active"
        )

    trail = await asyncio.to_thread(events, cli, "key.rekey")
    assert sorted(event["target"] for event in trail) == sorted(f"key:{r.kid}" for r in before)
    assert all(event["details"] == {} for event in trail)

    # A second run finds every key under the new key already, says so, changes nothing.
    again = await new.aok("keys", "rekey", "--old-key-file", str(old_key_file))
    assert again.stdout == ""
    assert "already sealed under the current key-encryption key: nothing changed" in again.stderr
    assert await asyncio.to_thread(database_rows, env) == after
    assert len(await asyncio.to_thread(events, cli, "key.rekey")) == 3


def test_rekey_with_a_wrong_old_key_changes_nothing(
    cli: CLI, env: dict[str, str], tmp_path: Path, old_key_file: Path
) -> None:
    database = on_database(cli)
    database.ok("init")
    database.ok("keys", "rotate", "--alg", "ES256", "--activate-after", "60")
    rows = database_rows(env)
    new = on_database(cli, NEW_KEK)

    wrong = tmp_path / "wrong.kek"
    wrong.write_text(b64(secrets.token_bytes(32)))
    new.fails("keys", "rekey", "--old-key-file", str(wrong)).assert_one_line_error(
        "does not open with the old key-encryption key, nor with the current one: nothing changed"
    )
    # The old key given as the current one: nothing to do, said as an error.
    database.fails("keys", "rekey", "--old-key-file", str(old_key_file)).assert_one_line_error(
        "Invalid value for '--old-key-file': it holds the current key-encryption key"
    )
    not_base64 = tmp_path / "garbage.kek"
    not_base64.write_text("not a key!")
    new.fails("keys", "rekey", "--old-key-file", str(not_base64)).assert_one_line_error(
        f"--old-key-file ({not_base64}) is not base64"
    )
    new.fails("keys", "rekey", "--old-key-file", str(tmp_path / "nowhere")).assert_one_line_error(
        "cannot read it (No such file or directory)"
    )
    on_database(cli).with_env(TOKENDEALER_KEY_ENCRYPTION_KEY="", TOKENDEALER_KEY_STORE="").fails(
        "keys", "rekey", "--old-key-file", str(old_key_file)
    ).assert_one_line_error("keys rekey needs the key-encryption key")

    assert database_rows(env) == rows  # the sealed bytes too
    assert events(cli, "key.rekey") == []
    listed(database)  # still opens with the key it had


def test_rekey_refuses_keys_some_of_which_are_under_the_new_key(
    cli: CLI, env: dict[str, str], old_key_file: Path
) -> None:
    """One key sealed under the new key-encryption key, another under the old: refused
    naming the first, nothing changed."""
    database = on_database(cli)
    database.ok("init")
    database.ok("keys", "rotate", "--alg", "ES256", "--activate-after", "60")
    first, second = database_rows(env)

    async def reseal_first() -> None:
        store = store_for(Settings.from_env(env), log_outages=False)
        await store.open(create=False)
        try:
            pem = open_row(KEK, first)
            resealed = seal_entry(NEW_KEK, first.entry(), pem)
            await store.change_signing_keys(lambda _: KeyChange(None, put=[resealed]))
        finally:
            await store.close()

    asyncio.run(reseal_first())
    rows = database_rows(env)
    on_database(cli, NEW_KEK).fails(
        "keys", "rekey", "--old-key-file", str(old_key_file)
    ).assert_one_line_error(
        f"key {first.kid} is already sealed under the current key-encryption key while key "
        f"{second.kid} is under the old one: nothing changed"
    )
    assert database_rows(env) == rows


def test_rekey_of_an_empty_database_key_store_is_refused(cli: CLI, old_key_file: Path) -> None:
    on_database(cli, NEW_KEK).fails(
        "keys", "rekey", "--old-key-file", str(old_key_file)
    ).assert_one_line_error("the database key store holds no key: nothing to re-encrypt")


# -- nothing in clear -----------------------------------------------------------------------


def test_no_moved_key_is_in_clear_in_the_database(
    cli: CLI, env: dict[str, str], database_url: str, tmp_path: Path, old_key_file: Path
) -> None:
    """The SQLite file (and its journal) holds neither a PEM armour nor any line of the
    keys' base64 bodies nor their DER, after the move and after a rekey."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the bytes of the database file: SQLite's")
    three_keys(cli)
    bodies = []
    for path in (tmp_path / "keys").glob("*.pem"):
        pem = path.read_text()
        lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        assert lines
        bodies.append((lines, base64.b64decode("".join(lines))))
    database_file = Path(database_url.removeprefix("sqlite:///"))

    def assert_nothing_in_clear() -> None:
        data = b"".join(p.read_bytes() for p in database_file.parent.glob(database_file.name + "*"))
        assert b"PRIVATE KEY" not in data and b"-----BEGIN" not in data
        for lines, der in bodies:
            for line in lines:
                assert line.encode() not in data
            assert der not in data and der[-32:] not in data

    cli.ok("keys", "migrate", "--to", "database")
    assert len(database_rows(env)) == 3
    assert_nothing_in_clear()
    on_database(cli, NEW_KEK).ok("keys", "rekey", "--old-key-file", str(old_key_file))
    assert_nothing_in_clear()
    for event in events(cli, "key.migrate") + events(cli, "key.rekey"):
        assert not re.search(r"PRIVATE|BEGIN", json.dumps(event))
