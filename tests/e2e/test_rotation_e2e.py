"""Key rotation on real servers (issue 5): zero failed verifications while rotating,
activating, retiring and pruning, on two workers and across two server processes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.servers import ServerProcess, run_server
from tokendealer.library.verify import TokenVerifier

pytestmark = pytest.mark.e2e

AUDIENCE = "https://api.test"


def fetch_token(http: httpx.Client, server: ServerProcess, secret: str) -> str:
    response = http.post(
        server.url + "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=("svc", secret),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def run_operations(
    server: ServerProcess, steps: list[tuple[float, tuple[str, ...]]], log: list[str]
) -> None:
    start = time.monotonic()
    for at, args in steps:
        time.sleep(max(0.0, at - (time.monotonic() - start)))
        result = server.cli(*args, check=False)
        log.append(
            f"{args}: rc={result.code} {result.stdout.strip()} {result.stderr.strip()}"
        )


def test_rotation_under_load_with_two_workers(tmp_path: Path) -> None:
    """While keys rotate, activate, retire and get pruned, every token issued verifies at
    /verify_token and with the TokenVerifier library; no request is answered 5xx."""
    env = {
        "TOKENDEALER_TOKEN_TTL": "3",
        "TOKENDEALER_LEEWAY": "1",
        "TOKENDEALER_JWKS_MAX_AGE": "2",
        # This test is about keys, not limits: let the loop run at full speed.
        "TOKENDEALER_RATE_LIMIT": "1000000/minute",
        "TOKENDEALER_VERIFY_RATE_LIMIT": "1000000/minute",
    }
    with run_server(tmp_path, workers=2, env=env) as server:
        secret = server.add_client("svc", "--audience", AUDIENCE)
        steps = [
            (0.5, ("keys", "rotate")),  # next now, active at ~2.5 s (the JWKS max-age)
            (4.0, ("keys", "rotate")),  # active at ~6 s; the first key retires then
            (9.0, ("keys", "prune")),  # first key retired at ~2.5 s + 4 s lifetime: pruned
            (11.5, ("keys", "prune")),  # second key retired at ~6 s + 4 s: pruned
        ]
        ops_log: list[str] = []
        operations = threading.Thread(target=run_operations, args=(server, steps, ops_log))
        outcomes: Counter[str] = Counter()
        kids: set[str] = set()
        verifier = TokenVerifier(server.url, AUDIENCE, min_cache=1, refetch_cooldown=1)
        with httpx.Client(timeout=10) as http:
            operations.start()
            deadline = time.monotonic() + 13.5
            while time.monotonic() < deadline:
                token = fetch_token(http, server, secret)
                kids.add(jwt.get_unverified_header(token)["kid"])
                remote = http.post(server.url + "/verify_token", data={"access_token": token})
                outcomes[f"verify_token {remote.status_code}"] += 1
                try:
                    verifier.verify_sync(token)
                    outcomes["library ok"] += 1
                except Exception as exc:
                    outcomes[f"library {type(exc).__name__}: {exc}"] += 1
                health = http.get(server.url + "/healthz")
                outcomes[f"healthz {health.status_code}"] += 1
            operations.join()
        listing = server.cli("keys", "list", "--json").stdout
    assert all("rc=0" in line for line in ops_log), ops_log
    assert set(outcomes) == {"verify_token 200", "library ok", "healthz 200"}, outcomes
    assert outcomes["library ok"] > 50
    assert len(kids) == 3, "tokens were signed by all three keys in turn"
    assert listing.count('"kid"') == 1, "both retired keys were pruned"


def test_two_servers_sharing_keys_and_store(tmp_path: Path) -> None:
    """Two server processes on different ports sharing one keys directory and one store:
    a token from either verifies at the other before, during and after a rotation."""
    issuer = {"TOKENDEALER_ISSUER": "http://dealer.test", "TOKENDEALER_JWKS_MAX_AGE": "2"}
    with run_server(tmp_path, env=issuer) as a, run_server(tmp_path, env=issuer) as b:
        secret = a.add_client("svc")
        failures: list[str] = []
        with httpx.Client(timeout=10) as http:

            def cross_check(phase: str) -> None:
                for issuer_srv, verifier_srv in ((a, b), (b, a)):
                    token = fetch_token(http, issuer_srv, secret)
                    response = http.post(
                        verifier_srv.url + "/verify_token", data={"access_token": token}
                    )
                    if response.status_code != 200:
                        failures.append(f"{phase}: {response.status_code} {response.text}")

            cross_check("before")
            rotated = a.cli("keys", "rotate").stdout.strip()
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                cross_check("during")
            cross_check("after")
            kids = {
                jwt.get_unverified_header(fetch_token(http, srv, secret))["kid"] for srv in (a, b)
            }
        assert failures == []
        assert kids == {rotated}, "both servers sign with the rotated key after activation"
