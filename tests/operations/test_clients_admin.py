"""Editing clients from the CLI, and the audit trail the CLI's changes write
(``clients update``, ``--description``, ``tokendealer audit``)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from pathlib import Path

import pytest

from tests.support.cli import CLI, cli_env
from tests.support.environment import QuartClient
from tests.support.tokens import get_token, unverified
from tokendealer.admin.clients import MAX_AUDIENCES, MAX_SCOPE_LENGTH, MAX_SCOPES
from tokendealer.protocol.audit import AuditEvent
from tokendealer.settings import Settings
from tokendealer.store import SQLStore

ACTOR = f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"


@pytest.fixture(name="cli")
def _cli(tmp_path: Path) -> CLI:
    """The CLI on a database that exists (management commands never create one)."""
    env = cli_env(tmp_path)
    store = SQLStore(Settings.from_env(env).sqlalchemy_url)

    async def create() -> None:
        await store.open()
        await store.close()

    asyncio.run(create())
    return CLI(env, cwd=tmp_path)


def test_update_replaces_and_edits_fields_and_keeps_the_secret(cli: CLI) -> None:
    secret = cli.add("svc", "--scope", "read", "--audience", "https://a.test", "--ttl", "60")
    cli.ok("clients", "update", "svc", "--add-scope", "write", "--description", "Billing")
    cli.ok("clients", "update", "svc", "--audience", "https://b.test", "--ttl", "0")
    shown = cli.ok("clients", "show", "svc", "--json").json()
    assert shown["scopes"] == ["read", "write"]
    assert shown["audiences"] == ["https://b.test"]
    assert shown["ttl"] is None
    assert shown["description"] == "Billing"
    assert secret not in json.dumps(shown)
    again = cli.ok("clients", "update", "svc", "--description", "Billing")
    assert again.stdout.strip() == "svc unchanged: it already had that policy"
    changed = cli.ok("clients", "update", "svc", "--remove-scope", "read")
    assert changed.stdout.strip() == "updated svc: scopes"
    assert cli.ok("clients", "show", "svc", "--json").json()["scopes"] == ["write"]


def test_bad_update_is_one_line_and_changes_nothing(cli: CLI) -> None:
    cli.add("svc", "--scope", "read")
    before = cli.ok("clients", "show", "svc", "--json").json()
    cli.fails("clients", "update", "svc", "--add-scope", 'bad"scope').assert_one_line_error("scope")
    cli.fails("clients", "update", "nobody", "--ttl", "5").assert_one_line_error("no client")
    cli.fails("clients", "update", "svc", "--description", "a\x00b").assert_one_line_error(
        "description"
    )
    assert cli.ok("clients", "show", "svc", "--json").json() == before
    actions = [event["action"] for event in cli.ok("audit", "--json").json()]
    assert actions == ["client.create"]


def test_policy_is_bounded_and_so_is_its_audit_entry(cli: CLI) -> None:
    """A client has at most MAX_SCOPES scopes of at most MAX_SCOPE_LENGTH characters, and
    at most MAX_AUDIENCES audiences: more, given at once or added one by one, is one line
    that changes and records nothing. So the update event of a client at the bounds,
    which holds its policy before and after, is bounded too."""
    over = " ".join(f"s{i}" for i in range(MAX_SCOPES + 1))
    cli.fails("clients", "add", "svc", "--scope", over).assert_one_line_error(
        f"at most {MAX_SCOPES} scopes"
    )
    long = "s" * (MAX_SCOPE_LENGTH + 1)
    cli.fails("clients", "add", "svc", "--scope", long).assert_one_line_error(
        f"1-{MAX_SCOPE_LENGTH} printable ASCII"
    )
    audiences = [f"--audience=https://a{i}.test" for i in range(MAX_AUDIENCES + 1)]
    cli.fails("clients", "add", "svc", *audiences).assert_one_line_error(
        f"at most {MAX_AUDIENCES} audiences"
    )
    full = [f"{i:03}".ljust(MAX_SCOPE_LENGTH, "s") for i in range(MAX_SCOPES)]
    cli.add("svc", "--scope", " ".join(full))
    cli.fails("clients", "update", "svc", "--add-scope", "one-more").assert_one_line_error(
        f"at most {MAX_SCOPES} scopes"
    )
    assert cli.ok("clients", "show", "svc", "--json").json()["scopes"] == full
    cli.ok("clients", "update", "svc", "--scope", "read")
    events = cli.ok("audit", "--json").json()
    assert [event["action"] for event in events] == ["client.update", "client.create"]
    assert events[0]["details"]["changed"]["scopes"] == {"from": full, "to": ["read"]}
    assert len(json.dumps(events[0])) < (MAX_SCOPES + 1) * (MAX_SCOPE_LENGTH + 4) + 500


def test_every_client_change_is_audited_with_its_actor_and_no_secret(cli: CLI) -> None:
    secret = cli.add("svc", "--scope", "read", "--description", "orders")
    cli.ok("clients", "update", "svc", "--add-scope", "write")
    cli.ok("clients", "update", "svc", "--add-scope", "write")  # no change: no event
    rotated = cli.ok("clients", "rotate-secret", "svc", "--grace", "60", "--json").json()
    cli.ok("clients", "disable", "svc", "--revoke-tokens")
    cli.ok("clients", "enable", "svc")
    cli.ok("clients", "remove", "svc")
    events = cli.ok("audit", "--json").json()
    assert [e["action"] for e in events] == [
        "client.remove",
        "client.enable",
        "client.disable",
        "client.rotate_secret",
        "client.update",
        "client.create",
    ]
    assert {e["actor"] for e in events} == {ACTOR}
    assert {e["target"] for e in events} == {"client:svc"}
    update = events[4]["details"]
    assert update == {"changed": {"scopes": {"from": ["read"], "to": ["read", "write"]}}}
    assert events[2]["details"] == {"revoke_tokens": True}
    assert events[3]["details"] == {"grace": 60, "revoke_tokens": False}
    text = json.dumps(events) + cli.ok("audit").stdout
    assert secret not in text and rotated["client_secret"] not in text


def test_audit_filters(cli: CLI) -> None:
    cli.add("a")
    cli.add("b")
    cli.ok("clients", "disable", "b")
    by_target = cli.ok("audit", "--target", "client:b", "--json").json()
    assert [e["action"] for e in by_target] == ["client.disable", "client.create"]
    by_action = cli.ok("audit", "--action", "client.create", "--json").json()
    assert [e["target"] for e in by_action] == ["client:b", "client:a"]
    assert cli.ok("audit", "--actor", "admin:nobody", "--json").json() == []
    assert len(cli.ok("audit", "--limit", "1", "--json").json()) == 1
    assert cli.ok("audit", "--since", "2999-01-01", "--json").json() == []
    assert len(cli.ok("audit", "--since", "2000-01-01T00:00:00Z", "--json").json()) == 3
    cli.fails("audit", "--since", "yesterday").assert_one_line_error("--since")
    lines = cli.ok("audit").stdout.splitlines()
    assert lines[0] == "at\tactor\taction\ttarget\tdetails" and len(lines) == 4


def test_list_has_a_header_and_shows_audiences_and_ttl(cli: CLI) -> None:
    cli.add("svc", "--scope", "read", "--audience", "https://a.test", "--ttl", "90")
    header, row = cli.ok("clients", "list").stdout.splitlines()
    assert header.split("\t") == [
        "client_id",
        "state",
        "scopes",
        "audiences",
        "ttl",
        "last_token_at",
    ]
    assert row.split("\t") == ["svc", "enabled", "read", "https://a.test", "90", "-"]


async def test_updated_policy_reaches_the_next_token(
    settings: Settings, client: QuartClient
) -> None:
    """A scope added with ``clients update`` is in the next token a running app issues
    (the test app trusts no cached record); the token issued before keeps its claims."""
    cli = CLI.for_settings(settings)
    secret = (
        await asyncio.to_thread(cli.ok, "clients", "add", "svc", "--scope", "read", "--json")
    ).json()["client_secret"]
    before = await get_token(client, "svc", secret)
    await asyncio.to_thread(cli.ok, "clients", "update", "svc", "--add-scope", "write")
    after = await get_token(client, "svc", secret)
    assert unverified(before)[1]["scope"] == "read"
    assert unverified(after)[1]["scope"] == "read write"
    shown = (await asyncio.to_thread(cli.ok, "clients", "show", "svc", "--json")).json()
    assert shown["last_token_at"] is not None


def test_actor_is_the_process_user_not_the_environment(cli: CLI) -> None:
    """``USER``/``LOGNAME`` are the caller's to set: the actor is the effective uid's name."""
    cli.with_env(USER="mallory", LOGNAME="mallory").add("svc")
    (event,) = cli.ok("audit", "--json").json()
    assert event["actor"] == f"cli:{pwd.getpwuid(os.geteuid()).pw_name}" != "cli:mallory"


def test_audit_text_escapes_control_characters(cli: CLI, tmp_path: Path) -> None:
    """A value with a newline, a tab or a terminal escape cannot forge a line or a
    column of ``tokendealer audit``."""
    forged = "client:x\n2026-01-01\tcli:root\tclient.remove\x1b[2J"
    store = SQLStore(Settings.from_env(cli.env).sqlalchemy_url)

    async def record() -> None:
        await store.open()
        try:
            await store.record(AuditEvent(actor="cli:test", action="client.remove", target=forged))
        finally:
            await store.close()

    asyncio.run(record())
    lines = cli.ok("audit").stdout.splitlines()
    assert len(lines) == 2 and len(lines[1].split("\t")) == 5
    assert "\\n2026-01-01\\tcli:root" in lines[1] and "\x1b" not in lines[1]
