"""Signing keys in the database (issue 15): ``TOKENDEALER_KEY_STORE=database``, each
private key sealed with AES-256-GCM under the key-encryption key, on SQLite and on
PostgreSQL, through the real CLI and the app."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa

from tests.support.apps import add_client, running
from tests.support.cli import CLI
from tests.support.tokens import get_token
from tokendealer.keys import sealing
from tokendealer.protocol.errors import ADMIN_SCOPE
from tokendealer.settings import ConfigError, Settings
from tokendealer.store import StoreUnavailable, store_for
from tokendealer.store.schema import signing_keys

KEK = secrets.token_bytes(32)
OTHER_KEK = secrets.token_bytes(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture(name="db_settings")
def _db_settings(database_url: str, tmp_path: Path) -> Settings:
    """The database key store on each backend; its keys directory is never made."""
    return Settings(
        issuer="https://dealer.test",
        database_url=database_url,
        keys_dir=tmp_path / "no-keys-here",
        client_cache_ttl=0.0,
        access_log=False,
        key_store="database",
        key_encryption_key=KEK,
        key_watch_interval=0.05,
    )


def cli_for(settings: Settings, kek: bytes = KEK) -> CLI:
    return CLI.for_settings(
        settings, TOKENDEALER_KEY_STORE="database", TOKENDEALER_KEY_ENCRYPTION_KEY=b64(kek)
    )


async def rows(settings: Settings) -> list[Any]:
    store = store_for(settings, log_outages=False)
    await store.open(create=False)
    try:
        return await store.signing_keys()
    finally:
        await store.close()


# -- settings -------------------------------------------------------------------------------


def test_the_key_encryption_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    read = Settings.from_env(
        {"TOKENDEALER_KEY_STORE": "database", "TOKENDEALER_KEY_ENCRYPTION_KEY": b64(KEK)}
    )
    assert read.key_store == "database" and read.key_encryption_key == KEK
    path = tmp_path / "kek"
    path.write_text(b64(KEK) + "\n")  # base64's own output ends with a new line
    from_file = Settings.from_env(
        {"TOKENDEALER_KEY_STORE": "database", "TOKENDEALER_KEY_ENCRYPTION_KEY_FILE": str(path)}
    )
    assert from_file.key_encryption_key == KEK
    assert Settings.from_env({}).key_store == "directory"
    assert "key_encryption_key" not in repr(read).split("Settings(")[1].split(")")[0] or (
        b64(KEK) not in repr(read) and str(KEK) not in repr(read)
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOKENDEALER_KEY_STORE": "database"}, "needs TOKENDEALER_KEY_ENCRYPTION_KEY"),
        ({"TOKENDEALER_KEY_STORE": "vault"}, "TOKENDEALER_KEY_STORE must be"),
        ({"TOKENDEALER_KEY_ENCRYPTION_KEY": "not base64!"}, "is not base64"),
        ({"TOKENDEALER_KEY_ENCRYPTION_KEY": b64(b"short")}, "must hold 32 bytes"),
        (
            {
                "TOKENDEALER_KEY_ENCRYPTION_KEY": b64(KEK),
                "TOKENDEALER_KEY_ENCRYPTION_KEY_FILE": "/x",
            },
            "not both",
        ),
        ({"TOKENDEALER_KEY_ENCRYPTION_KEY_FILE": "/nonexistent/kek"}, "cannot read"),
    ],
)
def test_a_bad_key_store_setting_is_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.from_env(env)
    assert "\n" not in str(raised.value)


# -- sealing --------------------------------------------------------------------------------


def test_a_sealed_key_opens_only_with_its_kek_and_its_row() -> None:
    pem = b"-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----\n"
    row = {"kid": "k1", "alg": "RS512", "created_at": 1.0, "activate_at": 2.0}
    sealed = sealing.seal(KEK, pem, **row)
    assert b"PRIVATE KEY" not in sealed and sealing.unseal(KEK, sealed, **row) == pem
    with pytest.raises(sealing.SealError, match="key-encryption key"):
        sealing.unseal(OTHER_KEK, sealed, **row)
    for changed in ({"kid": "k2"}, {"alg": "ES256"}, {"activate_at": 1.5}, {"created_at": 0.0}):
        with pytest.raises(sealing.SealError):
            sealing.unseal(KEK, sealed, **{**row, **changed})
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(sealing.SealError):
        sealing.unseal(KEK, tampered, **row)


# -- the CLI --------------------------------------------------------------------------------


def test_init_makes_the_first_key_in_the_database_never_on_disk(db_settings: Settings) -> None:
    cli = cli_for(db_settings)
    out = cli.ok("init").stdout
    assert "in the database key store" in out
    [row] = asyncio.run(rows(db_settings))
    assert out.split("signing key ")[1].split(" ")[0] == row.kid
    assert not db_settings.keys_dir.exists()
    again = cli.ok("init").stdout
    assert f"signing key {row.kid} active" in again
    assert len(asyncio.run(rows(db_settings))) == 1
    [listed] = cli.ok("keys", "list", "--json").json()
    assert listed["kid"] == row.kid and listed["state"] == "active"


def test_no_private_key_is_in_clear_in_the_database(db_settings: Settings) -> None:
    cli = cli_for(db_settings)
    cli.ok("init")
    cli.ok("keys", "rotate", "--alg", "ES256", "--activate-after", "60")
    found = asyncio.run(rows(db_settings))
    assert len(found) == 2
    for row in found:
        assert b"PRIVATE" not in row.sealed and row.sealed[0] == sealing.VERSION
    if db_settings.database_url.startswith("sqlite"):
        data = Path(db_settings.database_url.removeprefix("sqlite:///")).read_bytes()
        assert b"PRIVATE KEY" not in data and b"BEGIN" not in data


def test_the_lifecycle_follows_the_same_rules(db_settings: Settings) -> None:
    cli = cli_for(db_settings)
    cli.ok("init")
    first = cli.ok("keys", "list", "--json").json()[0]["kid"]
    nxt = cli.ok("keys", "rotate", "--activate-after", "3600").stdout.strip()
    # One rotation pending at a time; generate refused while it waits.
    cli.fails("keys", "rotate", "--activate-after", "60").assert_one_line_error(
        "a rotation is already pending"
    )
    cli.fails("keys", "generate").assert_one_line_error("a rotation is already pending")
    states = {row["kid"]: row["state"] for row in cli.ok("keys", "list", "--json").json()}
    assert states == {first: "active", nxt: "next"}
    # The emergency rotation replaces the pending key and signs at once.
    emergency = cli.ok("keys", "rotate", "--activate-after", "0")
    now = emergency.stdout.strip()
    assert nxt in emergency.stderr
    states = {row["kid"]: row["state"] for row in cli.ok("keys", "list", "--json").json()}
    assert states == {first: "retired", now: "active"}
    cli.fails("keys", "remove", now).assert_one_line_error("is the active signing key")
    cli.fails("keys", "remove", "nope").assert_one_line_error("no key 'nope'")
    cli.ok("keys", "prune")  # the retired key's tokens may still live: kept
    assert {row["kid"] for row in cli.ok("keys", "list", "--json").json()} == {first, now}
    cli.ok("keys", "prune", "--force")
    assert [row["kid"] for row in cli.ok("keys", "list", "--json").json()] == [now]
    events = [e["action"] for e in cli.ok("audit", "--json").json()]
    assert {"key.rotate", "key.prune"} <= set(events)


def test_a_wrong_key_encryption_key_is_one_line_and_changes_nothing(
    db_settings: Settings,
) -> None:
    cli_for(db_settings).ok("init")
    before = asyncio.run(rows(db_settings))
    wrong = cli_for(db_settings, OTHER_KEK)
    for command in (("init",), ("keys", "list")):
        wrong.fails(*command).assert_one_line_error("does not open")
    wrong.fails("keys", "rotate", "--activate-after", "0")
    assert asyncio.run(rows(db_settings)) == before


def test_a_swapped_row_does_not_open(db_settings: Settings) -> None:
    """Whoever can write to the database without the KEK cannot choose the signing key:
    a retired key's sealed PEM moved into the active key's row fails to open."""
    cli = cli_for(db_settings)
    cli.ok("init")
    cli.ok("keys", "rotate", "--activate-after", "0")
    old, new = asyncio.run(rows(db_settings))

    async def swap() -> None:
        engine_store = store_for(db_settings, log_outages=False)
        await engine_store.open(create=False)
        try:
            engine = engine_store._engine  # type: ignore[attr-defined]
            async with engine.begin() as conn:
                await conn.execute(
                    sa.update(signing_keys)
                    .where(signing_keys.c.kid == new.kid)
                    .values(sealed=old.sealed)
                )
        finally:
            await engine_store.close()

    asyncio.run(swap())
    cli.fails("keys", "list").assert_one_line_error(f"signing key {new.kid} does not open")


# -- the app --------------------------------------------------------------------------------


async def test_replicas_share_their_keys_through_the_database(db_settings: Settings) -> None:
    """Two apps (replicas) on one database and no keys directory: a token from one
    verifies at the other, and a rotation reaches both within the key watch interval."""
    await asyncio.to_thread(cli_for(db_settings).ok, "init")
    async with running(db_settings) as one, running(db_settings) as other:
        dealer = one.app.extensions["tokendealer"]  # type: ignore[attr-defined]
        secret = await add_client(dealer, "svc", scopes=("read",))
        token = await get_token(one, "svc", secret)
        checked = await other.post("/verify_token", form={"access_token": token})
        assert checked.status_code == 200
        rotated = await asyncio.to_thread(
            lambda: cli_for(db_settings).ok("keys", "rotate", "--activate-after", "0")
        )
        kid = rotated.stdout.strip()
        deadline = time.monotonic() + 5
        while True:
            jwks = await (await other.get("/.well-known/jwks.json")).get_json()
            if kid in {key["kid"] for key in jwks["keys"]}:
                break
            assert time.monotonic() < deadline, "the rotation did not reach the other replica"
            await asyncio.sleep(0.05)
        fresh = await get_token(other, "svc", secret)
        assert jwt.get_unverified_header(fresh)["kid"] == kid
        assert (await one.post("/verify_token", form={"access_token": fresh})).status_code == 200
        assert (await one.post("/verify_token", form={"access_token": token})).status_code == 200
        # Console sessions too: one secret, derived from the KEK, on every replica.
        assert one.app.secret_key == other.app.secret_key  # type: ignore[attr-defined]
        assert len(str(one.app.secret_key)) >= 32  # type: ignore[attr-defined]
    assert not db_settings.keys_dir.exists()


async def test_workers_starting_together_make_one_first_key(db_settings: Settings) -> None:
    await asyncio.to_thread(cli_for(db_settings).ok, "init")  # the schema; keys emptied next

    async def empty() -> None:
        store = store_for(db_settings, log_outages=False)
        await store.open(create=False)
        try:
            engine = store._engine  # type: ignore[attr-defined]
            async with engine.begin() as conn:
                await conn.execute(sa.delete(signing_keys))
        finally:
            await store.close()

    await empty()
    starts = [running(db_settings) for _ in range(3)]
    clients = [await start.__aenter__() for start in starts]
    try:
        kids = {
            client.app.extensions["tokendealer"].keyset.active().kid  # type: ignore[attr-defined]
            for client in clients
        }
    finally:
        for start in reversed(starts):
            await start.__aexit__(None, None, None)
    assert len(kids) == 1
    assert len(await rows(db_settings)) == 1


async def test_the_database_down_at_start_is_503_then_keys_load(db_settings: Settings) -> None:
    """A worker whose database does not answer when it starts has no keys yet: a token
    request is a 503 with Retry-After, not a 500, and the keys load once it answers."""
    await asyncio.to_thread(cli_for(db_settings).ok, "init")
    settings = dataclasses.replace(db_settings, database_timeout=0.5)
    async with running(settings) as client:
        dealer = client.app.extensions["tokendealer"]  # type: ignore[attr-defined]
        secret = await add_client(dealer, "svc")
        dealer.keys_loaded = False
        dealer.use_keyset(type(dealer.keyset)(()), None)
        response = await client.post(
            "/oauth/token", form={"grant_type": "client_credentials"}, auth=("svc", secret)
        )
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert await dealer.refresh_keys()
        assert (await get_token(client, "svc", secret)).count(".") == 2


async def test_the_admin_api_changes_the_database_keys(db_settings: Settings) -> None:
    """The admin API (and so the console, through the same admin layer) works on the
    database key store: a routine rotation is published at once, a second is 409, the
    emergency one signs at once."""
    await asyncio.to_thread(cli_for(db_settings).ok, "init")
    async with running(db_settings) as client:
        dealer = client.app.extensions["tokendealer"]  # type: ignore[attr-defined]
        issuer = db_settings.issuer
        secret = await add_client(dealer, "ops", scopes=(ADMIN_SCOPE,), audiences=(issuer,))
        token = await get_token(client, "ops", secret, scope=ADMIN_SCOPE, audience=issuer)
        headers = {"Authorization": f"Bearer {token}"}
        api = "/admin/api/v1"

        rotated = await client.post(
            api + "/keys/rotate", json={"activate_after": 3600}, headers=headers
        )
        assert rotated.status_code == 200
        pending = (await rotated.get_json())["kid"]
        jwks = await (await client.get("/.well-known/jwks.json")).get_json()
        assert pending in {key["kid"] for key in jwks["keys"]}
        again = await client.post(api + "/keys/rotate", json={}, headers=headers)
        assert again.status_code == 409
        emergency = await client.post(
            api + "/keys/rotate", json={"activate_after": 0}, headers=headers
        )
        body = await emergency.get_json()
        assert emergency.status_code == 200 and body["replaced"] == [pending]
        listed = await (await client.get(api + "/keys", headers=headers)).get_json()
        assert {key["kid"]: key["state"] for key in listed}[body["kid"]] == "active"
        fresh = await get_token(client, "ops", secret, scope=ADMIN_SCOPE, audience=issuer)
        assert jwt.get_unverified_header(fresh)["kid"] == body["kid"]
    assert {row.kid for row in await rows(db_settings)} >= {body["kid"]}
    assert not db_settings.keys_dir.exists()


async def _insert_junk(settings: Settings) -> None:
    """A row written by someone without the key-encryption key."""
    store = store_for(settings, log_outages=False)
    await store.open(create=False)
    try:
        engine = store._engine  # type: ignore[attr-defined]
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(signing_keys).values(
                    kid="junk", alg="RS512", created_at=1.0, activate_at=1.0, sealed=b"\x01" * 40
                )
            )
    finally:
        await store.close()


def test_a_row_that_does_not_open_can_be_removed(db_settings: Settings) -> None:
    """A junk row blocks every change (no key is sealed beside one that does not open)
    but its own removal, which the other rows' opening proves safe."""
    cli = cli_for(db_settings)
    cli.ok("init")
    asyncio.run(_insert_junk(db_settings))
    cli.fails("keys", "rotate", "--activate-after", "0").assert_one_line_error("junk")
    cli.ok("keys", "remove", "junk")
    assert [row.kid for row in asyncio.run(rows(db_settings))] != ["junk"]
    assert "junk" not in {row.kid for row in asyncio.run(rows(db_settings))}
    cli.ok("keys", "rotate", "--activate-after", "0")


async def test_no_empty_key_set_is_served_before_the_keys_load(db_settings: Settings) -> None:
    """A worker whose keys are not loaded yet answers the key set, the metadata and a
    verification 503 (an empty set cached downstream would fail every valid token), and
    a key set emptied under it keeps the last good one."""
    await asyncio.to_thread(cli_for(db_settings).ok, "init")
    async with running(db_settings) as client:
        dealer = client.app.extensions["tokendealer"]  # type: ignore[attr-defined]
        secret = await add_client(dealer, "svc")
        token = await get_token(client, "svc", secret)
        good = dealer.keyset
        dealer.keys_loaded = False
        dealer.use_keyset(type(good)(()), None)
        for path in ("/.well-known/jwks.json", "/.well-known/oauth-authorization-server"):
            response = await client.get(path)
            assert response.status_code == 503 and "Retry-After" in response.headers
        # The database still away: the verification cannot load the keys, 503.
        source = dealer.key_source

        class Away:
            async def stamp(self) -> object:
                raise StoreUnavailable("database unavailable")

        dealer.key_source = Away()
        checked = await client.post("/verify_token", form={"access_token": token})
        assert checked.status_code == 503 and "Retry-After" in checked.headers
        dealer.key_source = source
        checked = await client.post("/verify_token", form={"access_token": token})
        # Back: not found among none, the verification refreshes and loads them.
        assert checked.status_code == 200 and dealer.keys_loaded
        assert (await client.post("/verify_token", form={"access_token": token})).status_code == 200

        async def empty() -> None:
            store = store_for(db_settings, log_outages=False)
            await store.open(create=False)
            try:
                async with store._engine.begin() as conn:  # type: ignore[attr-defined]
                    await conn.execute(sa.delete(signing_keys))
            finally:
                await store.close()

        await empty()
        assert not await dealer.refresh_keys()
        assert dealer.keyset.keys == good.keys
        assert (await get_token(client, "svc", secret)).count(".") == 2
