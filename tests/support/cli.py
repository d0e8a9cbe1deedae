"""The one way tests run the ``tokendealer`` command.

``CLI(env)`` runs ``tokendealer ARGS...`` with an environment that points the database,
the keys and the issuer into a test's temporary directory. By default it runs in this
process: the console script's own entry point (``tokendealer.cli.main``, so its one-line
errors and exit codes) under click's ``CliRunner`` isolation, which swaps stdin, stdout,
stderr and the environment for the call. ``CLI(env, script=True)`` runs the installed
console script in a subprocess instead, for the few tests that prove the script itself::

    cli = CLI(cli_env(tmp_path))
    secret = cli.add("svc", "--scope", "read")
    cli.fails("clients", "add", "svc").assert_one_line_error("already exists")

``CLI.for_settings(settings)`` is the CLI on an app's store and keys.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from tests.support import leaks
from tests.support.environment import ISSUER
from tests.support.processes import tokendealer_executable
from tokendealer.cli import main
from tokendealer.settings import Settings
from tokendealer.store import SQLStore

#: Bound on one console-script run.
SCRIPT_TIMEOUT = 30.0

#: CliRunner's isolation swaps process-wide state (stdio, os.environ, the working
#: directory here): one in-process command at a time, whichever thread runs it.
_IN_PROCESS = threading.Lock()


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
    return _changed(env, overrides)


def _changed(env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    changed = dict(env)
    for key, value in overrides.items():
        if value == "":
            changed.pop(key, None)
        else:
            changed[key] = value
    return changed


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
        assert "Traceback" not in self.stderr, self.stderr
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one line on stderr, got: {self.stderr!r}"
        assert lines[0].startswith("Error: "), lines[0]
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@dataclass(frozen=True)
class CLI:
    env: dict[str, str]
    cwd: Path | None = None
    script: bool = False

    @classmethod
    def for_settings(cls, settings: Settings, **overrides: str) -> CLI:
        """The CLI on the store, keys and issuer of an app started with ``settings``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
        env.update(
            TOKENDEALER_ISSUER=settings.issuer,
            TOKENDEALER_DATABASE_URL=settings.database_url,
            TOKENDEALER_KEYS_DIR=str(settings.keys_dir),
            TOKENDEALER_ACCESS_LOG="false",
        )
        return cls(_changed(env, overrides))

    def run(self, *args: str, input: str | None = None) -> Result:
        result = self._script(args, input) if self.script else self._in_process(args, input)
        # What it showed on purpose must not reach a log; what it wrote to stderr is a log.
        leaks.remember_shown_secrets(result.stdout)
        leaks.LINES.append(result.stderr)
        return result

    def _script(self, args: tuple[str, ...], input: str | None) -> Result:
        completed = subprocess.run(
            [tokendealer_executable(), *args],
            env=self.env,
            cwd=self.cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
        return Result(args, completed.returncode, completed.stdout, completed.stderr)

    def _in_process(self, args: tuple[str, ...], input: str | None) -> Result:
        # Variables of this process that the command's environment lacks are removed.
        environment: dict[str, str | None] = {key: None for key in os.environ}
        environment.update(self.env)
        outer = (sys.stdout, sys.stderr)
        with (
            _IN_PROCESS,
            CliRunner().isolation(input=input or "", env=environment) as (stdout, stderr, _),
            _this_thread_only(outer),
            _working_directory(self.cwd),
            _argv(["tokendealer", *args]),
        ):
            code = _exit_code(main)
            sys.stdout.flush()
            sys.stderr.flush()
            out = stdout.getvalue().decode("utf-8", "replace")
            err = stderr.getvalue().decode("utf-8", "replace")
        return Result(args, code, out, err)

    def ok(self, *args: str, input: str | None = None) -> Result:
        """Run and require exit status 0."""
        result = self.run(*args, input=input)
        assert result.code == 0, (
            f"tokendealer {' '.join(args)} exited {result.code}: {result.stderr.strip()}"
        )
        return result

    def fails(self, *args: str, input: str | None = None) -> Result:
        """Run and require a non-zero exit status."""
        result = self.run(*args, input=input)
        assert result.code != 0, f"tokendealer {' '.join(args)} succeeded: {result.stdout}"
        return result

    async def aok(self, *args: str, input: str | None = None) -> Result:
        """``ok`` from an async test: in a thread, since a command runs its own event
        loop (output is still the command's own: see ``_this_thread_only``)."""
        return await asyncio.to_thread(self.ok, *args, input=input)

    async def afails(self, *args: str, input: str | None = None) -> Result:
        """``fails`` from an async test."""
        return await asyncio.to_thread(self.fails, *args, input=input)

    def create_database(self) -> CLI:
        """Create (and migrate) this CLI's database without a first key, as ``serve``
        does before anything else: management commands never create one. ``init`` does
        the same and also makes the first key."""
        url = Settings.from_env(self.env).sqlalchemy_url

        async def create() -> None:
            store = SQLStore(url)
            try:
                await store.open(create=True)
            finally:
                await store.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(create())
        else:  # called from an async test: its own loop, in a thread
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(lambda: asyncio.run(create())).result()
        return self

    def with_env(self, **overrides: str) -> CLI:
        """The same CLI with some variables changed (``""`` removes one)."""
        return replace(self, env=_changed(self.env, overrides))

    def add(self, client_id: str, *args: str) -> str:
        """``clients add CLIENT_ID ARGS --json``; return the secret."""
        secret: str = self.ok("clients", "add", client_id, *args, "--json").json()["client_secret"]
        return secret

    def listing(self) -> Any:
        """``clients list --json`` parsed."""
        return self.ok("clients", "list", "--json").json()


def _exit_code(entry: Any) -> int:
    """Call the console entry point as the script would, and return its exit status; an
    exception that escapes it is printed as the interpreter would print it (status 1)."""
    try:
        entry()
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


class _Routed:
    """A stand-in for ``sys.stdout``/``sys.stderr`` that hands writes from the command's
    thread to the command's captured stream and writes from any other thread (an app the
    test runs meanwhile, logging) to the stream they would have reached anyway."""

    def __init__(self, owner: int, mine: Any, others: Any) -> None:
        self._owner = owner
        self._mine = mine
        self._others = others

    def _target(self) -> Any:
        return self._mine if threading.get_ident() == self._owner else self._others

    def write(self, text: str) -> int:
        written: int = self._target().write(text)
        return written

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


@contextlib.contextmanager
def _this_thread_only(outer: tuple[Any, Any]) -> Iterator[None]:
    """Within CliRunner's isolation: capture only what this thread writes."""
    captured = (sys.stdout, sys.stderr)
    owner = threading.get_ident()
    sys.stdout = _Routed(owner, captured[0], outer[0])  # type: ignore[assignment]
    sys.stderr = _Routed(owner, captured[1], outer[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = captured


@contextlib.contextmanager
def _working_directory(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with contextlib.chdir(path):
        yield


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved
