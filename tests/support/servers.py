"""Real ``tokendealer serve`` processes for end-to-end tests.

``run_server(workdir)`` starts the installed console script on a free loopback port in its
own process group, waits until ``GET /healthz`` answers, and always stops the whole group
(SIGTERM, then SIGKILL after 10 s). The returned ``ServerProcess`` runs the CLI (in process,
``tests.support.cli``) with the server's environment, so a test changes clients as an
operator would::

    with run_server(tmp_path, workers=2) as server:
        secret = server.add_client("svc", "--scope", "read")
        token = server.token("svc", secret, scope="read")

Two servers may share one workdir (same database and keys): startup is serialized by a
lock file so only one of them creates the first key, and each server after the first logs
to its own ``server-<port>.log``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import leaks
from tests.support.cli import CLI, Result
from tests.support.processes import free_port, tokendealer_executable
from tests.support.tokens import fetch_token

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL = 4000


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-LOG_TAIL:]


@dataclass
class ServerProcess:
    """A running ``tokendealer serve`` and the environment it was started with."""

    url: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> Result:
        """Run ``tokendealer ARGS...`` (in process) with this server's environment, given
        ``input`` on standard input; with ``check``, it must succeed."""
        cli = CLI(self.env, cwd=self.log_path.parent)
        return cli.ok(*args, input=input) if check else cli.run(*args, input=input)

    def add_client(self, client_id: str, *args: str) -> str:
        """Register CLIENT_ID via ``clients add ID ARGS --json``; return its secret."""
        secret: str = self.cli("clients", "add", client_id, *args, "--json").json()["client_secret"]
        return secret

    def token(
        self, client_id: str, secret: str, *, http: httpx.Client | None = None, **params: str | None
    ) -> str:
        """An access token from this server (``tests.support.tokens.fetch_token``)."""
        return fetch_token(self.url, client_id, secret, http=http, **params)

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


def server_env(workdir: Path, port: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment: inherited (minus TOKENDEALER_*), defaults, then ``env``.

    A value of ``""`` in ``env`` removes that variable.
    """
    full = {key: value for key, value in os.environ.items() if not key.startswith("TOKENDEALER_")}
    full.update(
        {
            "TOKENDEALER_DATABASE_URL": f"sqlite:///{workdir / 'td.db'}",
            "TOKENDEALER_KEYS_DIR": str(workdir / "keys"),
            "TOKENDEALER_ISSUER": f"http://127.0.0.1:{port}",
            "TOKENDEALER_ACCESS_LOG": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in (env or {}).items():
        if value == "":
            full.pop(key, None)
        else:
            full[key] = value
    return full


@contextmanager
def _startup_lock(workdir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the workdir while a server prepares its store and keys."""
    with (workdir / ".server-startup.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_path(workdir: Path, port: int) -> Path:
    first = workdir / "server.log"
    try:
        # O_EXCL claims server.log for the first server only.
        os.close(os.open(first, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return workdir / f"server-{port}.log"
    return first


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(timeout=2.0) as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"tokendealer serve exited with {proc.returncode} before answering "
                    f"/healthz; log tail:\n{_log_tail(log_path)}"
                )
            try:
                if http.get(url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"tokendealer serve did not answer /healthz within {STARTUP_TIMEOUT:.0f} s; "
                    f"log tail:\n{_log_tail(log_path)}"
                )
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
    # Workers may outlive their parent; the group id is the parent's pid.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _PortTaken(RuntimeError):
    """The free port found was taken by someone else before the server bound it."""


def _start(
    workdir: Path, port: int, workers: int, server: str, env: dict[str, str] | None
) -> ServerProcess:
    url = f"http://127.0.0.1:{port}"
    full_env = server_env(workdir, port, env)
    log_path = _log_path(workdir, port)
    command = [
        tokendealer_executable(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--server",
        server,
    ]
    with _startup_lock(workdir):
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                command,
                env=full_env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_healthy(url, proc, log_path)
        except BaseException as exc:
            _stop(proc)
            if proc.returncode and "address already in use" in _log_tail(log_path).lower():
                # Free server.log again for the retry on another port.
                log_path.rename(workdir / f"server-{port}.log")
                raise _PortTaken(str(exc)) from exc
            raise
    leaks.LOG_FILES.append(log_path)
    return ServerProcess(url=url, port=port, env=full_env, proc=proc, log_path=log_path)


@contextmanager
def run_server(
    workdir: Path,
    *,
    workers: int = 1,
    server: str = "uvicorn",
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[ServerProcess]:
    """Start ``tokendealer serve`` on 127.0.0.1, yield it once /healthz answers, then stop it.

    Without ``port`` a free one is picked, and picked again (up to 3 times) if another
    process takes it before the server binds it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        try:
            started = _start(workdir, port or free_port(), workers, server, env)
            break
        except _PortTaken:
            if attempt == attempts - 1:
                raise
    try:
        yield started
    finally:
        _stop(started.proc)


def wait_until(
    condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.02
) -> float:
    """Poll ``condition`` until it is true; return the seconds that took. Past ``timeout``
    seconds the test fails, naming ``what`` it waited for: no test waits a fixed time for
    something a server does."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - started
