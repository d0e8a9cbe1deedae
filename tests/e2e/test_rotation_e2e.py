"""Key rotation on real servers (issue 5): zero failed verifications while rotating,
activating, retiring and pruning, on two workers and across two server processes.

The operations follow the keys' own timestamps, not a fixed schedule: a rotation is
followed by the next once its key signs, and a retired key is pruned as soon as its
tokens can no longer be valid. The lifetimes are shrunk through the settings so that a
whole cycle takes seconds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.cli import Result
from tests.support.servers import ServerProcess, run_server, wait_until
from tokendealer.keys.keyset import load_keyset
from tokendealer.library.verify import TokenVerifier

pytestmark = pytest.mark.e2e

AUDIENCE = "https://api.test"
#: Seconds from ``keys rotate`` to the new key signing (the JWKS max-age, the default of
#: ``--activate-after``). More than the workers' key watch interval (1 s), so that every
#: worker has loaded the new key before any of them signs with it.
ACTIVATE_AFTER = 2
TOKEN_TTL = 2
LEEWAY = 1
#: How long after it retires a key may still have valid tokens: ``keys prune`` keeps it
#: until then.
TOKEN_LIFETIME = TOKEN_TTL + LEEWAY
#: Bound on waiting for one step of the rotation.
STEP_TIMEOUT = 15.0


def activation(server: ServerProcess, kid: str) -> float:
    """When key KID signs (and the key before it retires): its manifest timestamp."""
    keyset = load_keyset(Path(server.env["TOKENDEALER_KEYS_DIR"]))
    (key,) = [key for key in keyset.keys if key.kid == kid]
    return key.activate_at


def wait_for_clock(moment: float, what: str) -> None:
    """Until the wall clock (the one key states are computed from) passes ``moment``."""
    wait_until(lambda: time.time() > moment, timeout=STEP_TIMEOUT, what=what)


def rotate_and_prune(server: ServerProcess, done: dict[str, Result]) -> None:
    """Rotate twice, then prune each retired key once its last token has expired; each
    command's result goes into ``done`` under its step's name."""
    done["rotate"] = server.cli("keys", "rotate", check=False)  # signs ACTIVATE_AFTER s later
    first_retired = activation(server, done["rotate"].stdout.strip())
    wait_for_clock(first_retired, "the second key signing")
    done["rotate again"] = server.cli("keys", "rotate", check=False)  # none pending now
    second_retired = activation(server, done["rotate again"].stdout.strip())
    wait_for_clock(first_retired + TOKEN_LIFETIME, "the first key's tokens expired")
    done["prune"] = server.cli("keys", "prune", check=False)
    wait_for_clock(second_retired + TOKEN_LIFETIME, "the second key's tokens expired")
    done["prune again"] = server.cli("keys", "prune", check=False)


def published_kids(url: str) -> set[str]:
    """The kids the server publishes, asked on a new connection (so either worker answers)."""
    jwks = httpx.get(url + "/.well-known/jwks.json", headers={"Connection": "close"}).json()
    return {key["kid"] for key in jwks["keys"]}


def test_rotation_under_load_with_two_workers(tmp_path: Path) -> None:
    """While keys rotate, activate, retire and get pruned, every token issued verifies at
    /verify_token and with the TokenVerifier library; no request is answered 5xx."""
    env = {
        "TOKENDEALER_TOKEN_TTL": str(TOKEN_TTL),
        "TOKENDEALER_LEEWAY": str(LEEWAY),
        "TOKENDEALER_JWKS_MAX_AGE": str(ACTIVATE_AFTER),
        # This test is about keys, not limits: let the loop run at full speed.
        "TOKENDEALER_RATE_LIMIT": "1000000/minute",
        "TOKENDEALER_VERIFY_RATE_LIMIT": "1000000/minute",
    }
    with run_server(tmp_path, workers=2, env=env) as server:
        secret = server.add_client("svc", "--audience", AUDIENCE)
        (first,) = published_kids(server.url)
        done: dict[str, Result] = {}
        failed: list[str] = []

        def operate() -> None:
            try:
                rotate_and_prune(server, done)
            except Exception as exc:  # reported below, with the steps done
                failed.append(f"{type(exc).__name__}: {exc}")

        operations = threading.Thread(target=operate)
        outcomes: Counter[str] = Counter()
        kids: set[str] = set()
        verifier = TokenVerifier(server.url, AUDIENCE, min_cache=1, refetch_cooldown=1)
        # ``Connection: close``: successive requests reach either worker.
        with httpx.Client(timeout=10, headers={"Connection": "close"}) as http:

            def exchange() -> None:
                """One token, verified by the server and by the library; one health check."""
                token = server.token("svc", secret, http=http)
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

            operations.start()
            deadline = time.monotonic() + 4 * STEP_TIMEOUT
            while operations.is_alive() and time.monotonic() < deadline:
                exchange()
            operations.join(STEP_TIMEOUT)
            # Go on until both workers have dropped the pruned keys (each loads the
            # manifest within a second): several new connections in a row see one key.
            seen_one_key = 0
            while seen_one_key < 6 and time.monotonic() < deadline:
                exchange()
                seen_one_key = seen_one_key + 1 if len(published_kids(server.url)) == 1 else 0
        listing = server.cli("keys", "list", "--json").json()
    assert not operations.is_alive(), done
    assert failed == [], done
    assert list(done) == ["rotate", "rotate again", "prune", "prune again"], done
    assert all(result.code == 0 for result in done.values()), done
    second, third = done["rotate"].stdout.strip(), done["rotate again"].stdout.strip()
    # Each prune removed the key whose tokens had all expired; the first one kept the
    # second key, retired too recently.
    assert done["prune"].stdout.strip() == f"removed {first}", done["prune"]
    assert second in done["prune"].stderr, done["prune"]
    assert done["prune again"].stdout.strip() == f"removed {second}", done["prune again"]
    assert set(outcomes) == {"verify_token 200", "library ok", "healthz 200"}, outcomes
    assert outcomes["library ok"] > 50
    assert kids == {first, second, third}, "tokens were signed by all three keys in turn"
    assert [key["kid"] for key in listing] == [third], "both retired keys were pruned"


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
                    token = issuer_srv.token("svc", secret, http=http)
                    response = http.post(
                        verifier_srv.url + "/verify_token", data={"access_token": token}
                    )
                    if response.status_code != 200:
                        failures.append(f"{phase}: {response.status_code} {response.text}")

            cross_check("before")
            rotated = a.cli("keys", "rotate").stdout.strip()
            # Until the new key signs: it is published, the old one signs.
            signs_at = activation(a, rotated)
            while time.time() <= signs_at:
                cross_check("during")
            cross_check("after")
            kids = {
                jwt.get_unverified_header(srv.token("svc", secret, http=http))["kid"]
                for srv in (a, b)
            }
        assert failures == []
        assert kids == {rotated}, "both servers sign with the rotated key after activation"
