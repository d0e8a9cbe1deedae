"""What a serving process imports: the token service, not every command and feature.

``tokendealer serve --workers 1`` is its own worker, and spawned workers import the console
script (``tokendealer.cli``) again as their ``__main__``: the other commands' modules
(PyYAML for ``apply``, the trust discovery client...) load only when their command runs,
and the admin API and console (argon2, quart-auth) only when ``TOKENDEALER_ADMIN`` is on.
Each check runs in a fresh interpreter, where nothing was imported before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PROBE = """
import json, sys
from pathlib import Path
import tokendealer.cli
from tokendealer.cli import cli
from tokendealer.http.app import create_app
from tokendealer.settings import Settings

serve = cli.commands["serve"]
directory = Path(sys.argv[1])
settings = Settings.from_env({
    "TOKENDEALER_DATABASE_URL": f"sqlite:///{directory / 'tokendealer.db'}",
    "TOKENDEALER_KEYS_DIR": str(directory / "keys"),
    "TOKENDEALER_ADMIN": sys.argv[2],
})
create_app(settings)
print(json.dumps({"serve": serve.name, "modules": sorted(sys.modules)}))
"""

#: Loaded by commands other than serve, or by the admin API and console only.
COMMAND_ONLY = ("yaml", "tokendealer.admin.declarative", "tokendealer.cli.apply")
ADMIN_ONLY = ("argon2", "quart_auth", "tokendealer.http.console", "tokendealer.http.admin.api")


def _modules(tmp_path: Path, admin: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), admin],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["serve"] == "serve"
    return set(result["modules"])


def test_serving_imports_neither_other_commands_nor_the_admin_faces_when_off(
    tmp_path: Path,
) -> None:
    modules = _modules(tmp_path, "false")
    assert "tokendealer.cli.serve" in modules
    assert "tokendealer.http.pipeline" in modules
    assert sorted(modules.intersection(COMMAND_ONLY + ADMIN_ONLY)) == []


def test_the_admin_faces_load_when_on(tmp_path: Path) -> None:
    modules = _modules(tmp_path, "true")
    assert set(ADMIN_ONLY) <= modules
    assert sorted(modules.intersection(COMMAND_ONLY)) == []


def test_every_command_is_found_by_name() -> None:
    """The group lists every command, each one its module's command of that name."""
    import click

    from tokendealer.cli import COMMANDS, cli

    context = click.Context(cli)
    assert sorted(cli.commands) == sorted(COMMANDS)
    assert cli.list_commands(context) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.commands[name]
        assert command.name == name
        assert cli.get_command(context, name) is command
    assert cli.get_command(context, "no-such-command") is None
