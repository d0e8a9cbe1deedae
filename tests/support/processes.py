"""Processes a test starts: the console script, free ports, runs that must end by
themselves, and installed packages taken away."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tokendealer_executable() -> str:
    """The ``tokendealer`` console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "tokendealer"
    if beside.exists():
        return str(beside)
    found = shutil.which("tokendealer")
    if found is None:
        raise RuntimeError("the tokendealer console script is not installed (pip install -e .)")
    return found


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
