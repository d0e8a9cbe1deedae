"""Running the real ``tokendealer`` console script as an operator would.

``CLI(env)`` runs ``tokendealer ARGS...`` in a subprocess with an environment that
points the database, the keys and the issuer into a test's temporary directory::

    cli = CLI(cli_env(tmp_path))
    secret = cli.ok("clients", "add", "svc", "--json").json()["client_secret"]
    cli.fails("clients", "add", "svc").assert_one_line_error("already exists")
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.conftest import ISSUER
from tests.servers import tokendealer_executable

CLI_TIMEOUT = 30.0


def cli_env(tmp_path: Path, *, database_url: str | None = None, **overrides: str) -> dict[str, str]:
    """The inherited environment minus TOKENDEALER_*, with db, keys and issuer in tmp_path.

    ``overrides`` maps variable names (``TOKENDEALER_...``) to values; ``""`` removes one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(
        {
            "TOKENDEALER_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'td.db'}",
            "TOKENDEALER_KEYS_DIR": str(tmp_path / "keys"),
            "TOKENDEALER_ISSUER": ISSUER,
            "TOKENDEALER_ACCESS_LOG": "false",
        }
    )
    for key, value in overrides.items():
        if value == "":
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def assert_one_line_error(self, fragment: str) -> None:
        """Non-zero exit, exactly one stderr line ``Error: ...`` containing ``fragment``."""
        assert self.code != 0, f"tokendealer {' '.join(self.args)} succeeded: {self.stdout}"
        assert "Traceback" not in self.stderr
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one line on stderr, got: {self.stderr!r}"
        assert lines[0].startswith("Error: "), lines[0]
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@dataclass(frozen=True)
class CLI:
    env: dict[str, str]
    cwd: Path | None = None

    def run(self, *args: str) -> Result:
        completed = subprocess.run(
            [tokendealer_executable(), *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        return Result(args, completed.returncode, completed.stdout, completed.stderr)

    def ok(self, *args: str) -> Result:
        """Run and require exit status 0."""
        result = self.run(*args)
        assert result.code == 0, (
            f"tokendealer {' '.join(args)} exited {result.code}: {result.stderr.strip()}"
        )
        return result

    def fails(self, *args: str) -> Result:
        """Run and require a non-zero exit status."""
        result = self.run(*args)
        assert result.code != 0, f"tokendealer {' '.join(args)} succeeded: {result.stdout}"
        return result

    def with_env(self, **overrides: str) -> CLI:
        """The same CLI with some variables changed (``""`` removes one)."""
        env = dict(self.env)
        for key, value in overrides.items():
            if value == "":
                env.pop(key, None)
            else:
                env[key] = value
        return replace(self, env=env)

    def add(self, client_id: str, *args: str) -> str:
        """``clients add CLIENT_ID ARGS --json``; return the secret."""
        secret: str = self.ok("clients", "add", client_id, *args, "--json").json()["client_secret"]
        return secret

    def listing(self) -> Any:
        """``clients list --json`` parsed."""
        return self.ok("clients", "list", "--json").json()
