"""examples/: dealer, data service and worker as real processes, the book's whole flow.

Why the data service rejects a token the worker still holds: it enforces a maximum token
age (``DATA_MAX_TOKEN_AGE=2``) while the dealer issues one-hour tokens, as a service
holding sensitive data may demand fresh tokens. The worker's second write comes after
the token is older than that; the data service answers 401 ``invalid_token``, and
``TokenAuth`` fetches a new token once and retries, so the write succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import free_port
from tests.support.servers import ServerProcess, run_server, wait_until
from tokendealer.library.client import TokenClient

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AUDIENCE = "data-service"
MAX_TOKEN_AGE = 2


@pytest.fixture(name="dealer", scope="module")
def _dealer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("dealer"), workers=1) as server:
        yield server


class DataService:
    def __init__(self, url: str, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.url = url
        self.proc = proc
        self.log_path = log_path

    def records(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in self.log_path.read_text().splitlines()
            if line.startswith("{")
        ]


@pytest.fixture(name="data_service", scope="module")
def _data_service(
    dealer: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DataService]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("data") / "data_service.log"
    env = {
        **os.environ,
        "DATA_ISSUER": dealer.url,
        "DATA_AUDIENCE": AUDIENCE,
        "DATA_MAX_TOKEN_AGE": str(MAX_TOKEN_AGE),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "data_service.py"), "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_path)
        yield DataService(url, proc, log_path)
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[str], log_path: Path) -> None:
    with httpx.Client(timeout=2) as http:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"data service exited: {log_path.read_text()[-2000:]}")
            with suppress(httpx.TransportError):
                return http.get(url + "/healthz").status_code == 200
            return False

        try:
            wait_until(healthy, timeout=30, what="the data service answering /healthz")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}; its log: {log_path.read_text()[-2000:]}") from None


def _run_worker(
    dealer: ServerProcess, data_service: DataService, secret: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKER_CLIENT_SECRET": secret}
    return subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "worker.py"),
            "--dealer",
            dealer.url,
            "--data-url",
            data_service.url,
            "--audience",
            AUDIENCE,
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_worker_writes_and_refetches_after_rejection(
    dealer: ServerProcess, data_service: DataService
) -> None:
    """The worker writes; when its cached token is refused (too old) it refetches once."""
    secret = dealer.add_client("worker", "--scope", "write", "--audience", AUDIENCE)
    result = _run_worker(
        dealer,
        data_service,
        secret,
        "--client-id",
        "worker",
        "--items",
        "2",
        # The token's age counts from its iat, a whole second no later than its minting:
        # past MAX_TOKEN_AGE for certain once this much time has passed since it was fetched.
        "--interval",
        str(MAX_TOKEN_AGE + 0.1),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # Write 1 with the first token; write 2 came after the token in hand was older than
    # the data service accepts: refused, refetched, retried.
    assert lines == [
        {"item": 1, "status": 201, "token_fetches": 1},
        {"item": 2, "status": 201, "token_fetches": 2},
    ]
    posts = [
        r
        for r in data_service.records()
        if r.get("event") == "request" and r["method"] == "POST" and r["path"] == "/items"
    ]
    statuses = [r["status"] for r in posts]
    assert statuses[-3:] == [201, 401, 201]
    first, refused, retried = posts[-3:]
    assert first["client_id"] == retried["client_id"] == "worker"
    assert refused["jti"] is None  # refused before the handler: no claims were accepted
    assert 'error="invalid_token"' in refused["challenge"]
    assert "older than this service accepts" in refused["challenge"]
    assert first["jti"] != retried["jti"]  # a new token, not the refused one again
    for output in (result.stdout, result.stderr, data_service.log_path.read_text()):
        assert secret not in output and "eyJ" not in output  # no secret, no JWT


def test_data_service_answers_rfc_6750(dealer: ServerProcess, data_service: DataService) -> None:
    """Real tokens: no token 401, read without the scope 403, a reader may list items."""
    writer_secret = dealer.add_client("writer", "--scope", "write", "--audience", AUDIENCE)
    reader_secret = dealer.add_client("reader", "--scope", "read", "--audience", AUDIENCE)
    token_url = dealer.url + "/oauth/token"
    writer = TokenClient(token_url, "writer", writer_secret, audience=AUDIENCE)
    reader = TokenClient(token_url, "reader", reader_secret, audience=AUDIENCE)
    with httpx.Client(base_url=data_service.url) as http:
        anonymous = http.get("/items")
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"] == f'Bearer realm="{AUDIENCE}"'

        writer_token = writer.get_token_sync()
        refused = http.get("/items", headers={"Authorization": f"Bearer {writer_token}"})
        assert refused.status_code == 403
        assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]

        reader_token = reader.get_token_sync()
        listed = http.get("/items", headers={"Authorization": f"Bearer {reader_token}"})
        assert listed.status_code == 200 and isinstance(listed.json()["items"], list)
        not_allowed = http.post(
            "/items", json={}, headers={"Authorization": f"Bearer {reader_token}"}
        )
        assert not_allowed.status_code == 403


def test_worker_with_wrong_secret_fails_cleanly(
    dealer: ServerProcess, data_service: DataService
) -> None:
    """A worker the dealer does not know reports invalid_client and exits non-zero."""
    result = _run_worker(
        dealer, data_service, "not-the-secret", "--client-id", "stranger", "--items", "1"
    )
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"item": 1, "token_error": "invalid_client"}
