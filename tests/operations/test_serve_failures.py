"""``tokendealer serve`` when it cannot run: one line and a non-zero exit, by itself.

Every test runs the real console script as a subprocess, with one and with two workers,
and requires it to exit on its own within ``EXIT_BOUND`` seconds: a worker restart loop
(uvicorn restarts a worker that dies) would instead run until killed. Configuration
errors and a busy port are found by the parent, before any worker starts, so stderr holds
exactly one ``Error: ...`` line.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


@pytest.fixture(name="config_runs", scope="module")
def _config_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Exited]:
    """Every CONFIG_ERRORS case served with 1 and 2 workers, a few at a time."""

    def one(case: str, workers: int, workdir: Path) -> Exited:
        overrides, missing, _ = CONFIG_ERRORS[case]
        env = cli_env(workdir, **overrides)
        if missing:
            env["PYTHONPATH"] = str(missing_packages(workdir / "missing", *missing))
        return _serve(workdir, env, "--workers", str(workers))

    runs = [(case, workers) for case in CONFIG_ERRORS for workers in (1, 2)]
    workdirs = [tmp_path_factory.mktemp("config") for _ in runs]  # mktemp is not threadsafe
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {run: pool.submit(one, *run, d) for run, d in zip(runs, workdirs, strict=True)}
        return {run: future.result() for run, future in futures.items()}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_configuration_error_is_one_line_before_any_worker(
    config_runs: dict[tuple[str, int], Exited], case: str, workers: int
) -> None:
    """Non-zero exit within the bound, and stderr is exactly ``Error: <what is wrong>``:
    no traceback, no worker's log line, no secret from a URL."""
    result = config_runs[case, workers]
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


@pytest.fixture(name="busy_port")
def _busy_port() -> Iterator[int]:
    """A loopback port another process (here, the test) is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        yield port


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_busy_port_is_one_line_and_touches_nothing(
    tmp_path: Path, busy_port: int, server: str, workers: int
) -> None:
    """Both servers: ``Error: cannot listen on 127.0.0.1:PORT: address already in use``,
    non-zero; the address is taken before the store or the keys are touched."""
    argv = [
        tokendealer_executable(),
        "serve",
        "--port",
        str(busy_port),
        "--workers",
        str(workers),
        "--server",
        server,
    ]
    result = run_until_exit(argv, cli_env(tmp_path), tmp_path, EXIT_BOUND)
    assert result.code != 0
    assert result.stderr_lines() == [
        f"Error: cannot listen on 127.0.0.1:{busy_port}: address already in use"
    ]
    assert not (tmp_path / "keys").exists() and not (tmp_path / "td.db").exists()


# -- a worker failing at startup anyway: no restart loop -------------------------------

#: Imported by ``site`` at interpreter start (it is first on PYTHONPATH); takes redis
#: away only in multiprocessing's spawned children, i.e. the server's workers.
WORKERS_ONLY_SITECUSTOMIZE = """\
import sys
if "--multiprocessing-fork" in sys.argv:
    sys.modules["redis"] = None  # `import redis` now raises ImportError
"""


def test_worker_exit_status_is_uvicorns_startup_failure() -> None:
    """The status a worker exits with when its app cannot be built is the one on which
    uvicorn's supervisor stops instead of restarting the worker."""
    assert STARTUP_FAILURE == UVICORN_STARTUP_FAILURE


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_worker_failing_at_startup_stops_serve(tmp_path: Path, server: str) -> None:
    """If a worker fails to start although the parent's checks passed (here redis is
    taken away from the workers only, by a sitecustomize, the parent having it), serve
    stops by itself with a non-zero status, each worker logging one line, instead of
    starting workers again and again."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WORKERS_ONLY_SITECUSTOMIZE)
    env = cli_env(tmp_path, TOKENDEALER_REDIS_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(site))
    result = _serve(tmp_path, env, "--workers", "2", "--server", server)
    if server == "uvicorn":
        assert result.code == STARTUP_FAILURE
    # else: Hypercorn 0.18's run() returns the status of the workers it terminated after
    # the failure, not of the worker that failed: often 0. It stops all the same.
    assert "Traceback" not in result.stderr
    failures = [line for line in result.stderr_lines() if "configuration_error" in line]
    assert 1 <= len(failures) <= 2, result.stderr[-3000:]
    assert all("TOKENDEALER_REDIS_URL needs the redis package" in line for line in failures)
