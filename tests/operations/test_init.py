"""Where the database comes from: only ``serve`` and ``tokendealer init`` create one.

A management command pointed at a SQLite path with nothing there (a typo, a relative path
run from another directory, a forgotten ``TOKENDEALER_DATABASE_URL``) used to create a new
empty database of its own and report success, on a store the service never reads. Now it
fails with one line naming the path and the variable, and creates nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.cli import CLI, cli_env
from tests.support.environment import POSTGRES_URL
from tokendealer.keys.keyset import load_keyset

#: Management commands that read or write the database, with arguments that would pass.
STORE_COMMANDS = {
    "clients add": ("clients", "add", "svc"),
    "clients list": ("clients", "list"),
    "clients show": ("clients", "show", "svc"),
    "clients rotate-secret": ("clients", "rotate-secret", "svc"),
    "clients disable": ("clients", "disable", "svc"),
    "clients enable": ("clients", "enable", "svc"),
    "clients remove": ("clients", "remove", "svc"),
    "keys prune": ("keys", "prune"),
}


def _created(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.rglob("*"))


@pytest.mark.parametrize("args", STORE_COMMANDS.values(), ids=STORE_COMMANDS.keys())
def test_management_command_without_database_fails_and_creates_none(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """No database at the configured SQLite path: one ``Error:`` line naming the path and
    TOKENDEALER_DATABASE_URL, a non-zero exit, and no file (nor ``-wal``) left behind."""
    database = tmp_path / "td.db"
    result = CLI(cli_env(tmp_path), cwd=tmp_path).run(*args)
    result.assert_one_line_error(f"no database at {database}")
    assert "TOKENDEALER_DATABASE_URL" in result.stderr and "tokendealer init" in result.stderr
    assert _created(tmp_path) == []


def test_relative_database_path_is_named_absolute(tmp_path: Path) -> None:
    """A relative SQLite path resolves against the working directory; the error names the
    absolute path, so the operator sees which directory the command ran in."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cli = CLI(cli_env(tmp_path, database_url="sqlite:///td.db"), cwd=elsewhere)
    cli.fails("clients", "list").assert_one_line_error(f"no database at {elsewhere / 'td.db'}")
    assert _created(elsewhere) == []


def test_init_creates_database_and_first_key_once(tmp_path: Path) -> None:
    """``init`` makes the database (0600, migrated: the commands use it at once) and the
    first signing key, and prints one line saying so; run again it changes nothing and its
    one line says what it found."""
    cli = CLI(cli_env(tmp_path), cwd=tmp_path)
    database, keys_dir = tmp_path / "td.db", (tmp_path / "keys").resolve()

    first = cli.ok("init")
    (kid,) = [key.kid for key in load_keyset(keys_dir).keys]
    assert first.stdout == (
        f"database sqlite:///{database} created; signing key {kid} created in {keys_dir}\n"
    )
    assert first.stderr == ""
    assert database.stat().st_mode & 0o777 == 0o600
    assert cli.ok("clients", "list", "--json").json() == []

    manifest = (keys_dir / "manifest.json").read_bytes()
    second = cli.ok("init")
    assert second.stdout == (
        f"database sqlite:///{database} ready; signing key {kid} active in {keys_dir}\n"
    )
    assert (keys_dir / "manifest.json").read_bytes() == manifest
    assert [key.kid for key in load_keyset(keys_dir).keys] == [kid]


def test_init_keeps_existing_clients_and_keys(tmp_path: Path) -> None:
    """``init`` on a store in use keeps its clients and its keys: the secret printed before
    still belongs to the one registered client, and no key is added."""
    cli = CLI(cli_env(tmp_path), cwd=tmp_path)
    cli.ok("init")
    cli.add("svc", "--scope", "read")
    cli.ok("keys", "rotate", "--activate-after", "0")
    kids = sorted(key.kid for key in load_keyset(tmp_path / "keys").keys)
    cli.ok("init")
    assert [client["client_id"] for client in cli.listing()] == ["svc"]
    assert sorted(key.kid for key in load_keyset(tmp_path / "keys").keys) == kids


def test_init_on_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    """A SQLite path in a directory that does not exist: init cannot create the file and
    says so in one line, and makes no key either (the store comes first)."""
    url = f"sqlite:///{tmp_path / 'missing' / 'td.db'}"
    cli = CLI(cli_env(tmp_path, database_url=url), cwd=tmp_path)
    cli.fails("init").assert_one_line_error("database unavailable")
    assert not (tmp_path / "keys").exists()


@pytest.mark.usefixtures("postgres_url")  # the server is reachable (or the test skips)
def test_postgres_database_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    """PostgreSQL: neither a management command nor ``init`` creates a database; the
    server's refusal is the one line, naming the database."""
    base = POSTGRES_URL.rpartition("/")[0]
    url = f"{base}/tokendealer_absent_{os.getpid()}"
    cli = CLI(cli_env(tmp_path, database_url=url), cwd=tmp_path)
    for args in (("clients", "list"), ("init",)):
        result = cli.fails(*args)
        result.assert_one_line_error("does not exist")
        assert re.search(rf'database "tokendealer_absent_{os.getpid()}"', result.stderr)
