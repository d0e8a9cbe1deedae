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
import signal
import subprocess
import time
from contextlib import suppress
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


def missing_packages(directory: Path, *modules: str) -> Path:
    """A directory that, first on PYTHONPATH, makes ``import MODULE`` fail as if absent.

    Each ``MODULE/__init__.py`` raises the ``ModuleNotFoundError`` Python raises for a
    module that is not installed (same type, message and ``name``). PYTHONPATH entries
    come before site-packages on ``sys.path``, so the console script and every worker it
    spawns (they inherit the environment) find this package first. Nothing else of the
    environment changes: it is the installed venv with those packages taken away.
    """
    for module in modules:
        package = directory / module
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {module!r}'!r}, name={module!r})\n"
        )
    return directory


@dataclass(frozen=True)
class Exited:
    """A process that ended by itself within its bound."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_until_exit(argv: list[str], env: dict[str, str], cwd: Path, bound: float) -> Exited:
    """Run ``argv`` in its own process group; it must exit by itself within ``bound`` s.

    Otherwise the whole group (a server and its workers) is killed and the test fails,
    showing how much it logged meanwhile (a restart loop logs without end).
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        lines = stderr.splitlines()
        raise AssertionError(
            f"{' '.join(argv[1:])} still running after {bound:g} s, {len(lines)} stderr "
            f"lines so far; last ones:\n" + "\n".join(lines[-5:])
        ) from None
    finally:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent
    return Exited(proc.returncode, stdout, stderr, time.monotonic() - started)
