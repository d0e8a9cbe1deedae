"""The operator's view of real ``tokendealer serve`` processes (issue 14): metrics summed
over two workers, and a log that holds no secret, assertion, token or session."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import ServerProcess, run_server
from tests.support.tokens import basic

pytestmark = pytest.mark.e2e

TOKENS = "tokendealer_tokens_issued_total"


def fresh(server: ServerProcess) -> httpx.Client:
    """A client that opens a new connection for every request (each may reach either
    worker)."""
    return httpx.Client(
        base_url=server.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    )


def tokens_by_worker(directory: Path, client_id: str) -> dict[str, float]:
    """What each worker's own metric file says it issued to ``client_id``."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for key, count, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == TOKENS and labels == {"client_id": client_id}:
                counts[path.stem.removeprefix("counter_")] = count
    return counts


def scraped(http: httpx.Client, name: str, **labels: str) -> float:
    response = http.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_two_workers_add_up_their_metrics(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with run_server(tmp_path / "srv", workers=2, env=env) as server:
        secret = server.add_client("svc", "--scope", "read")
        issued = 0
        with fresh(server) as http:
            # Until both workers have issued some (new connections spread over them).
            while len([n for n in tokens_by_worker(directory, "svc").values() if n]) < 2:
                assert issued < 400, "every connection went to one worker"
                for _ in range(10):
                    response = http.post(
                        "/oauth/token",
                        data={"grant_type": "client_credentials"},
                        headers=basic("svc", secret),
                    )
                    assert response.status_code == 200
                    issued += 1
            per_worker = tokens_by_worker(directory, "svc")
            assert sum(per_worker.values()) == issued and max(per_worker.values()) < issued
            # Whichever worker answers the scrape, it reports the sum.
            for _ in range(6):
                assert scraped(http, TOKENS, client_id="svc") == issued
            assert scraped(http, "tokendealer_store_up") == 1


def _assertion(key: ec.EllipticCurvePrivateKey, server: ServerProcess) -> str:
    now = int(time.time())
    claims = {
        "iss": "keyed",
        "sub": "keyed",
        "aud": server.env["TOKENDEALER_ISSUER"],
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, key, algorithm="ES256")


def test_the_log_holds_no_secret_token_assertion_or_session(tmp_path: Path) -> None:
    """Every credential kind goes through a server with its access log on; then each
    secret, token, assertion, password and session cookie used is looked for in every
    line the server wrote. Each line is JSON, and the lines of one request share its id."""
    workdir = tmp_path / "srv"
    with run_server(workdir, env={"TOKENDEALER_ACCESS_LOG": "true"}) as server:
        used: list[str] = []
        secret = server.add_client("svc", "--scope", "read")
        issuer = server.env["TOKENDEALER_ISSUER"]
        admin_secret = server.add_client(
            "ops", "--scope", "tokendealer:admin", "--audience", issuer
        )
        key = ec.generate_private_key(ec.SECP256R1())
        pem = workdir / "keyed.pem"
        pem.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        server.cli(
            "clients", "add", "keyed", "--auth-method", "private_key_jwt", "--jwk-file", str(pem)
        )
        password = "correct horse battery " + secrets.token_hex(4)
        server.cli("admins", "add", "alice", "--password-stdin", input=password + "\n")
        used += [secret, admin_secret, password, "wrong-" + secret]
        with httpx.Client(base_url=server.url, timeout=10) as http:

            def token(**form: Any) -> httpx.Response:
                return http.post("/oauth/token", data={"grant_type": "client_credentials", **form})

            basic_token = http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers=basic("svc", secret),
            ).json()["access_token"]
            post_token = token(client_id="svc", client_secret=secret).json()["access_token"]
            assert token(client_id="svc", client_secret="wrong-" + secret).status_code == 401
            assertion = _assertion(key, server)
            keyed = token(
                client_id="keyed",
                client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                client_assertion=assertion,
            )
            assert keyed.status_code == 200, keyed.text
            replayed = token(
                client_id="keyed",
                client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                client_assertion=assertion,
            )
            assert replayed.status_code == 401
            keyed_token = keyed.json()["access_token"]
            checked = http.post("/verify_token", data={"access_token": basic_token})
            assert checked.status_code == 200
            introspected = http.post(
                "/oauth/introspect", data={"token": post_token}, headers=basic("svc", secret)
            )
            assert introspected.json()["active"] is True
            revoked = http.post(
                "/oauth/revoke", data={"token": post_token}, headers=basic("svc", secret)
            )
            assert revoked.status_code == 200
            admin_token = token(
                client_id="ops", client_secret=admin_secret, scope="tokendealer:admin"
            ).json()["access_token"]
            listed = http.get(
                "/admin/api/v1/clients", headers={"Authorization": "Bearer " + admin_token}
            )
            assert listed.status_code == 200
            signed_in = http.post("/admin/login", data={"username": "alice", "password": password})
            assert signed_in.status_code == 303
            session = next(iter(http.cookies.values()))
            assert http.get("/admin/").status_code == 200
            used += [basic_token, post_token, assertion, keyed_token, admin_token, session]
        log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert len(requests) >= 12
    for secret_text in used:
        assert secret_text not in log
        # Nor a recognisable part of it (a token's signature, say).
        assert secret_text[-24:] not in log
    assert "Bearer" not in log and "Basic " not in log
    # The failure's own line carries its request's id, as the access line does.
    [failure] = [
        line
        for line in lines
        if line.get("event") == "client_authentication_failed"
        and line.get("reason") == "wrong secret"
    ]
    [access] = [line for line in requests if line["request_id"] == failure["request_id"]]
    assert access["status"] == 401 and access["error"] == "invalid_client"
    assert {line["client_id"] for line in requests if "client_id" in line} >= {
        "svc",
        "keyed",
        "ops",
    }
