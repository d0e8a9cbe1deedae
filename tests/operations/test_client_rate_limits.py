"""Per-client limits (issue 14) from the command line: ``clients add/update --rate-limit
COUNT/UNIT [--rate-limit-mode enforce|monitor]``, ``--rate-limit default``, the limit in
force in ``clients show``, and ``apply`` files with ``rate_limit``; each reaching a
running app's token endpoint. The HTTP faces and monitor mode's log line are in
tests/http/test_client_rate_limits.py."""

from __future__ import annotations

import dataclasses
import os
import pwd
from pathlib import Path

import pytest

from tests.support.cli import CLI, cli_env
from tests.support.environment import QuartClient
from tests.support.tokens import request_token
from tokendealer.settings import Rate, Settings
from tokendealer.store import SQLStore

ACTOR = f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"
#: The running app's service-wide per-client limit, and the CLI's (``clients show``).
DEFAULT_LIMIT = 5
DEFAULT_TEXT = f"{DEFAULT_LIMIT}/minute"


@pytest.fixture(name="settings")
def _limited_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, rate_limit=Rate(DEFAULT_LIMIT, 60))


@pytest.fixture(name="cli")
def _cli(tmp_path: Path) -> CLI:
    """The CLI on a database that exists, with the service's limit of the app's."""
    return CLI(
        cli_env(tmp_path, TOKENDEALER_RATE_LIMIT=DEFAULT_TEXT), cwd=tmp_path
    ).create_database()


async def statuses(client: QuartClient, client_id: str, secret: str, count: int) -> list[int]:
    return [(await request_token(client, client_id, secret)).status_code for _ in range(count)]


async def test_a_limit_set_changed_and_removed_with_the_cli_reaches_a_running_app(
    settings: Settings, client: QuartClient
) -> None:
    """``--rate-limit 2/minute``: the third token request is 429, while a client on the
    service's limit gets its third; ``update --rate-limit 3/minute``: a new allowance of
    3; ``--rate-limit default``: the service's 5 again."""
    cli = CLI.for_settings(settings)
    slow = (await cli.aok("clients", "add", "slow", "--rate-limit", "2/minute", "--json")).json()
    plain = (await cli.aok("clients", "add", "plain", "--json")).json()
    assert (slow["rate_limit"], slow["rate_limit_mode"]) == ("2/minute", "enforce")
    assert plain["rate_limit"] is None
    assert await statuses(client, "slow", slow["client_secret"], 3) == [200, 200, 429]
    assert await statuses(client, "plain", plain["client_secret"], 3) == [200, 200, 200]

    updated = await cli.aok("clients", "update", "slow", "--rate-limit", "3/minute")
    assert updated.stdout == "updated slow: rate_limit\n"
    assert await statuses(client, "slow", slow["client_secret"], 4) == [200, 200, 200, 429]

    await cli.aok("clients", "update", "slow", "--rate-limit", "default")
    assert (await cli.aok("clients", "show", "slow", "--json")).json()["rate_limit"] is None
    allowed = await statuses(client, "slow", slow["client_secret"], DEFAULT_LIMIT + 1)
    assert allowed == [200] * DEFAULT_LIMIT + [429]


def test_show_prints_the_limit_in_force_and_whose_it_is(cli: CLI) -> None:
    """Text: the client's own limit, or the service default (as this command's
    environment sets it), and a monitored limit with the one enforced; JSON: the
    client's own (``rate_limit``), its mode and ``effective_rate_limit``."""
    cli.add("own", "--rate-limit", "5/10 seconds")
    cli.add("watched", "--rate-limit", "120/2 minutes", "--rate-limit-mode", "monitor")
    cli.add("plain")

    def line(client_id: str, name: str) -> str:
        shown = cli.ok("clients", "show", client_id).stdout.splitlines()
        (found,) = [text for text in shown if text.startswith(name + ": ")]
        return found

    assert line("own", "rate_limit") == "rate_limit: 5/10 seconds (its own)"
    assert line("own", "rate_limit_mode") == "rate_limit_mode: enforce"
    assert line("plain", "rate_limit") == f"rate_limit: {DEFAULT_TEXT} (service default)"
    assert line("watched", "rate_limit") == (
        "rate_limit: 120/2 minutes (its own, monitored: a request over it is logged, not "
        f"refused; the service default {DEFAULT_TEXT} is enforced)"
    )
    assert line("watched", "rate_limit_mode") == "rate_limit_mode: monitor"
    shown = {
        client_id: cli.ok("clients", "show", client_id, "--json").json()
        for client_id in ("own", "watched", "plain")
    }
    assert shown["own"]["effective_rate_limit"] == {"rate": "5/10 seconds", "source": "client"}
    assert shown["plain"]["effective_rate_limit"] == {"rate": DEFAULT_TEXT, "source": "service"}
    assert shown["watched"]["effective_rate_limit"] == {
        "rate": DEFAULT_TEXT,
        "source": "service",
        "monitored": "120/2 minutes",
    }
    assert (shown["watched"]["rate_limit"], shown["plain"]["rate_limit"]) == ("120/2 minutes", None)
    # Another service-wide limit in the command's environment is the default it shows.
    other = cli.with_env(TOKENDEALER_RATE_LIMIT="100/hour")
    assert "rate_limit: 100/hour (service default)" in other.ok("clients", "show", "plain").stdout


async def test_show_prints_early_token_requests(cli: CLI) -> None:
    """The count the service keeps of a client's early token requests (see
    tokendealer.service.waste), in the text with what it means, and in the JSON."""
    await cli.aok("clients", "add", "cached")
    await cli.aok("clients", "add", "wasteful")
    store = SQLStore(Settings.from_env(cli.env).sqlalchemy_url)
    await store.open()
    try:
        await store.add_early_token_requests({"wasteful": 42})
    finally:
        await store.close()
    text = (await cli.aok("clients", "show", "wasteful")).stdout
    assert "early_token_requests: 42 (new tokens asked for while it held one" in text
    assert "early_token_requests: 0\n" in (await cli.aok("clients", "show", "cached")).stdout
    listing = (await cli.aok("clients", "list", "--json")).json()
    listed = {c["client_id"]: c["early_token_requests"] for c in listing}
    assert listed == {"cached": 0, "wasteful": 42}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("clients", "add", "svc", "--rate-limit", "2/fortnight"), "'--rate-limit': a rate limit"),
        (("clients", "add", "svc", "--rate-limit", "0/minute"), "not '0/minute'"),
        (("clients", "add", "svc", "--rate-limit-mode", "loud"), "'--rate-limit-mode'"),
        (("clients", "update", "old", "--rate-limit", "lots"), "or default for the service's"),
        (("clients", "update", "old", "--rate-limit-mode", "warn"), "'--rate-limit-mode'"),
        (("clients", "update", "old", "--rate-limit", "x" * 5000), "..."),
    ],
)
def test_a_bad_limit_is_one_line_and_changes_nothing(
    cli: CLI, args: tuple[str, ...], fragment: str
) -> None:
    cli.add("old", "--rate-limit", "2/minute")
    before = (cli.listing(), cli.ok("audit", "--json").json())
    result = cli.fails(*args)
    result.assert_one_line_error(fragment)
    assert len(result.stderr) < 300
    assert (cli.listing(), cli.ok("audit", "--json").json()) == before


def test_changes_are_audited_with_the_cli_actor(cli: CLI) -> None:
    cli.add("svc", "--rate-limit", "2/minute")
    cli.ok("clients", "update", "svc", "--rate-limit-mode", "monitor")
    cli.ok("clients", "update", "svc", "--rate-limit-mode", "monitor")  # no change: no event
    cli.ok("clients", "update", "svc", "--rate-limit", "default", "--rate-limit-mode", "enforce")
    update, monitor, create = cli.ok("audit", "--json").json()
    assert {update["actor"], monitor["actor"], create["actor"]} == {ACTOR}
    assert (create["details"]["rate_limit"], create["details"]["rate_limit_mode"]) == (
        "2/minute",
        "enforce",
    )
    assert monitor["details"] == {
        "changed": {"rate_limit_mode": {"from": "enforce", "to": "monitor"}}
    }
    assert update["details"] == {
        "changed": {
            "rate_limit": {"from": "2/minute", "to": None},
            "rate_limit_mode": {"from": "monitor", "to": "enforce"},
        }
    }


# -- apply ---------------------------------------------------------------------------------

LIMITED = """\
clients:
  - client_id: svc
    rate_limit: 2/minute
  - client_id: watched
    rate_limit: 60/minute
    rate_limit_mode: monitor
"""


async def limits(cli: CLI) -> dict[str, tuple[str | None, str]]:
    """Each client's own limit and mode, as ``clients list --json`` has them."""
    listing = (await cli.aok("clients", "list", "--json")).json()
    return {c["client_id"]: (c["rate_limit"], c["rate_limit_mode"]) for c in listing}


def _file(directory: Path, text: str) -> str:
    path = directory / "clients.yaml"
    path.write_text(text)
    return str(path)


async def test_apply_sets_changes_and_removes_limits(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    """A file's ``rate_limit`` and ``rate_limit_mode`` are set (the limit reaches the
    running app), a second run changes nothing, a changed limit is one update line, and a
    client without one in the file is given back the service's."""
    cli = CLI.for_settings(settings)
    out = (await cli.aok("apply", _file(tmp_path, LIMITED))).stdout
    secret = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith("svc: "))
    assert await statuses(client, "svc", secret["svc"], 3) == [200, 200, 429]
    shown = await limits(cli)
    assert shown == {"svc": ("2/minute", "enforce"), "watched": ("60/minute", "monitor")}
    again = (await cli.aok("apply", _file(tmp_path, LIMITED))).stdout
    assert again == "0 created, 0 updated, 0 removed, 2 unchanged\n"

    changed = LIMITED.replace("2/minute", "2/2 minutes").replace(
        "    rate_limit_mode: monitor\n", ""
    )
    changed = changed.replace("    rate_limit: 60/minute\n", "")
    lines = (await cli.aok("apply", _file(tmp_path, changed))).stdout.splitlines()
    assert lines == [
        'update svc: rate_limit "2/minute" -> "2/2 minutes"',
        'update watched: rate_limit "60/minute" -> default; rate_limit_mode "monitor" -> "enforce"',
        "0 created, 2 updated, 0 removed, 0 unchanged",
    ]
    shown = await limits(cli)
    assert shown == {"svc": ("2/2 minutes", "enforce"), "watched": (None, "enforce")}


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("    rate_limit: 2/fortnight\n", "clients.yaml:3: rate_limit: a rate limit is COUNT/UNIT"),
        (
            "    rate_limit: 120\n",
            "clients.yaml:3: rate_limit must be a string such as 1200/minute",
        ),
        (
            "    rate_limit_mode: loud\n",
            "clients.yaml:3: rate_limit_mode: rate_limit_mode is one of",
        ),
    ],
)
def test_apply_refuses_a_bad_limit_naming_its_line(
    cli: CLI, tmp_path: Path, entry: str, fragment: str
) -> None:
    cli.add("legacy")
    before = (cli.listing(), cli.ok("audit", "--json").json())
    text = "clients:\n  - client_id: svc\n" + entry
    result = cli.fails("apply", _file(tmp_path, text), "--prune")
    result.assert_one_line_error(f"{tmp_path}/{fragment}")
    assert (cli.listing(), cli.ok("audit", "--json").json()) == before
