"""``tokendealer serve`` when it cannot run: one line and a non-zero exit, by itself.

Every test runs the real console script as a subprocess, with one and with two workers,
and requires it to exit on its own within ``EXIT_BOUND`` seconds: a worker restart loop
(uvicorn restarts a worker that dies) would instead run until killed. Configuration
errors and a busy port are found by the parent, before any worker starts, so stderr holds
exactly one ``Error: ...`` line.

The runs are independent, so one module fixture starts them all, a few at a time, and the
tests read their results: each run is a cold start of the console script (mostly CPU),
and the uvicorn worker failure spends ~5 s idle in its supervisor (see that test).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from uvicorn.config import STARTUP_FAILURE as UVICORN_STARTUP_FAILURE

from tests.support.cli import cli_env
from tests.support.processes import (
    Exited,
    free_port,
    missing_packages,
    run_until_exit,
    tokendealer_executable,
)
from tokendealer.http.app import STARTUP_FAILURE

#: Seconds a failing ``serve`` may take to exit (a loaded 2-core machine, cold imports).
EXIT_BOUND = 20.0
UNREACHABLE_PG = "postgresql://dealer:pg-s3cret@127.0.0.1:1/x"

#: name: (environment overrides, modules taken away, fragments of the one error line)
CONFIG_ERRORS: dict[str, tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]] = {
    "redis url without the redis package": (
        {"TOKENDEALER_REDIS_URL": "redis://127.0.0.1:1/0"},
        ("redis",),
        ("TOKENDEALER_REDIS_URL needs the redis package", "pip install 'tokendealer[redis]'"),
    ),
    "postgresql url without asyncpg": (
        {"TOKENDEALER_DATABASE_URL": UNREACHABLE_PG},
        ("asyncpg",),
        ("TOKENDEALER_DATABASE_URL needs the asyncpg package", "'tokendealer[postgres]'"),
    ),
    "redis url redis-py cannot parse": (
        # redis-py's own message would quote "rd-s3" (it reads the password as the port).
        {"TOKENDEALER_REDIS_URL": "redis://:rd-s3cret/x@127.0.0.1:6379/0"},
        (),
        ("TOKENDEALER_REDIS_URL is not a usable Redis URL",),
    ),
    "settings value": (
        {"TOKENDEALER_RATE_LIMIT": "lots"},
        (),
        ("TOKENDEALER_RATE_LIMIT",),
    ),
    "database unreachable": (
        {"TOKENDEALER_DATABASE_URL": UNREACHABLE_PG},
        (),
        ("database unavailable",),
    ),
    "database timeout setting": (
        {"TOKENDEALER_DATABASE_TIMEOUT": "forever"},
        (),
        ("TOKENDEALER_DATABASE_TIMEOUT",),
    ),
}


def _serve(workdir: Path, env: dict[str, str], *args: str) -> Exited:
    argv = [tokendealer_executable(), "serve", "--port", str(free_port()), *args]
    return run_until_exit(argv, env, workdir, EXIT_BOUND)


WORKER_COUNTS = (1, 2)
SERVERS = ("uvicorn", "hypercorn")  # the first is the slowest to stop, started first


def _config_error(case: str, workers: int, workdir: Path) -> Exited:
    overrides, missing, _ = CONFIG_ERRORS[case]
    env = cli_env(workdir, **overrides)
    if missing:
        env["PYTHONPATH"] = str(missing_packages(workdir / "missing", *missing))
    return _serve(workdir, env, "--workers", str(workers))


def _busy_port(port: int, server: str, workers: int, workdir: Path) -> Exited:
    argv = [
        tokendealer_executable(),
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--server",
        server,
    ]
    return run_until_exit(argv, cli_env(workdir), workdir, EXIT_BOUND)


#: Imported by ``site`` at interpreter start (it is first on PYTHONPATH); takes redis
#: away only in multiprocessing's spawned children, i.e. the server's workers.
WORKERS_ONLY_SITECUSTOMIZE = """\
import sys
if "--multiprocessing-fork" in sys.argv:
    sys.modules["redis"] = None  # `import redis` now raises ImportError
"""


def _worker_failing(server: str, workdir: Path) -> Exited:
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WORKERS_ONLY_SITECUSTOMIZE)
    env = cli_env(workdir, TOKENDEALER_REDIS_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(site))
    return _serve(workdir, env, "--workers", "2", "--server", server)


@pytest.fixture(name="busy_ports", scope="module")
def _busy_ports() -> Iterator[Callable[[], int]]:
    """Loopback ports another process (here, the test) is listening on: each call of the
    function yielded opens one, open until the module's tests are done."""
    with ExitStack() as stack:

        def busy_port() -> int:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port: int = sock.getsockname()[1]
            return port

        yield busy_port


@dataclass(frozen=True)
class Run:
    result: Exited
    workdir: Path
    port: int | None = None  # the busy port it was given


Runs = dict[tuple[object, ...], Run]


@pytest.fixture(name="runs", scope="module")
def _runs(tmp_path_factory: pytest.TempPathFactory, busy_ports: Callable[[], int]) -> Runs:
    """Every ``serve`` run of this module, by key: ``("config", case, workers)``,
    ``("busy", server, workers)`` and ``("worker", server)``, a few at a time. The slowest
    (uvicorn's worker failure) is started first."""
    planned: dict[tuple[object, ...], tuple[Callable[[Path], Exited], int | None]] = {}
    for server in SERVERS:
        planned["worker", server] = (partial(_worker_failing, server), None)
    for case in CONFIG_ERRORS:
        for workers in WORKER_COUNTS:
            planned["config", case, workers] = (partial(_config_error, case, workers), None)
    for server in SERVERS:
        for workers in WORKER_COUNTS:
            port = busy_ports()
            planned["busy", server, workers] = (partial(_busy_port, port, server, workers), port)
    workdirs = {key: tmp_path_factory.mktemp("serve") for key in planned}  # not threadsafe
    # A run per core, plus one: uvicorn's worker failure mostly waits.
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) + 1) as pool:
        futures = {key: pool.submit(run, workdirs[key]) for key, (run, _) in planned.items()}
        return {
            key: Run(future.result(), workdirs[key], planned[key][1])
            for key, future in futures.items()
        }


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_configuration_error_is_one_line_before_any_worker(
    runs: Runs, case: str, workers: int
) -> None:
    """Non-zero exit within the bound, and stderr is exactly ``Error: <what is wrong>``:
    no traceback, no worker's log line, no secret from a URL."""
    result = runs["config", case, workers].result
    lines = result.stderr_lines()
    assert result.code != 0
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{result.stderr[-3000:]}"
    assert lines[0].startswith("Error: ")
    for fragment in CONFIG_ERRORS[case][2]:
        assert fragment in lines[0]
    assert "s3cret" not in result.stderr + result.stdout


def test_the_missing_package_simulation_is_real(tmp_path: Path) -> None:
    """The PYTHONPATH shim makes the interpreter behave as without the package."""
    env = cli_env(tmp_path, PYTHONPATH=str(missing_packages(tmp_path / "m", "redis")))
    code = "import tokendealer.ratelimit.redis_store"
    result = run_until_exit([sys.executable, "-c", code], env, tmp_path, EXIT_BOUND)
    assert result.code != 0
    assert "ModuleNotFoundError: No module named 'redis'" in result.stderr


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("server", SERVERS)
def test_busy_port_is_one_line_and_touches_nothing(runs: Runs, server: str, workers: int) -> None:
    """Both servers: ``Error: cannot listen on 127.0.0.1:PORT: address already in use``,
    non-zero; the address is taken before the store or the keys are touched."""
    run = runs["busy", server, workers]
    assert run.result.code != 0
    assert run.result.stderr_lines() == [
        f"Error: cannot listen on 127.0.0.1:{run.port}: address already in use"
    ]
    assert not (run.workdir / "keys").exists() and not (run.workdir / "td.db").exists()


# -- a worker failing at startup anyway: no restart loop -------------------------------


def test_worker_exit_status_is_uvicorns_startup_failure() -> None:
    """The status a worker exits with when its app cannot be built is the one on which
    uvicorn's supervisor stops instead of restarting the worker."""
    assert STARTUP_FAILURE == UVICORN_STARTUP_FAILURE


@pytest.mark.parametrize("server", SERVERS)
def test_worker_failing_at_startup_stops_serve(runs: Runs, server: str) -> None:
    """If a worker fails to start although the parent's checks passed (here redis is
    taken away from the workers only, by a sitecustomize, the parent having it), serve
    stops by itself with a non-zero status, each worker logging one line, instead of
    starting workers again and again.

    Uvicorn takes ~5 s to stop: its supervisor checks a worker by a ping answered within
    ``timeout_worker_healthcheck`` (5 s, not a setting of ours); a worker that is exiting
    never answers, and the pipe gives no end-of-file, so the supervisor waits it out."""
    result = runs["worker", server].result
    if server == "uvicorn":
        assert result.code == STARTUP_FAILURE
    # else: Hypercorn 0.18's run() returns the status of the workers it terminated after
    # the failure, not of the worker that failed: often 0. It stops all the same.
    assert "Traceback" not in result.stderr
    failures = [line for line in result.stderr_lines() if "configuration_error" in line]
    assert 1 <= len(failures) <= 2, result.stderr[-3000:]
    assert all("TOKENDEALER_REDIS_URL needs the redis package" in line for line in failures)
