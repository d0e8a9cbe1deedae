"""A database of the previous release, upgraded (issue 15, "Schema migrations").

``tests/fixtures/release-v5.sqlite3`` was made by the release of commit b196fd5 (schema
version 5) through its own CLI and app (``tests/fixtures/make_release_v5.py``): clients of
every kind (a client_secret client with its whole policy, a disabled one, one in the middle
of a secret rotation, private_key_jwt clients with a key file and with a key URL, federated
clients bound to a trust), a trust, an administrator, a revoked token, and the audit
trail of all of it; ``release-v5.json`` lists what it holds. ``tokendealer init`` and
``tokendealer serve`` of this code bring it to the current schema (``SCHEMA_VERSION``,
one version per entry of ``MIGRATIONS``), after which everything is still there and
works: what is asserted is this code's view of the old records, never a version number.

The release's signing keys lived in its keys directory and are not in the fixture (no
private key is committed): the upgraded service makes a key of its own, so tokens the
release signed no longer verify anyway, and the revoked token is checked in the store's
revocation list instead.

SQLite only: there is no PostgreSQL database of the release to upgrade (a dump of one
would be tied to the server's version); the migrations run on PostgreSQL too, from
earlier versions, in tests/unit/test_store.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import leaks
from tests.support.cli import CLI, cli_env
from tests.support.console import Console
from tests.support.environment import ISSUER
from tests.support.servers import run_server
from tests.support.tokens import get_token, request_token, unverified, verify_status
from tokendealer.http import create_app
from tokendealer.settings import Settings
from tokendealer.store import SQLStore, schema

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RELEASE_DATABASE = FIXTURES / "release-v5.sqlite3"
RELEASE: dict[str, Any] = json.loads((FIXTURES / "release-v5.json").read_text())

#: What a client was registered with and what happened to it, as ``clients show --json``
#: reports it: the upgrade keeps every one (a field the release did not report for a
#: client, such as ``trust`` for a client_secret client, is not compared).
CLIENT_FIELDS = (
    "client_id",
    "auth_method",
    "scopes",
    "audiences",
    "ttl",
    "description",
    "claims",
    "rate_limit",
    "rate_limit_mode",
    "disabled",
    "jwks",
    "jwks_uri",
    "trust",
    "subject",
    "subject_pattern",
    "created_at",
    "previous_secret_valid_until",
    "last_token_at",
    "early_token_requests",
)

for _value in (
    *RELEASE["secrets"].values(),
    RELEASE["rotated"]["secret"],
    RELEASE["rotated"]["previous_secret"],
    RELEASE["revoked"]["token"],
    RELEASE["admin"]["password"],
):
    leaks.remember(_value)


def _copy(directory: Path) -> Path:
    """A copy of the release's database, ``td.db`` in ``directory`` (where ``cli_env``
    and ``run_server`` look for it)."""
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "td.db"
    shutil.copyfile(RELEASE_DATABASE, database)
    return database


def _version(database: Path) -> int:
    with closing(sqlite3.connect(database)) as conn:
        rows = conn.execute("SELECT version FROM tokendealer_schema_version").fetchall()
    assert len(rows) == 1, rows
    return int(rows[0][0])


def _columns(database: Path) -> dict[str, set[str]]:
    with closing(sqlite3.connect(database)) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return {
            table: {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
            for table in tables
        }


def _contents(database: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    with closing(sqlite3.connect(database)) as conn:
        return {
            table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)  # noqa: S608
            for table in _columns(database)
        }


def _upgraded(directory: Path) -> tuple[CLI, Path]:
    """The release's database in ``directory``, upgraded by ``tokendealer init``."""
    database = _copy(directory)
    assert _version(database) == RELEASE["schema_version"] <= schema.SCHEMA_VERSION
    cli = CLI(cli_env(directory), cwd=directory)
    result = cli.ok("init")
    assert result.stdout.startswith(f"database sqlite:///{database} ready; "), result.stdout
    return cli, database


def _release_fields(client: dict[str, Any]) -> dict[str, Any]:
    return {name: client[name] for name in CLIENT_FIELDS if name in client}


def _current_fields(client: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    return {name: client.get(name) for name in like}


async def _is_revoked(database: Path, jti: str) -> bool:
    store = SQLStore(Settings(database_url=f"sqlite:///{database}").sqlalchemy_url)
    await store.open()
    try:
        return await store.is_revoked(jti)
    finally:
        await store.close()


def test_init_upgrades_to_the_current_schema(tmp_path: Path) -> None:
    """``init`` migrates the release's database to this code's version, one per entry
    of MIGRATIONS, and it then has every table and column the code declares."""
    _, database = _upgraded(tmp_path)
    assert _version(database) == schema.SCHEMA_VERSION == len(schema.MIGRATIONS)
    found = _columns(database)
    for table in schema.metadata.sorted_tables:
        assert table.name in found, f"no table {table.name} after the upgrade"
        missing = {column.name for column in table.columns} - found[table.name]
        assert not missing, f"{table.name} lacks {sorted(missing)} after the upgrade"


def test_init_keeps_clients_trusts_admins_revocations_and_audit(tmp_path: Path) -> None:
    """After ``init``, the CLI of this code lists every client of the release with its
    policy and state, the trust, the administrator, the revoked token and the audit
    trail, entry for entry."""
    cli, database = _upgraded(tmp_path)
    release = RELEASE["clients"]

    listed = {client["client_id"]: client for client in cli.listing()}
    assert sorted(listed) == sorted(release)
    for client_id, was in release.items():
        expected = _release_fields(was)
        shown = cli.ok("clients", "show", client_id, "--json").json()
        assert _current_fields(shown, expected) == expected, client_id
        in_list = {name: value for name, value in expected.items() if name in listed[client_id]}
        assert _current_fields(listed[client_id], in_list) == in_list, client_id
    # Of every kind, as the fixture promises.
    kinds = {(was["auth_method"], was["disabled"]) for was in release.values()}
    assert kinds >= {
        ("client_secret", False),
        ("client_secret", True),
        ("private_key_jwt", False),
        ("federated", False),
    }

    assert cli.ok("trust", "list", "--json").json() == RELEASE["trusts"]
    admins = [admin["name"] for admin in cli.ok("admins", "list", "--json").json()]
    assert admins == [RELEASE["admin"]["name"]]

    # Newest first: whatever the upgrade recorded comes before the release's entries.
    trail = cli.ok("audit", "--json", "--limit", "1000").json()
    old = RELEASE["audit"]
    assert len(trail) >= len(old) and trail[len(trail) - len(old) :] == old

    # The revocation is in the store (the token's signing key is the release's, gone).
    assert asyncio.run(_is_revoked(database, RELEASE["revoked"]["jti"]))


def test_a_second_init_changes_nothing(tmp_path: Path) -> None:
    """``init`` on the upgraded database: the same version, every row as it was."""
    cli, database = _upgraded(tmp_path)
    before = _contents(database)
    manifest = (tmp_path / "keys" / "manifest.json").read_bytes()
    result = cli.ok("init")
    assert " ready; signing key " in result.stdout and " active in " in result.stdout
    assert _version(database) == schema.SCHEMA_VERSION
    assert _contents(database) == before
    assert (tmp_path / "keys" / "manifest.json").read_bytes() == manifest


async def test_the_upgraded_database_serves(tmp_path: Path) -> None:
    """The app of this code on the upgraded database: the release's clients get tokens
    with their policy and claims (the rotated client with its new secret, and with the
    previous one while the grace lasts), the disabled client is refused, the revocation
    stands, and the release's administrator signs in to the console."""
    await asyncio.to_thread(_upgraded, tmp_path)
    settings = Settings(
        issuer=RELEASE["issuer"],
        database_url=f"sqlite:///{tmp_path / 'td.db'}",
        keys_dir=tmp_path / "keys",
        client_cache_ttl=0.0,
        access_log=False,
    )
    assert settings.issuer == ISSUER
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        store = app.extensions["tokendealer"].store

        billing = RELEASE["clients"]["billing"]
        token = await get_token(client, "billing", RELEASE["secrets"]["billing"])
        _, claims = unverified(token)
        assert claims["exp"] - claims["iat"] == billing["ttl"]
        assert {name: claims.get(name) for name in billing["claims"]} == billing["claims"]
        assert set(claims["scope"].split()) == set(billing["scopes"])
        assert await verify_status(client, token) == 200

        rotated = RELEASE["rotated"]
        await get_token(client, rotated["client_id"], rotated["secret"])
        until = RELEASE["clients"][rotated["client_id"]]["previous_secret_valid_until"]
        in_grace = time.time() < datetime.fromisoformat(until).timestamp()
        previous = await request_token(client, rotated["client_id"], rotated["previous_secret"])
        assert previous.status_code == (200 if in_grace else 401)
        record = await store.get_client(rotated["client_id"])
        assert record.previous_secret_digest
        assert record.previous_expires_at == pytest.approx(
            datetime.fromisoformat(until).timestamp(), abs=1
        )

        refused = await request_token(client, "retired", RELEASE["secrets"]["retired"])
        assert refused.status_code == 401
        assert (await refused.get_json())["error"] == "invalid_client"

        revoked = RELEASE["revoked"]
        assert await store.is_revoked(revoked["jti"])
        assert await verify_status(client, revoked["token"]) == 400

        admin = RELEASE["admin"]
        console = Console(app)
        signed_in = await console.sign_in(admin["name"], admin["password"])
        assert signed_in.status == 303 and signed_in.location == "/admin/"
        page = await console.get("/admin/clients")
        assert page.status == 200
        for client_id in RELEASE["clients"]:
            assert client_id in page


def test_serve_upgrades_the_database(tmp_path: Path) -> None:
    """``tokendealer serve`` on the release's database migrates it before it answers,
    then issues a token to a client of the release."""
    database = _copy(tmp_path / "serve")
    env = {"TOKENDEALER_DATABASE_URL": f"sqlite:///{database}"}
    rotated = RELEASE["rotated"]
    with run_server(tmp_path / "serve", env=env) as server:
        assert _version(database) == schema.SCHEMA_VERSION
        token = server.token(rotated["client_id"], rotated["secret"])
        _, claims = unverified(token)
        assert claims["sub"] == rotated["client_id"]
        listed = server.cli("clients", "list", "--json").json()
        assert sorted(client["client_id"] for client in listed) == sorted(RELEASE["clients"])
    # A service purges revocations of expired tokens only.
    revoked = RELEASE["revoked"]
    still = asyncio.run(_is_revoked(database, revoked["jti"]))
    assert still or revoked["exp"] < time.time()
