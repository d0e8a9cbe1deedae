"""Registering clients without secrets from the command line: ``clients add
--auth-method private_key_jwt`` with ``--jwk-file`` (a JWK, a JWK Set or a PEM public key)
or ``--jwks-uri``, and ``clients update`` replacing the keys. The client then gets tokens
with assertions signed by its own key, and never with a secret."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.support.cli import CLI, cli_env
from tests.support.environment import ISSUER, QuartClient
from tests.support.keyserver import key_set, public_jwk
from tests.support.tokens import basic, unverified
from tokendealer.protocol.assertions import ASSERTION_TYPE
from tokendealer.settings import Settings

EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def public_pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def signed(client_id: str, key: Any, alg: str, kid: str | None = None) -> dict[str, str]:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }
    headers = {"kid": kid} if kid else None
    return {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": jwt.encode(claims, key, algorithm=alg, headers=headers),
    }


@pytest.fixture(name="cli")
def _cli(tmp_path: Path) -> CLI:
    cli = CLI(cli_env(tmp_path))
    cli.create_database()
    return cli


async def test_a_client_registered_with_a_pem_key_gets_tokens_with_it(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    cli = CLI.for_settings(settings)
    pem = tmp_path / "worker.pem"
    pem.write_text(public_pem(EC_KEY))
    added = await asyncio.to_thread(
        cli.ok,
        "clients",
        "add",
        "worker",
        "--scope",
        "jobs",
        "--auth-method",
        "private_key_jwt",
        "--jwk-file",
        str(pem),
    )
    assert "client_secret" not in added.stdout + added.stderr
    assert "auth_method:   private_key_jwt" in added.stdout
    response = await client.post("/oauth/token", form=signed("worker", EC_KEY, "ES256"))
    assert response.status_code == 200, await response.get_data(as_text=True)
    _, claims = unverified((await response.get_json())["access_token"])
    assert claims["client_id"] == "worker" and claims["scope"] == "jobs"
    # No secret opens it: not even an empty one.
    for secret in ("", "guess"):
        refused = await client.post(
            "/oauth/token",
            form={"grant_type": "client_credentials"},
            headers=basic("worker", secret),
        )
        assert refused.status_code == 401
    shown = (await asyncio.to_thread(cli.ok, "clients", "show", "worker", "--json")).json()
    assert shown["auth_method"] == "private_key_jwt" and shown["jwks_uri"] is None
    [jwk] = shown["jwks"]["keys"]
    assert jwk["kty"] == "EC" and jwk["kid"] and "d" not in jwk
    refused_rotation = await asyncio.to_thread(cli.fails, "clients", "rotate-secret", "worker")
    refused_rotation.assert_one_line_error("has no secret")


async def test_update_replaces_the_keys(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    cli = CLI.for_settings(settings)
    first = tmp_path / "first.json"
    first.write_text(json.dumps(public_jwk(EC_KEY, "one")))
    await asyncio.to_thread(
        cli.ok,
        "clients",
        "add",
        "worker",
        "--auth-method",
        "private_key_jwt",
        "--jwk-file",
        str(first),
    )
    second = tmp_path / "second.json"
    second.write_text(key_set((ED_KEY, "two")))
    updated = await asyncio.to_thread(
        cli.ok, "clients", "update", "worker", "--jwk-file", str(second)
    )
    assert "keys" in updated.stdout
    old = await client.post("/oauth/token", form=signed("worker", EC_KEY, "ES256", "one"))
    new = await client.post("/oauth/token", form=signed("worker", ED_KEY, "EdDSA", "two"))
    assert (old.status_code, new.status_code) == (401, 200)
    [event] = (
        await asyncio.to_thread(cli.ok, "audit", "--action", "client.update", "--json")
    ).json()
    assert event["details"]["changed"]["keys"]["to"]["jwks"] == ["two"]


@pytest.mark.parametrize(
    ("args", "fragment", "option"),
    [
        (("--auth-method", "private_key_jwt"), "a jwks_uri or keys", "--jwk-file"),
        (
            ("--auth-method", "private_key_jwt", "--jwks-uri", "ftp://x"),
            "http(s) URL",
            "--jwks-uri",
        ),
        (("--jwks-uri", "https://keys.test/jwks"), "private_key_jwt clients", "--jwks-uri"),
        (
            ("--auth-method", "private_key_jwt", "--jwks-uri", "http://[::1"),
            "http(s) URL",
            "--jwks-uri",
        ),
        (
            ("--auth-method", "private_key_jwt", "--jwks-uri", "https://k.test/a b"),
            "http(s) URL",
            "--jwks-uri",
        ),
        (
            ("--auth-method", "private_key_jwt", "--jwks-uri", "https://k.test:x/"),
            "http(s) URL",
            "--jwks-uri",
        ),
        (("--auth-method", "private_key_jwt", "--jwk-file", "PRIVATE"), "private", "--jwk-file"),
        (("--auth-method", "private_key_jwt", "--jwk-file", "GARBAGE"), "not a JWK", "--jwk-file"),
    ],
)
def test_bad_keys_are_one_line_and_register_nothing(
    cli: CLI, tmp_path: Path, args: tuple[str, ...], fragment: str, option: str
) -> None:
    files = {
        "PRIVATE": EC_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "GARBAGE": "hello",
    }
    resolved = []
    for arg in args:
        if arg in files:
            path = tmp_path / f"{arg}.pem"
            path.write_text(files[arg])
            arg = str(path)
        resolved.append(arg)
    result = cli.fails("clients", "add", "worker", *resolved)
    result.assert_one_line_error(fragment)
    assert option in result.stderr
    assert cli.ok("clients", "list", "--json").json() == []


def test_a_secret_client_keeps_its_method(cli: CLI, tmp_path: Path) -> None:
    cli.add("svc")
    keys = tmp_path / "keys.json"
    keys.write_text(key_set((EC_KEY, "k")))
    cli.fails("clients", "update", "svc", "--jwk-file", str(keys)).assert_one_line_error(
        "keeps the method it was registered with"
    )
