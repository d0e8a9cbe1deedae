"""The ``tokendealer`` admin CLI.

Commands run in process through the console entry point (``tests.support.cli``), with an
environment that points the database, the keys and the issuer into the test's temporary
directory; tokens are then requested from an app built in-process on the same database
and keys, so a secret printed by the CLI is shown to work at the token endpoint. A few
tests, each saying why, run the installed console script in a subprocess instead.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from tests.support.cli import CLI, Result, cli_env
from tests.support.environment import ISSUER, QuartClient
from tests.support.tokens import get_token, request_token
from tokendealer.http import create_app
from tokendealer.protocol.credentials import digest_secret
from tokendealer.settings import Settings

SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
CLIENT_FIELDS = {
    "client_id",
    "description",
    "last_token_at",
    "scopes",
    "audiences",
    "ttl",
    "claims",
    "rate_limit",
    "rate_limit_mode",
    "auth_method",
    "jwks_uri",
    "jwks",
    "disabled",
    "created_at",
    "early_token_requests",
    "previous_secret_valid_until",
}


@pytest.fixture(name="cli")
def _cli(tmp_path: Path) -> CLI:
    """The CLI on a database made by ``tokendealer init`` (no other command makes one)."""
    cli = CLI(cli_env(tmp_path), cwd=tmp_path)
    cli.ok("init")
    return cli


# -- clients: the success paths ----------------------------------------------------------


def test_add_json_prints_the_secret_once(cli: CLI) -> None:
    """``clients add --json`` prints one object with the id, the secret and the policy."""
    result = cli.ok(
        "clients",
        "add",
        "billing",
        "--scope",
        "read",
        "--scope",
        "write",
        "--audience",
        "https://api.test",
        "--ttl",
        "120",
        "--json",
    )
    body = result.json()
    assert body["client_id"] == "billing"
    assert SECRET_PATTERN.fullmatch(body["client_secret"])
    assert (body["scopes"], body["audiences"], body["ttl"], body["disabled"]) == (
        ["read", "write"],
        ["https://api.test"],
        120,
        False,
    )
    # The secret is never shown again: not by list, not by show.
    assert body["client_secret"] not in cli.ok("clients", "list").stdout
    assert body["client_secret"] not in cli.ok("clients", "show", "billing").stdout


def test_add_text_prints_id_and_secret(cli: CLI) -> None:
    """Without --json, add prints the id and a 256-bit URL-safe secret on stdout."""
    result = cli.ok("clients", "add", "svc")
    match = re.search(r"client_secret:\s+(\S+)", result.stdout)
    assert match is not None and SECRET_PATTERN.fullmatch(match.group(1))
    assert "svc" in result.stdout
    assert match.group(1) not in result.stderr


def test_list_json_has_no_secrets_or_digests(cli: CLI) -> None:
    """``clients list --json`` is an array of client objects without secret material."""
    assert cli.listing() == []
    secrets = {cid: cli.add(cid, "--scope", "read") for cid in ("b-svc", "a-svc")}
    assert secrets["a-svc"] != secrets["b-svc"]
    result = cli.ok("clients", "list", "--json")
    listing = result.json()
    assert isinstance(listing, list)
    assert [entry["client_id"] for entry in listing] == ["a-svc", "b-svc"]
    for entry in listing:
        assert set(entry) == CLIENT_FIELDS
        assert entry["scopes"] == ["read"]
    for secret in secrets.values():
        assert secret not in result.stdout
        assert digest_secret(secret) not in result.stdout


def test_show_json_reports_policy_and_state(cli: CLI) -> None:
    """``clients show --json`` has scopes, audiences, ttl and disabled, and no secret."""
    secret = cli.add("svc", "--scope", "a", "--scope", "b c", "--audience", "urn:x", "--ttl", "60")
    result = cli.ok("clients", "show", "svc", "--json")
    shown = result.json()
    # show adds the limit in force: the client's own, or the service's.
    assert set(shown) == CLIENT_FIELDS | {"effective_rate_limit"}
    assert shown["client_id"] == "svc"
    assert shown["scopes"] == ["a", "b", "c"]
    assert shown["audiences"] == ["urn:x"]
    assert shown["ttl"] == 60
    assert shown["disabled"] is False
    assert (shown["auth_method"], shown["jwks_uri"], shown["jwks"]) == ("client_secret", None, None)
    assert secret not in result.stdout and digest_secret(secret) not in result.stdout


def test_rotate_secret_json_prints_a_new_secret(cli: CLI) -> None:
    """``rotate-secret --json`` prints a new secret; show reports the grace window (default 0)."""
    old = cli.add("svc")
    body = cli.ok("clients", "rotate-secret", "svc", "--grace", "300", "--json").json()
    assert body["client_id"] == "svc"
    assert SECRET_PATTERN.fullmatch(body["client_secret"]) and body["client_secret"] != old
    assert body["previous_secret_valid_until"] is not None
    shown = cli.ok("clients", "show", "svc", "--json").json()
    assert shown["previous_secret_valid_until"] == body["previous_secret_valid_until"]
    again = cli.ok("clients", "rotate-secret", "svc", "--json").json()
    assert again["client_secret"] not in (old, body["client_secret"])
    assert again["previous_secret_valid_until"] is None
    assert cli.ok("clients", "show", "svc", "--json").json()["previous_secret_valid_until"] is None


def test_disable_enable_remove(cli: CLI) -> None:
    """disable and enable flip ``disabled``; remove deletes only that client."""
    cli.add("svc")
    cli.add("other")
    cli.ok("clients", "disable", "svc")
    states = {c["client_id"]: c["disabled"] for c in cli.listing()}
    assert states == {"svc": True, "other": False}
    cli.ok("clients", "enable", "svc")
    assert cli.ok("clients", "show", "svc", "--json").json()["disabled"] is False
    cli.ok("clients", "remove", "svc")
    assert [c["client_id"] for c in cli.listing()] == ["other"]


def test_help_and_version(cli: CLI) -> None:
    """``--help`` names the command groups, ``--version`` prints the package version."""
    from tokendealer import __version__

    for command in ("serve", "clients", "keys"):
        assert command in cli.ok("--help").stdout
    assert __version__ in cli.ok("--version").stdout


# -- the console script itself: the only tests here that start a process ------------------
#
# Everything else runs the entry point in process, which cannot see what the process
# itself would write: output on the real stdout or stderr (a log line from a logger set up
# on them, an interpreter warning), or an exit status the interpreter sets. These few
# tests run the installed ``tokendealer`` (and ``python -m tokendealer``) for that.


@pytest.fixture(name="script")
def _script(cli: CLI) -> CLI:
    return CLI(cli.env, cwd=cli.cwd, script=True)


def test_console_script_version(script: CLI) -> None:
    """The installed ``tokendealer`` script (pyproject's entry point) runs: ``--version``
    prints the package version and nothing else, and exits 0. A subprocess because this is
    about the script being installed and wired."""
    from tokendealer import __version__

    version = script.ok("--version")
    assert version.stdout == f"tokendealer, version {__version__}\n" and version.stderr == ""


def test_help_via_python_dash_m() -> None:
    """``python -m tokendealer --help`` works and names the command groups. A subprocess
    because this is about ``tokendealer/__main__.py``, which nothing else runs."""
    result = subprocess.run(
        [sys.executable, "-m", "tokendealer", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("serve", "clients", "keys"):
        assert command in result.stdout


def test_console_script_usage_error_is_one_line(script: CLI) -> None:
    """An unknown option: exit status 2 and exactly one ``Error:`` line on the process's
    stderr, no usage block or hint. A subprocess because click's own handling would print
    those to the real stderr, which the in-process runs do not see."""
    result = script.run("clients", "add", "new", "--bogus")
    assert result.code == 2
    result.assert_one_line_error("--bogus")
    assert result.stdout == ""


def test_console_script_add_prints_only_json(script: CLI, cli: CLI) -> None:
    """On a new store (just made by ``init``), ``clients add --json`` writes one JSON
    object to stdout and nothing to stderr. A subprocess because a log line on the real
    stdout would break a consumer of the JSON."""
    result = script.ok("clients", "add", "svc", "--scope", "read", "--json")
    body = result.json()
    assert body["client_id"] == "svc" and body["scopes"] == ["read"]
    assert SECRET_PATTERN.fullmatch(body["client_secret"])
    assert result.stderr == ""
    assert [c["client_id"] for c in cli.listing()] == ["svc"]


# -- keys ------------------------------------------------------------------------------


def test_keys_generate_and_list(cli: CLI) -> None:
    """``keys generate`` prints a kid that ``keys list --json`` reports as the active key."""
    (initial,) = [row["kid"] for row in cli.ok("keys", "list", "--json").json()]  # init's
    first = cli.ok("keys", "generate").stdout.strip()
    second = cli.ok("keys", "generate", "--bits", "3072").stdout.strip()
    assert first != second
    listing = cli.ok("keys", "list", "--json").json()
    by_kid = {row["kid"]: row for row in listing}
    assert set(by_kid) == {initial, first, second}
    for row in listing:
        assert {"kid", "alg", "bits", "created_at", "state"} <= set(row)
        assert row["alg"] == "RS512"
    assert by_kid[first]["bits"] == 2048 and by_kid[second]["bits"] == 3072
    assert by_kid[second]["state"] == "active"
    assert by_kid[first]["state"] == "retired"


# -- errors: one line, non-zero, store unchanged -------------------------------------------

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"
LONG_ID = "a" * 129

ERROR_CASES: dict[str, tuple[list[str], dict[str, str], str]] = {
    # name: (arguments, environment overrides, fragment of the one error line)
    "duplicate id": (["clients", "add", "svc", "--json"], {}, "already exists"),
    "show unknown": (["clients", "show", "ghost"], {}, "ghost"),
    "rotate unknown": (["clients", "rotate-secret", "ghost"], {}, "ghost"),
    "disable unknown": (["clients", "disable", "ghost", "--revoke-tokens"], {}, "ghost"),
    "enable unknown": (["clients", "enable", "ghost"], {}, "ghost"),
    "remove unknown": (["clients", "remove", "ghost"], {}, "ghost"),
    "id with space": (["clients", "add", "a b"], {}, "letters, digits"),
    "id of 129 chars": (["clients", "add", LONG_ID], {}, "128"),
    "id non-ascii": (["clients", "add", "é"], {}, "letters, digits"),
    "id empty": (["clients", "add", ""], {}, "1 to 128"),
    "id with slash": (["clients", "add", "a/b"], {}, "letters, digits"),
    "remove bad id": (["clients", "remove", "a b"], {}, "letters, digits"),
    "ttl zero": (["clients", "add", "new", "--ttl", "0"], {}, "--ttl"),
    "ttl not a number": (["clients", "add", "new", "--ttl", "soon"], {}, "--ttl"),
    "ttl too long": (["clients", "add", "new", "--ttl", "999999999"], {}, "--ttl"),
    "scope with quote": (["clients", "add", "new", "--scope", 'a"b'], {}, "--scope"),
    "audience with space": (["clients", "add", "new", "--audience", "a b"], {}, "--audience"),
    "grace negative": (["clients", "rotate-secret", "svc", "--grace", "-1"], {}, "--grace"),
    "unknown option": (["clients", "add", "new", "--bogus"], {}, "--bogus"),
    "db unreachable add": (
        ["clients", "add", "new"],
        {"TOKENDEALER_DATABASE_URL": UNREACHABLE},
        "database unavailable",
    ),
    "db unreachable list": (
        ["clients", "list", "--json"],
        {"TOKENDEALER_DATABASE_URL": UNREACHABLE},
        "database unavailable",
    ),
    "db url scheme": (
        ["clients", "list"],
        {"TOKENDEALER_DATABASE_URL": "mysql://root@127.0.0.1/x"},
        "TOKENDEALER_DATABASE_URL",
    ),
    "issuer not http": (
        ["clients", "add", "new"],
        {"TOKENDEALER_ISSUER": "ftp://dealer.test"},
        "TOKENDEALER_ISSUER",
    ),
    "issuer with query": (
        ["clients", "rotate-secret", "svc"],
        {"TOKENDEALER_ISSUER": "https://dealer.test/?tenant=1"},
        "TOKENDEALER_ISSUER",
    ),
    "database port not a number": (
        ["clients", "list"],
        {"TOKENDEALER_DATABASE_URL": "postgresql://dealer:pw-s3cret@127.0.0.1:abc/db"},
        "TOKENDEALER_DATABASE_URL is not a valid URL",
    ),
    "database url naming no database": (
        ["clients", "list"],
        {"TOKENDEALER_DATABASE_URL": "sqlite://"},
        "TOKENDEALER_DATABASE_URL must start with sqlite:///",
    ),
    "database url with an unknown parameter": (
        ["clients", "list"],
        {"TOKENDEALER_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test?bogus=1"},
        "the database URL is not usable",
    ),
    "token ttl not a number": (
        ["clients", "add", "new"],
        {"TOKENDEALER_TOKEN_TTL": "an hour"},
        "TOKENDEALER_TOKEN_TTL",
    ),
}


@dataclass(frozen=True)
class ErrorRun:
    before: Any
    after: Any
    results: dict[str, Result]


@pytest.fixture(name="error_run", scope="module")
def _error_run(tmp_path_factory: pytest.TempPathFactory) -> ErrorRun:
    """Every failing command of ERROR_CASES run against one populated store.

    The store holds two clients (one rotated with grace and disabled); its listing is
    taken before and after, so any failed command that wrote shows up as a difference.
    """
    workdir = tmp_path_factory.mktemp("errors")
    cli = CLI(cli_env(workdir), cwd=workdir)
    cli.ok("init")
    cli.add("svc", "--scope", "read", "--audience", "urn:a", "--ttl", "60")
    cli.add("other")
    cli.ok("clients", "rotate-secret", "other", "--grace", "3600")
    cli.ok("clients", "disable", "other")
    before = cli.listing()
    results = {name: cli.with_env(**env).run(*args) for name, (args, env, _) in ERROR_CASES.items()}
    return ErrorRun(before=before, after=cli.listing(), results=results)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_failed_command_is_one_clear_line(error_run: ErrorRun, case: str) -> None:
    """Each failure exits non-zero with one ``Error:`` line naming the problem, no secret."""
    result = error_run.results[case]
    result.assert_one_line_error(ERROR_CASES[case][2])
    assert "client_secret" not in result.stdout and not SECRET_PATTERN.search(result.stdout)
    assert "s3cret" not in result.stderr  # no password from a URL either


def test_failed_commands_leave_the_store_as_it_was(error_run: ErrorRun) -> None:
    """``clients list --json`` is the same before and after every failed command."""
    assert error_run.before and error_run.after == error_run.before


def test_unreachable_database_error_names_no_password(tmp_path: Path) -> None:
    """The unreachable-database line does not echo a password from the URL, and it is the
    command's only output: exit status 1, no log line of the store's outage. The console
    script in a subprocess, because such a log line would go to the process's stderr."""
    url = "postgresql://admin:hunter2-s3cret@127.0.0.1:1/x"
    cli = CLI(cli_env(tmp_path, database_url=url), cwd=tmp_path, script=True)
    result = cli.run("clients", "list", "--json")
    assert result.code == 1
    result.assert_one_line_error("database unavailable")
    assert "hunter2-s3cret" not in result.stderr + result.stdout
    assert result.stdout == ""  # no log line either: the error is the command's output


# -- the secret works at the token endpoint ------------------------------------------------


@pytest.fixture(name="served")
async def _served(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[CLI, QuartClient]]:
    """The CLI and an in-process app on the same database and keys directory."""
    cli = CLI(cli_env(tmp_path, database_url=database_url), cwd=tmp_path)
    settings = Settings(
        issuer=ISSUER,
        database_url=database_url,
        keys_dir=tmp_path / "keys",
        client_cache_ttl=0.0,
        access_log=False,
    )
    app: Quart = create_app(settings)
    async with app.test_app():
        yield cli, app.test_client()


async def _token(client: QuartClient, client_id: str, secret: str) -> tuple[int, Any]:
    """The status and JSON body of a token request with these credentials."""
    response = await request_token(client, client_id, secret)
    return response.status_code, await response.get_json()


async def _run(cli: CLI, *args: str) -> Any:
    return (await asyncio.to_thread(cli.ok, *args)).json()


async def test_cli_secret_gets_a_token(served: tuple[CLI, QuartClient]) -> None:
    """The secret printed by ``clients add`` authenticates at /oauth/token with its policy."""
    cli, client = served
    added = await _run(cli, "clients", "add", "svc", "--scope", "read", "--ttl", "90", "--json")
    status, body = await _token(client, "svc", added["client_secret"])
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read" and body["expires_in"] == 90
    status, body = await _token(client, "svc", added["client_secret"][:-1] + "x")
    assert (status, body["error"]) == (401, "invalid_client")


async def test_rotated_secrets_at_the_token_endpoint(served: tuple[CLI, QuartClient]) -> None:
    """With --grace both secrets work; after ``--grace 0`` only the newest one does."""
    cli, client = served
    first = (await _run(cli, "clients", "add", "svc", "--json"))["client_secret"]
    await get_token(client, "svc", first)
    second = (await _run(cli, "clients", "rotate-secret", "svc", "--grace", "600", "--json"))[
        "client_secret"
    ]
    await get_token(client, "svc", first)
    await get_token(client, "svc", second)
    third = (await _run(cli, "clients", "rotate-secret", "svc", "--grace", "0", "--json"))[
        "client_secret"
    ]
    for old in (first, second):
        status, body = await _token(client, "svc", old)
        assert (status, body["error"]) == (401, "invalid_client")
    await get_token(client, "svc", third)


async def test_disabled_and_removed_clients_are_invalid_client(
    served: tuple[CLI, QuartClient],
) -> None:
    """disable -> 401 invalid_client as for an unknown id (and, revoking, its tokens fail
    /verify_token); enable restores the client; remove ends it."""
    cli, client = served
    secret = (await _run(cli, "clients", "add", "svc", "--json"))["client_secret"]
    token = await get_token(client, "svc", secret)
    assert (await client.post("/verify_token", form={"access_token": token})).status_code == 200
    unknown = await request_token(client, "ghost", secret)

    await asyncio.to_thread(cli.ok, "clients", "disable", "svc", "--revoke-tokens")
    disabled = await request_token(client, "svc", secret)
    assert disabled.status_code == 401
    assert (await disabled.get_json())["error"] == "invalid_client"
    assert disabled.headers["WWW-Authenticate"] == 'Basic realm="tokendealer"'
    assert await disabled.get_data() == await unknown.get_data()
    refused = await client.post("/verify_token", form={"access_token": token})
    assert refused.status_code == 400
    assert (await refused.get_json())["error"] == "invalid_token"

    await asyncio.to_thread(cli.ok, "clients", "enable", "svc")
    await get_token(client, "svc", secret)

    await asyncio.to_thread(cli.ok, "clients", "remove", "svc")
    status, body = await _token(client, "svc", secret)
    assert (status, body["error"]) == (401, "invalid_client")


# -- storage at rest -------------------------------------------------------------------


def test_sqlite_file_holds_no_secret_in_clear(cli: CLI, tmp_path: Path) -> None:
    """The .db and -wal files contain the secrets' digests but never the secrets."""
    secrets = [cli.add("svc"), cli.add("other", "--scope", "read")]
    rotated = cli.ok("clients", "rotate-secret", "svc", "--grace", "60", "--json").json()
    secrets.append(rotated["client_secret"])
    files = [tmp_path / name for name in ("td.db", "td.db-wal", "td.db-shm")]
    stored = b"".join(path.read_bytes() for path in files if path.exists())
    assert (tmp_path / "td.db").exists()
    for secret in secrets:
        assert secret.encode() not in stored
        # Proof that we are looking at the right bytes: the digest is there.
        assert digest_secret(secret).encode() in stored
