"""``tokendealer apply FILE``: a file listing clients is made true, through the real CLI.

Missing clients are created (secrets printed once, or written to a new 0600 file),
changed ones updated, the others left alone; ``--prune`` removes the unlisted;
``--dry-run`` and a bad file change nothing; every change is in the audit trail.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import pwd
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.cli import CLI, cli_env
from tests.support.environment import ISSUER, QuartClient
from tests.support.keyserver import public_jwk
from tests.support.tokens import basic, get_token, unverified
from tokendealer.admin import clients, declarative
from tokendealer.library.jwk import thumbprint_kid
from tokendealer.protocol.assertions import ASSERTION_TYPE
from tokendealer.settings import Settings
from tokendealer.store import Store

#: The module of the command (the package ``tokendealer.cli`` names the command ``apply``).
APPLY = importlib.import_module("tokendealer.cli.apply")
ACTOR = f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"
ROOT = Path(__file__).resolve().parents[2]

TWO = """\
clients:
  - client_id: svc-a
    scopes: [read]
    ttl: 60
    description: Service A
  - client_id: svc-b
    audiences: [https://b.test]
"""

#: A private_key_jwt client's key, the key that replaces it, and a private JWK (refused).
KEY = ec.generate_private_key(ec.SECP256R1())
NEW_KEY = ec.generate_private_key(ec.SECP256R1())
PRIVATE_JWK = {**ECAlgorithm.to_jwk(KEY, as_dict=True), "kid": "k1"}
KEY_URL = "https://signer.test/jwks.json"


def keyed(jwks: Any) -> str:
    """A file listing the secret client ``svc-a``, the private_key_jwt client ``signer``
    with the keys ``jwks`` (its line 7) and ``fetcher``, whose keys are at ``KEY_URL``."""
    return (
        "clients:\n"
        "  - client_id: svc-a\n"
        "  - client_id: signer\n"
        "    scopes: [jobs]\n"
        "    description: Signs its own assertions\n"
        "    auth_method: private_key_jwt\n"
        f"    jwks: {json.dumps(jwks)}\n"
        "  - client_id: fetcher\n"
        "    auth_method: private_key_jwt\n"
        f"    jwks_uri: {KEY_URL}\n"
    )


async def signed_token(client: QuartClient, client_id: str, key: Any, kid: str) -> Any:
    """A token request authenticated by an ES256 assertion (RFC 7523 §2.2) of ``key``."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now, "exp": now + 60}
    claims["jti"] = secrets.token_urlsafe(12)
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid}),
    }
    return await client.post("/oauth/token", form=form)


@pytest.fixture(name="cli")
def _cli(tmp_path: Path) -> CLI:
    """The CLI on a database that exists (management commands never create one)."""
    return CLI(cli_env(tmp_path), cwd=tmp_path).create_database()


def _file(directory: Path, text: str, name: str = "clients.yaml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def _state(cli: CLI) -> tuple[Any, Any]:
    """Everything apply could change: the clients and the audit trail."""
    return cli.listing(), cli.ok("audit", "--json").json()


def _secrets(stdout: str) -> dict[str, str]:
    """The ``CLIENT_ID: SECRET`` lines that follow the secrets heading."""
    _, _, block = stdout.partition("shown once (store them now):\n")
    return dict(line.split(": ", 1) for line in block.splitlines())


def _readme_example() -> str:
    """The example file of README.rst's "Declarative clients"."""
    readme = (ROOT / "README.rst").read_text()
    section = readme[readme.index("Declarative clients\n~~~") :]
    block = re.findall(r"::\n\n((?:    .*\n|\n)+)", section)[0]
    return "".join(line[4:] + "\n" for line in block.splitlines())


async def test_readme_example_creates_clients_whose_secrets_get_tokens(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    """The README's example file creates its two clients as written, prints each secret
    once, and those secrets get tokens carrying the listed policy; each creation is
    audited with the CLI's actor, without the secret."""
    cli = CLI.for_settings(settings)
    path = _file(tmp_path, _readme_example())
    out = (await cli.aok("apply", path)).stdout
    assert out.startswith(
        "create billing\ncreate reports\n2 created, 0 updated, 0 removed, 0 unchanged\n"
    )
    secrets = _secrets(out)
    assert sorted(secrets) == ["billing", "reports"]
    token = await get_token(client, "billing", secrets["billing"], scope="invoices:write")
    claims = unverified(token)[1]
    assert claims["scope"] == "invoices:write"
    assert claims["aud"] == "https://invoices.internal"
    assert claims["exp"] - claims["iat"] == 600
    await get_token(client, "reports", secrets["reports"])
    shown = (await cli.aok("clients", "show", "reports", "--json")).json()
    policy = {name: shown[name] for name in ("scopes", "audiences", "ttl", "description")}
    assert policy == {"scopes": [], "audiences": [], "ttl": None, "description": ""}
    events = (await cli.aok("audit", "--json")).json()
    assert [(e["action"], e["target"], e["actor"]) for e in events] == [
        ("client.create", "client:reports", ACTOR),
        ("client.create", "client:billing", ACTOR),
    ]
    assert not any(secret in json.dumps(events) for secret in secrets.values())


async def test_json_file_is_read_with_json_rules(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    """A ``.json`` file (tab-indented, JSON escapes) creates the same clients; ``--json``
    prints the actions and the secrets, which get tokens."""
    cli = CLI.for_settings(settings)
    text = (
        '[\n\t{"client_id": "svc-a", "scopes": ["read"], "ttl": 60,\n'
        '\t "description": "Service \\u00c5 \\ud83d\\ude00 a\\/b"},\n'
        '\t{"client_id": "svc-b", "audiences": ["https://b.test"]}\n]\n'
    )
    result = (await cli.aok("apply", _file(tmp_path, text, "clients.json"), "--json")).json()
    assert result["actions"] == [
        {"action": "create", "client_id": "svc-a"},
        {"action": "create", "client_id": "svc-b"},
    ]
    assert result["dry_run"] is False and result["unchanged"] == [] == result["unlisted"]
    token = await get_token(client, "svc-a", result["secrets"]["svc-a"])
    assert unverified(token)[1]["scope"] == "read"
    await get_token(client, "svc-b", result["secrets"]["svc-b"])
    shown = (await cli.aok("clients", "show", "svc-a", "--json")).json()
    assert shown["description"] == "Service Å 😀 a/b" and shown["ttl"] == 60


def test_second_run_changes_nothing(cli: CLI, tmp_path: Path) -> None:
    """Run twice, the second run reports every client unchanged, prints no secret and
    writes no audit event; YAML anchors and merge keys read as written."""
    path = _file(tmp_path, TWO + "  - <<: {scopes: [x, y]}\n    client_id: svc-c\n")
    first = cli.ok("apply", path)
    assert sorted(_secrets(first.stdout)) == ["svc-a", "svc-b", "svc-c"]
    before = _state(cli)
    assert [c["scopes"] for c in before[0]] == [["read"], [], ["x", "y"]]
    again = cli.ok("apply", path)
    assert again.stdout == "0 created, 0 updated, 0 removed, 3 unchanged\n"
    assert _state(cli) == before


async def test_a_private_key_jwt_client_is_created_without_a_secret_and_signs_for_tokens(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    """A client with its keys (a JWK Set) and one with their URL are created with no
    secret (only the secret client's is printed); assertions the listed key signs get
    tokens of the listed policy. A second run changes nothing."""
    cli = CLI.for_settings(settings)
    path = _file(tmp_path, keyed({"keys": [public_jwk(KEY, "k1")]}))
    out = (await cli.aok("apply", path)).stdout
    assert out.startswith("create svc-a\ncreate signer\ncreate fetcher\n3 created, 0 updated")
    assert sorted(_secrets(out)) == ["svc-a"]
    response = await signed_token(client, "signer", KEY, "k1")
    assert response.status_code == 200, await response.get_json()
    claims = unverified((await response.get_json())["access_token"])[1]
    assert (claims["client_id"], claims["scope"]) == ("signer", "jobs")
    refused = await client.post(
        "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic("signer", "")
    )
    assert refused.status_code == 401
    shown = {c["client_id"]: c for c in (await cli.aok("clients", "list", "--json")).json()}
    assert (shown["signer"]["auth_method"], shown["signer"]["jwks_uri"]) == (
        "private_key_jwt",
        None,
    )
    assert shown["signer"]["jwks"] == {"keys": [public_jwk(KEY, "k1")]}
    assert (shown["fetcher"]["jwks_uri"], shown["fetcher"]["jwks"]) == (KEY_URL, None)
    assert shown["svc-a"]["auth_method"] == "client_secret"

    before = (await cli.aok("clients", "list", "--json")).json()
    events = (await cli.aok("audit", "--json")).json()
    again = await cli.aok("apply", path)
    assert again.stdout == "0 created, 0 updated, 0 removed, 3 unchanged\n"
    assert (await cli.aok("clients", "list", "--json")).json() == before
    assert (await cli.aok("audit", "--json")).json() == events


async def test_changed_keys_in_the_file_replace_the_clients_keys(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    """Other keys in the file (a new kid, the same kid for another key, a single JWK,
    a URL for the set) are an update naming the keys by kid (and thumbprint when the kids
    alone read the same) or URL; the new key gets tokens, the old one no longer does."""
    cli = CLI.for_settings(settings)
    await cli.aok("apply", _file(tmp_path, keyed({"keys": [public_jwk(KEY, "k1")]})))
    assert (await signed_token(client, "signer", KEY, "k1")).status_code == 200

    out = await cli.aok("apply", _file(tmp_path, keyed({"keys": [public_jwk(NEW_KEY, "k2")]})))
    assert out.stdout.splitlines()[:2] == [
        "update signer: keys [k1] -> [k2]",
        "0 created, 1 updated, 0 removed, 2 unchanged",
    ]
    assert (await signed_token(client, "signer", NEW_KEY, "k2")).status_code == 200
    assert (await signed_token(client, "signer", KEY, "k1")).status_code == 401

    out = await cli.aok("apply", _file(tmp_path, keyed(public_jwk(KEY, "k2"))))
    old, new = (thumbprint_kid(public_jwk(key, "k2")) for key in (NEW_KEY, KEY))
    assert out.stdout.splitlines()[0] == f"update signer: keys [k2 ({old})] -> [k2 ({new})]"
    assert (await signed_token(client, "signer", KEY, "k2")).status_code == 200
    assert (await signed_token(client, "signer", NEW_KEY, "k2")).status_code == 401

    moved = keyed(public_jwk(KEY, "k2")).replace("jwks: {", "jwks_uri: https://k.test/ #")
    out = await cli.aok("apply", _file(tmp_path, moved))
    assert out.stdout.splitlines()[0] == "update signer: keys [k2] -> [https://k.test/]"
    # A kid cannot forge a line of the report.
    out = await cli.aok("apply", _file(tmp_path, keyed(public_jwk(KEY, "k3\nremove svc-a"))))
    assert out.stdout.splitlines()[:2] == [
        'update signer: keys [https://k.test/] -> ["k3\\nremove svc-a"]',
        "0 created, 1 updated, 0 removed, 2 unchanged",
    ]
    (event, *_) = (await cli.aok("audit", "--action", "client.update", "--json")).json()
    assert (event["target"], event["actor"]) == ("client:signer", ACTOR)
    assert list(event["details"]["changed"]) == ["keys"]


def test_a_change_of_method_is_refused_before_any_change(cli: CLI, tmp_path: Path) -> None:
    """A client listed with another method than it was registered with (the secret
    client svc-a with keys, the private_key_jwt client signer without) is refused in one
    line naming its line, dry run or not, and nothing changes."""
    keys = {"keys": [public_jwk(KEY, "k1")]}
    cli.ok("apply", _file(tmp_path, keyed(keys)))
    before = _state(cli)
    with_keys = (
        "  - client_id: svc-a\n    auth_method: private_key_jwt\n    jwks_uri: https://k.test/\n"
    )
    without_keys = keyed(keys).replace(
        "    auth_method: private_key_jwt\n    jwks: ", "    claims: "
    )
    for text, line, method in (
        (
            keyed(keys).replace("  - client_id: svc-a\n", with_keys),
            2,
            "client_secret, not private_key_jwt",
        ),
        (without_keys, 3, "private_key_jwt, not client_secret"),
    ):
        path = _file(tmp_path, text)
        for dry_run in ((), ("--dry-run",)):
            result = cli.fails("apply", path, *dry_run)
            result.assert_one_line_error(f"{path}:{line}: client ")
            result.assert_one_line_error(f"authenticates with {method}: a client keeps the method")
            assert result.stdout == ""
    assert _state(cli) == before


def test_update_sets_the_listed_fields_and_writes_client_update(cli: CLI, tmp_path: Path) -> None:
    """A changed client is updated in place (its secret kept), one line saying what
    changed; a field left out of the file means its empty value; the audit trail has
    the update with its differences."""
    cli.ok("apply", _file(tmp_path, TWO))
    created = cli.ok("clients", "show", "svc-a", "--json").json()["created_at"]
    changed = TWO.replace("[read]", "[read, write]").replace("    ttl: 60\n", "")
    changed = changed.replace("    audiences: [https://b.test]\n", "    description: B\n")
    out = cli.ok("apply", _file(tmp_path, changed)).stdout.splitlines()
    assert out == [
        "update svc-a: scopes [read] -> [read, write]; ttl 60 -> default",
        'update svc-b: audiences [https://b.test] -> []; description "" -> "B"',
        "0 created, 2 updated, 0 removed, 0 unchanged",
    ]
    a, b = cli.listing()
    assert (a["scopes"], a["ttl"], a["description"]) == (["read", "write"], None, "Service A")
    assert (b["audiences"], b["description"]) == ([], "B")
    assert cli.ok("clients", "show", "svc-a", "--json").json()["created_at"] == created
    update = cli.ok("audit", "--action", "client.update", "--json").json()
    assert [(e["target"], e["actor"]) for e in update] == [
        ("client:svc-b", ACTOR),
        ("client:svc-a", ACTOR),
    ]
    assert update[1]["details"] == {
        "changed": {
            "scopes": {"from": ["read"], "to": ["read", "write"]},
            "ttl": {"from": 60, "to": None},
        }
    }


def test_unlisted_clients_are_kept_unless_prune(cli: CLI, tmp_path: Path) -> None:
    """Without ``--prune`` a registered client the file does not list stays (and is
    named); with it, it is removed and the removal audited."""
    cli.add("legacy")
    path = _file(tmp_path, TWO)
    kept = cli.ok("apply", path).stdout.splitlines()
    assert "kept, not in the file: legacy (--prune removes them)" in kept
    assert [c["client_id"] for c in cli.listing()] == ["legacy", "svc-a", "svc-b"]
    pruned = cli.ok("apply", path, "--prune").stdout.splitlines()
    assert pruned == ["remove legacy", "0 created, 0 updated, 1 removed, 2 unchanged"]
    assert [c["client_id"] for c in cli.listing()] == ["svc-a", "svc-b"]
    (event,) = cli.ok("audit", "--action", "client.remove", "--json").json()
    assert (event["target"], event["actor"]) == ("client:legacy", ACTOR)


def test_dry_run_prints_the_plan_and_changes_nothing(cli: CLI, tmp_path: Path) -> None:
    """``--dry-run`` prints every planned action after a line saying nothing changed,
    and leaves the clients and the audit trail as they were."""
    cli.add("legacy")
    cli.add("svc-a", "--scope", "read")
    before = _state(cli)
    result = cli.ok("apply", _file(tmp_path, TWO), "--dry-run", "--prune")
    assert result.stdout.splitlines() == [
        "dry run: nothing was changed; the plan:",
        "create svc-b",
        'update svc-a: ttl default -> 60; description "" -> "Service A"',
        "remove legacy",
        "1 to create, 1 to update, 1 to remove, 0 unchanged",
    ]
    assert _state(cli) == before


BAD_FILES = {
    "yaml syntax": (
        "- client_id: a\n- client_id: b\n  scopes: [x\n",
        "clients.yaml:4: while parsing a flow sequence started at line 3",
    ),
    "unknown key": (
        "- client_id: a\n- client_id: b\n  id: b\n",
        "clients.yaml:3: unknown key 'id'",
    ),
    "ttl not a number": (
        "- client_id: a\n- client_id: b\n  ttl: 1h\n",
        "clients.yaml:3: ttl must be a whole number",
    ),
    "scopes not a list": (
        "- client_id: a\n- client_id: b\n  scopes: read\n",
        "clients.yaml:3: scopes must be a list of strings",
    ),
    "client_id not a string": ("- client_id: a\n- client_id: 12\n", "clients.yaml:2: client_id"),
    "no client_id": (
        "- client_id: a\n- scopes: [x]\n",
        "clients.yaml:2: a client needs a client_id",
    ),
    "duplicate id": (
        "- client_id: a\n- client_id: b\n- client_id: a\n",
        "clients.yaml:3: client_id 'a' is listed twice (first at line 1)",
    ),
    "duplicate key": (
        "- client_id: a\n  ttl: 5\n  ttl: 6\n",
        "clients.yaml:3: 'ttl' is given twice (first at line 2)",
    ),
    "invalid scope": (
        "- client_id: a\n- client_id: b\n  scopes:\n    - read\n    - 'bad\"scope'\n",
        "clients.yaml:5: scopes: a scope is",
    ),
    "invalid client_id": ("- client_id: a\n- client_id: 'a b'\n", "clients.yaml:2: client_id:"),
    "ttl out of range": ("- client_id: a\n  ttl: 0\n", "clients.yaml:2: ttl: a token lifetime"),
    "empty file": ("", "clients.yaml:1: the file is empty"),
    "not a list": ("clients: {client_id: a}\n", "clients.yaml:1: expected a list of clients"),
    "json syntax": ('[\n {"client_id": "a"},\n {"client_id": "b",}\n]\n', "clients.json:3: "),
    "not a date": (
        "- client_id: a\n- client_id: b\n  description: 2001-13-45\n",
        "clients.yaml:3: description must be a string: '2001-13-45' reads as a date; quote it "
        "to make it a string",
    ),
    "a date": (
        "- client_id: a\n- client_id: b\n  description: 2001-02-03\n",
        "clients.yaml:3: description must be a string: '2001-02-03' reads as a date; quote it "
        "to make it a string",
    ),
    "a claim not a date": (
        "- client_id: a\n  claims:\n    a: 2001-02-30\n",
        "clients.yaml:3: claims: a value is JSON: a string, number, true, false, null, list or "
        "mapping: '2001-02-30' reads as a date; quote it to make it a string",
    ),
    "a claim a date": (
        "- client_id: a\n  claims: {since: 2001-02-03}\n",
        "clients.yaml:2: claims: a value is JSON: a string, number, true, false, null, list or "
        "mapping: '2001-02-03' reads as a date; quote it to make it a string",
    ),
    "binary": (
        "- client_id: a\n  description: !!binary aGk=\n",
        "clients.yaml:2: description must be a string: 'aGk=' reads as YAML's !!binary; quote it",
    ),
    "a tag of its own": (
        "- client_id: a\n  scopes: [read, !mine x]\n",
        "clients.yaml:2: each of scopes must be a string: 'x' reads as YAML's !mine; quote it",
    ),
    "not an int": (
        "- client_id: a\n- client_id: b\n  ttl: !!int abc\n",
        "clients.yaml:3: ttl must be a whole number of seconds, or null for the default: 'abc' "
        "is not a valid !!int",
    ),
    "not a float": (
        "- client_id: a\n  claims:\n    x: 1\n    a: !!float abc\n",
        "clients.yaml:4: claims: a value is JSON: a string, number, true, false, null, list or "
        "mapping: 'abc' is not a valid !!float",
    ),
    "not a bool": (
        "- client_id: a\n  claims: {a: !!bool maybe}\n",
        "clients.yaml:2: claims: a value is JSON: a string, number, true, false, null, list or "
        "mapping: 'maybe' is not a valid !!bool",
    ),
    "an empty int": ("- client_id: a\n  ttl: !!int ''\n", "clients.yaml:2: ttl must be"),
    "too many digits": ("- client_id: a\n  ttl: 1" + "0" * 5000 + "\n", "clients.yaml:2: ttl"),
    "a key a date": (
        "- client_id: a\n  claims:\n    2001-02-03: x\n",
        "clients.yaml:3: a key must be a string: '2001-02-03' reads as a date; quote it",
    ),
    "a private key": (
        "- client_id: a\n- client_id: b\n  auth_method: private_key_jwt\n"
        f"  jwks:\n    keys:\n      - {json.dumps(PRIVATE_JWK)}\n",
        "clients.yaml:4: jwks: keys: the key set holds private key material",
    ),
    "a bad key": (
        "- client_id: a\n  auth_method: private_key_jwt\n"
        "  jwks: {kty: EC, crv: P-256, x: AA, y: AA}\n",
        "clients.yaml:3: jwks: keys: no ",
    ),
    "no keys": (
        "- client_id: a\n- client_id: b\n  auth_method: private_key_jwt\n",
        "clients.yaml:2: jwks: a private_key_jwt client has a jwks_uri or keys (one of them)",
    ),
    "keys and a key url": (
        "- client_id: a\n  auth_method: private_key_jwt\n  jwks_uri: https://k.test/\n"
        f"  jwks: {json.dumps(public_jwk(KEY, 'k1'))}\n",
        "clients.yaml:4: jwks: a private_key_jwt client has a jwks_uri or keys (one of them)",
    ),
    "keys for a secret client": (
        f"- client_id: a\n  jwks: {json.dumps(public_jwk(KEY, 'k1'))}\n",
        "clients.yaml:2: jwks: keys are for auth_method: private_key_jwt",
    ),
    "a key url for a secret client": (
        "- client_id: a\n  description: x\n  jwks_uri: https://k.test/\n",
        "clients.yaml:3: jwks_uri: keys are for private_key_jwt clients",
    ),
    "a bad key url": (
        "- client_id: a\n  auth_method: private_key_jwt\n  jwks_uri: ftp://k.test/\n",
        "clients.yaml:3: jwks_uri is an http(s) URL",
    ),
    "keys as text": (
        "- client_id: a\n  auth_method: private_key_jwt\n"
        "  jwks: |\n    -----BEGIN PUBLIC KEY-----\n",
        "clients.yaml:3: jwks must be a mapping: a JWK Set",
    ),
    "an unknown method": (
        "- client_id: a\n  auth_method: federated\n",
        "clients.yaml:2: auth_method is one of client_secret, private_key_jwt",
    ),
}


@pytest.mark.parametrize(("text", "fragment"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_file_is_one_line_naming_the_line_and_changes_nothing(
    cli: CLI, tmp_path: Path, text: str, fragment: str
) -> None:
    """A bad file (its valid clients listed first) exits 1 with one line naming the file
    and the line, and changes nothing, pruning included."""
    cli.add("legacy")
    before = _state(cli)
    name = "clients.json" if fragment.startswith("clients.json") else "clients.yaml"
    path = _file(tmp_path, text, name)
    result = cli.fails("apply", path, "--prune")
    result.assert_one_line_error(f"{tmp_path}/{fragment}")
    assert result.stdout == ""
    assert _state(cli) == before


async def test_secrets_out_writes_a_private_file_and_prints_no_secret(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    """``--secrets-out`` writes the new secrets as JSON to a new file of mode 0600 and
    prints none of them; they get tokens."""
    cli = CLI.for_settings(settings)
    out = tmp_path / "secrets.json"
    result = await cli.aok("apply", _file(tmp_path, TWO), "--secrets-out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    secrets = json.loads(out.read_text())
    assert sorted(secrets) == ["svc-a", "svc-b"]
    assert result.stdout.splitlines()[-1] == f"secrets of the new clients written to {out}"
    assert not any(secret in result.stdout + result.stderr for secret in secrets.values())
    for client_id, secret in secrets.items():
        await get_token(client, client_id, secret)


def test_existing_secrets_out_is_refused_before_any_change(cli: CLI, tmp_path: Path) -> None:
    """A ``--secrets-out`` file that exists is neither overwritten nor followed, and the
    command, dry run or not, refuses before changing anything."""
    out = tmp_path / "secrets.json"
    out.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    path = _file(tmp_path, TWO)
    for target in (out, link):
        for dry_run in ((), ("--dry-run",)):
            result = cli.fails("apply", path, "--secrets-out", str(target), *dry_run)
            result.assert_one_line_error(f"{target} exists")
    assert out.read_text() == "keep me" and not (tmp_path / "elsewhere.json").exists()
    assert _state(cli) == ([], [])


def test_what_is_not_a_regular_file_is_refused(cli: CLI, tmp_path: Path) -> None:
    """A FIFO (which would wait for a writer) and a device (/dev/zero never ends) are
    refused unread, in one line, and so is a file larger than 4 MiB."""
    fifo = tmp_path / "clients.yaml"
    os.mkfifo(fifo)
    script = CLI(cli.env, cwd=tmp_path, script=True)  # a subprocess: bounded if it waits
    script.fails("apply", str(fifo)).assert_one_line_error(f"{fifo} is not a regular file")
    cli.fails("apply", "/dev/null").assert_one_line_error("/dev/null is not a regular file")
    big = tmp_path / "big.yaml"
    big.write_text("- client_id: a\n" + "#" * (4 * 1024 * 1024) + "\n")
    cli.fails("apply", str(big)).assert_one_line_error(f"{big} is larger than 4 MiB")
    assert _state(cli) == ([], [])


def test_secrets_out_in_no_directory_is_refused_dry_run_or_not(cli: CLI, tmp_path: Path) -> None:
    """A --secrets-out in a directory that does not exist (or is a file) is refused before
    anything changes, in a dry run as in the real one, with the same line."""
    path = _file(tmp_path, TWO)
    (tmp_path / "file").write_text("")
    for target in (tmp_path / "missing" / "s.json", tmp_path / "file" / "s.json"):
        message = f"{target}: {target.parent} is not a directory"
        for dry_run in (("--dry-run",), ()):
            result = cli.fails("apply", path, "--secrets-out", str(target), *dry_run)
            result.assert_one_line_error(message)
    assert _state(cli) == ([], [])


def test_secrets_that_cannot_be_written_are_printed(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If writing the secrets file fails once the clients are created, their secrets are
    printed instead (text and JSON), and the command exits 1 saying so."""

    def full(out: int, secrets: Any) -> None:
        os.close(out)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(APPLY, "_write_secrets", full)
    out = tmp_path / "secrets.json"
    result = cli.fails("apply", _file(tmp_path, TWO), "--secrets-out", str(out))
    result.assert_one_line_error(
        f"the secrets could not be written to {out} (No space left on device): they are "
        "printed instead"
    )
    secrets = _secrets(result.stdout)
    assert sorted(secrets) == ["svc-a", "svc-b"]
    assert [c["client_id"] for c in cli.listing()] == ["svc-a", "svc-b"]
    again = _file(tmp_path, TWO + "  - client_id: svc-c\n")
    other = tmp_path / "other.json"
    result = cli.fails("apply", again, "--secrets-out", str(other), "--json")
    assert list(result.json()["secrets"]) == ["svc-c"]
    assert "secrets_file" not in result.json()


def test_missing_database_is_one_line(tmp_path: Path) -> None:
    """Pointed at no database, apply exits 1 with one line and creates none."""
    cli = CLI(cli_env(tmp_path), cwd=tmp_path)
    cli.fails("apply", _file(tmp_path, TWO)).assert_one_line_error("no database")
    assert not (tmp_path / "td.db").exists()


def test_a_change_refused_midway_stops_and_reports_what_was_done(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client registered by someone else between the plan and its creation stops the
    command: the creation before it stands and its secret is printed, nothing after it
    is tried, and the one error line names the change; run again, apply finishes."""
    real_plan = declarative.plan

    async def plan_then_race(store: Store, wanted: Any, *, prune: bool) -> declarative.Plan:
        planned = await real_plan(store, wanted, prune=prune)
        await clients.register(store, "svc-b", actor="cli:someone-else")
        return planned

    path = _file(tmp_path, TWO + "  - client_id: svc-c\n")
    monkeypatch.setattr(declarative, "plan", plan_then_race)
    result = cli.fails("apply", path)
    result.assert_one_line_error("create svc-b failed: client 'svc-b' already exists")
    assert result.stdout.startswith("create svc-a\n1 created, 0 updated, 0 removed, 0 unchanged\n")
    assert list(_secrets(result.stdout)) == ["svc-a"]
    assert [c["client_id"] for c in cli.listing()] == ["svc-a", "svc-b"]
    monkeypatch.undo()
    finish = cli.ok("apply", path).stdout.splitlines()
    assert finish[:3] == [
        "create svc-c",
        "update svc-b: audiences [] -> [https://b.test]",
        "1 created, 1 updated, 0 removed, 1 unchanged",
    ]


def test_a_client_changed_since_the_plan_is_not_overwritten(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client someone changes between the plan and its update stops the command at
    that update: the change made meanwhile stands (it is not overwritten with a change
    planned from what it was), the changes before it stand, and the one error line names
    it; run again, apply plans from the client as it now is."""
    cli.ok("apply", _file(tmp_path, TWO))
    real_plan = declarative.plan

    async def plan_then_edit(store: Store, wanted: Any, *, prune: bool) -> declarative.Plan:
        planned = await real_plan(store, wanted, prune=prune)
        await clients.update(store, "svc-b", actor="cli:someone-else", description="edited")
        return planned

    changed = TWO.replace("ttl: 60", "ttl: 120").replace("https://b.test", "https://c.test")
    path = _file(tmp_path, changed)
    monkeypatch.setattr(declarative, "plan", plan_then_edit)
    result = cli.fails("apply", path)
    result.assert_one_line_error(
        "update svc-b failed: client 'svc-b' changed while this update was made"
    )
    assert result.stdout == (
        "update svc-a: ttl 60 -> 120\n0 created, 1 updated, 0 removed, 0 unchanged\n"
    )
    b = cli.ok("clients", "show", "svc-b", "--json").json()
    assert (b["description"], b["audiences"]) == ("edited", ["https://b.test"])
    monkeypatch.undo()
    finish = cli.ok("apply", path).stdout.splitlines()
    assert finish == [
        'update svc-b: audiences [https://b.test] -> [https://c.test]; description "edited" -> ""',
        "0 created, 1 updated, 0 removed, 1 unchanged",
    ]
