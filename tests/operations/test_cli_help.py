"""Help everywhere: every command of ``tokendealer`` answers ``-h`` and ``--help`` with its
usage, and every command and option says what it is for. The commands are found by
walking the click group, so a command added later is checked too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.support.cli import CLI, cli_env
from tokendealer.cli import cli as tokendealer_group
from tokendealer.keys.keyset import generate_key


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = tokendealer_group
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


COMMANDS = list(_commands(tokendealer_group))


def _name(path: tuple[str, ...]) -> str:
    return " ".join(path) or "tokendealer"


@pytest.fixture(name="cli")
def _cli(tmp_path: Path) -> CLI:
    return CLI(cli_env(tmp_path), cwd=tmp_path)


def test_the_walk_finds_the_nested_commands() -> None:
    """The walk reaches commands inside groups, not only the top level."""
    assert {("keys", "remove"), ("clients", "add"), ("serve",), ("init",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=_name)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flag_prints_usage(cli: CLI, path: tuple[str, ...], flag: str) -> None:
    """``tokendealer ... COMMAND -h`` (and ``--help``) prints that command's usage and
    help on stdout, exits 0, and runs nothing (no database or keys appear)."""
    result = cli.ok(*path, flag)
    assert result.stdout.startswith(f"Usage: tokendealer {' '.join(path)}".rstrip())
    assert "-h, --help" in result.stdout
    opening = " ".join((_command(path).help or "").split()[:6])
    assert opening and opening in " ".join(result.stdout.split())
    assert result.stderr == ""
    assert cli.cwd is not None and sorted(p.name for p in cli.cwd.iterdir()) == []


@pytest.mark.parametrize("path", COMMANDS, ids=_name)
def test_every_command_and_option_has_help(path: tuple[str, ...]) -> None:
    """Each command has a help text of its own (shown by its ``-h``), a subcommand a short
    one for its group's listing too, and each option a help text."""
    command = _command(path)
    assert (command.help or "").strip(), f"{_name(path)} has no help text"
    if path:
        assert command.get_short_help_str().strip(), f"{_name(path)} has no short help"
    for param in command.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{_name(path)} {'/'.join(param.opts)}: no help"


def test_keys_remove_reads_a_kid_starting_with_dash_h_as_a_kid(cli: CLI) -> None:
    """Key ids are base64url and may start with '-', even '-h': only ``-h`` alone is the
    help; a kid such as ``-hQ...`` is looked up (and here not found), not read as options."""
    cli.create_database()
    generate_key(Path(cli.env["TOKENDEALER_KEYS_DIR"]))
    kid = "-hQ" + "a" * 40
    cli.fails("keys", "remove", kid).assert_one_line_error(f"no key {kid!r}")
    cli.fails("keys", "remove", "--", kid).assert_one_line_error(f"no key {kid!r}")


def test_keys_list_text_has_a_header_row(cli: CLI) -> None:
    """Text ``keys list`` starts with a header naming its tab-separated columns, the
    names ``--json`` uses; each key follows on its own row."""
    kid = generate_key(Path(cli.env["TOKENDEALER_KEYS_DIR"]))
    header, *rows = cli.ok("keys", "list").stdout.splitlines()
    columns = header.split("\t")
    assert columns == list(cli.ok("keys", "list", "--json").json()[0])
    assert len(rows) == 1
    row = dict(zip(columns, rows[0].split("\t"), strict=True))
    assert row["kid"] == kid and row["state"] == "active" and row["retired_at"] == "-"
