"""``tokendealer admins ...``: administrator accounts from the CLI.

Commands run in process through the console entry point (``tests.support.cli``); what they
stored is then read from the store itself: the hash, and the audit trail. One test runs the
installed console script, to show the password read from a pipe is never echoed.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import CLI, Result, cli_env
from tokendealer.admin import accounts
from tokendealer.protocol.admins import Admin
from tokendealer.protocol.audit import AuditEvent
from tokendealer.settings import Settings
from tokendealer.store import SQLStore

ACTOR = f"cli:{getpass.getuser()}"
PASSWORD = "correct horse battery"
OTHER = "  another pass phrase  "


def _open(cli: CLI) -> SQLStore:
    return SQLStore(Settings.from_env(cli.env).sqlalchemy_url)


async def _read(cli: CLI) -> tuple[dict[str, Admin], list[AuditEvent]]:
    store = _open(cli)
    await store.open()
    try:
        found = {admin.name: admin for admin in await store.list_admins()}
        return found, list(await store.audit_events())
    finally:
        await store.close()


def stored(cli: CLI) -> tuple[dict[str, Admin], list[AuditEvent]]:
    """The accounts in the CLI's store, and its audit trail, newest first."""
    return asyncio.run(_read(cli))


def signs_in(cli: CLI, name: str, password: str) -> bool:
    async def verify() -> bool:
        store = _open(cli)
        await store.open()
        try:
            return await accounts.verify(store, name, password) is not None
        finally:
            await store.close()

    return asyncio.run(verify())


@pytest.fixture(name="cli")
def _cli(tmp_path: Path, database_url: str) -> CLI:
    """The CLI on a database that exists (management commands never create one)."""
    env = cli_env(tmp_path, database_url=database_url)
    store = SQLStore(Settings.from_env(env).sqlalchemy_url)

    async def create() -> None:
        await store.open()
        await store.close()

    asyncio.run(create())
    return CLI(env, cwd=tmp_path)


def _printed(*results: Result) -> str:
    return "".join(result.stdout + result.stderr for result in results)


def test_add_list_set_password_remove(cli: CLI) -> None:
    added = cli.ok("admins", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    assert added.stdout == "added admin alice\n"
    admins, _ = stored(cli)
    hashed = admins["alice"].password_hash
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed

    listed = cli.ok("admins", "list", "--json")
    assert listed.json() == [
        {
            "name": "alice",
            "created_at": listed.json()[0]["created_at"],
            "password_changed_at": listed.json()[0]["created_at"],
        }
    ]
    assert listed.json()[0]["created_at"].endswith("+00:00")
    text = cli.ok("admins", "list").stdout.splitlines()
    assert text[0].split("\t") == ["name", "created_at", "password_changed_at"]
    assert text[1].split("\t")[0] == "alice" and len(text) == 2

    # set-password keeps what --password-stdin reads whole, spaces too: only the newline goes
    changed = cli.ok("admins", "set-password", "alice", "--password-stdin", input=OTHER + "\r\n")
    assert signs_in(cli, "alice", OTHER)
    assert not signs_in(cli, "alice", OTHER.strip())
    assert not signs_in(cli, "alice", PASSWORD)

    removed = cli.ok("admins", "remove", "alice")  # the last one: allowed
    assert removed.stdout == "removed admin alice\n"
    assert cli.ok("admins", "list", "--json").json() == []
    assert cli.ok("admins", "list").stdout.splitlines() == ["name\tcreated_at\tpassword_changed_at"]

    admins, events = stored(cli)
    assert admins == {}
    changes = [(e.actor, e.action, e.target) for e in events if e.actor.startswith("cli:")]
    assert changes == [
        (ACTOR, "admin.remove", "admin:alice"),
        (ACTOR, "admin.set_password", "admin:alice"),
        (ACTOR, "admin.create", "admin:alice"),
    ]
    assert all(e.details == {} for e in events if e.actor.startswith("cli:"))
    everything = _printed(added, listed, changed, removed) + json.dumps([e.details for e in events])
    for secret in (PASSWORD, OTHER.strip(), hashed):
        assert secret not in everything


def test_add_prompts_twice_without_echo(cli: CLI) -> None:
    result = cli.ok("admins", "add", "bob", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert "Password" in result.stdout and "Repeat" in result.stdout
    assert PASSWORD not in _printed(result)
    assert signs_in(cli, "bob", PASSWORD)
    changed = cli.ok("admins", "set-password", "bob", input=f"{OTHER}\n{OTHER}\n")
    assert OTHER.strip() not in _printed(changed)
    assert signs_in(cli, "bob", OTHER)


def test_prompts_that_differ_store_nothing(cli: CLI) -> None:
    """click asks again after a mismatch; at the end of the input the command gives up."""
    result = cli.fails("admins", "add", "bob", input=f"{PASSWORD}\n{OTHER}\n")
    assert "do not match" in result.stdout
    assert result.stderr == "Aborted!\n"
    assert PASSWORD not in _printed(result) and OTHER.strip() not in _printed(result)
    admins, events = stored(cli)
    assert admins == {} and events == []


def test_short_password_is_one_line_and_stores_nothing(cli: CLI) -> None:
    cli.fails(
        "admins", "add", "bob", "--password-stdin", input="elevenchars\n"
    ).assert_one_line_error("at least 12 characters")
    cli.fails("admins", "add", "bob", input="short\nshort\n").assert_one_line_error(
        "at least 12 characters"
    )
    cli.fails("admins", "add", "bob", "--password-stdin", input="").assert_one_line_error(
        "at least 12 characters"
    )
    admins, events = stored(cli)
    assert admins == {} and events == []


def test_refused_changes_are_one_line_and_change_nothing(cli: CLI) -> None:
    cli.ok("admins", "add", "alice", "--password-stdin", input=PASSWORD)
    before = stored(cli)

    duplicate = cli.fails("admins", "add", "alice", "--password-stdin", input=OTHER)
    duplicate.assert_one_line_error("admin 'alice' already exists")
    cli.fails("admins", "remove", "carol").assert_one_line_error("no admin 'carol'")
    cli.fails(
        "admins", "set-password", "carol", "--password-stdin", input=PASSWORD
    ).assert_one_line_error("no admin 'carol'")
    cli.fails(
        "admins", "set-password", "alice", "--password-stdin", input="tooshort"
    ).assert_one_line_error("at least 12 characters")
    # A bad name is refused before any password is asked for.
    refused = cli.fails("admins", "add", "no spaces", input=f"{PASSWORD}\n{PASSWORD}\n")
    refused.assert_one_line_error("admin name")
    assert "Password" not in refused.stdout

    assert stored(cli) == before
    assert signs_in(cli, "alice", PASSWORD)
    assert OTHER.strip() not in _printed(duplicate)


def test_every_command_and_option_has_help(cli: CLI) -> None:
    group = cli.ok("admins", "-h").stdout
    for command in ("add", "list", "remove", "set-password"):
        assert command in group
        shown = cli.ok("admins", command, "-h").stdout
        assert shown.startswith("Usage: tokendealer admins " + command)
        lines = shown.splitlines()
        options = [line for line in lines if line.strip().startswith("--")]
        for line in options:  # each option line carries its help after the flag
            assert len(line.split(None, 1)) == 2, line
        if command in ("add", "set-password"):
            assert any("--password-stdin" in line for line in options)
    assert "--json" in cli.ok("admins", "list", "-h").stdout
    top = cli.ok("-h").stdout
    assert "admins" in top


def test_console_script_reads_the_password_from_a_pipe(tmp_path: Path, cli: CLI) -> None:
    """The installed script with a real pipe on stdin: one result line, no prompt, no
    password in its output."""
    script = CLI(cli.env, cwd=tmp_path, script=True)
    result = script.ok("admins", "add", "ops", "--password-stdin", input=PASSWORD + "\n")
    assert result.stdout == "added admin ops\n"
    assert result.stderr == ""
    assert signs_in(cli, "ops", PASSWORD)
    listed: Any = script.ok("admins", "list", "--json").json()
    assert [entry["name"] for entry in listed] == ["ops"]
    assert "password_hash" not in json.dumps(listed) and "$argon2" not in json.dumps(listed)
