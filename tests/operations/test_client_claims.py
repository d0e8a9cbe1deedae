"""Per-client claims from the command line: ``clients add/update --claim NAME=VALUE``,
``--claim-json NAME=JSON``, ``--remove-claim NAME``; shown by ``clients show``, copied
into every token of the client, audited; and ``claims`` in a file for ``apply``."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import CLI, cli_env
from tests.support.environment import QuartClient
from tests.support.tokens import get_token, unverified
from tokendealer.protocol.claims import MAX_CLAIMS, MAX_CLAIMS_SIZE, claims_size
from tokendealer.settings import Settings


@pytest.fixture(name="cli")
def _cli(tmp_path: Path) -> CLI:
    """The CLI on a database that exists (management commands never create one)."""
    return CLI(cli_env(tmp_path), cwd=tmp_path).create_database()


README = (Path(__file__).resolve().parents[2] / "README.rst").read_text()


def _state(cli: CLI) -> tuple[Any, Any]:
    return cli.listing(), cli.ok("audit", "--json").json()


async def test_readme_example_gives_the_token_it_shows(
    settings: Settings, client: QuartClient
) -> None:
    """The command of README.rst's "Per-client claims" registers a client whose token
    carries the claims the README shows, after the dealer's."""
    section = README[README.index("**Per-client claims.**") :]
    command, excerpt = re.findall(r"::\n\n((?:    .*\n)+)", section)[:2]
    words = shlex.split(command)
    assert words[:3] == ["tokendealer", "clients", "add"]
    cli = CLI.for_settings(settings)
    secret = (await cli.aok(*words[1:], "--json")).json()["client_secret"]
    payload = unverified(await get_token(client, words[3], secret))[1]
    assert '"tenant": "acme", "tier": 2}' in excerpt
    assert list(payload.items())[-2:] == [("tenant", "acme"), ("tier", 2)]
    assert f'"sub": "{words[3]}"' in excerpt


async def test_claims_given_on_the_command_line_are_in_every_token(
    settings: Settings, client: QuartClient
) -> None:
    """``--claim`` gives a string, ``--claim-json`` any JSON value; the next token of the
    client carries them, after the dealer's claims. ``update`` sets or replaces the
    claims it names and ``--remove-claim`` removes one, the others staying; a token
    issued before keeps the claims it has."""
    cli = CLI.for_settings(settings)
    added = await cli.aok(
        "clients",
        "add",
        "billing",
        "--scope",
        "read",
        "--claim",
        "tenant=acme",
        "--claim",
        "note=a=b",
        "--claim-json",
        "tier=2",
        "--claim-json",
        'flags={"beta": true, "regions": ["eu"]}',
        "--json",
    )
    secret = added.json()["client_secret"]
    expected: dict[str, Any] = {
        "flags": {"beta": True, "regions": ["eu"]},
        "note": "a=b",
        "tenant": "acme",
        "tier": 2,
    }
    assert added.json()["claims"] == expected
    first = unverified(await get_token(client, "billing", secret))[1]
    assert {name: first[name] for name in expected} == expected
    assert (first["sub"], first["scope"]) == ("billing", "read")

    await cli.aok(
        "clients",
        "update",
        "billing",
        "--claim-json",
        "tier=3",
        "--claim",
        "region=eu-west",
        "--remove-claim",
        "note",
        "--remove-claim",
        "absent",
    )
    second = unverified(await get_token(client, "billing", secret))[1]
    assert second["tier"] == 3 and second["region"] == "eu-west" and "note" not in second
    assert second["tenant"] == "acme" and second["flags"] == expected["flags"]
    assert first["tier"] == 2  # the earlier token is as it was minted

    shown = (await cli.aok("clients", "show", "billing", "--json")).json()
    assert shown["claims"] == {
        "flags": {"beta": True, "regions": ["eu"]},
        "region": "eu-west",
        "tenant": "acme",
        "tier": 3,
    }
    text = (await cli.aok("clients", "show", "billing")).stdout.splitlines()
    assert (
        'claims: {"flags":{"beta":true,"regions":["eu"]},"region":"eu-west",'
        '"tenant":"acme","tier":3}'
    ) in text


def test_claim_changes_are_audited_and_shown(cli: CLI) -> None:
    """``client.create`` records the claims, ``client.update`` their change (from, to);
    an update that changes nothing records nothing. Text output escapes what is not
    printable, so a claim cannot forge a line."""
    cli.add("svc", "--claim", "tenant=acme")
    cli.ok("clients", "update", "svc", "--claim", "tenant=acme")  # no change
    changed = cli.ok("clients", "update", "svc", "--claim-json", "tier=1", "--remove-claim", "x")
    assert changed.stdout.strip() == "updated svc: claims"
    cli.ok("clients", "update", "svc", "--remove-claim", "tenant", "--remove-claim", "tier")
    events = cli.ok("audit", "--json").json()
    assert [e["action"] for e in events] == ["client.update", "client.update", "client.create"]
    assert events[2]["details"]["claims"] == {"tenant": "acme"}
    assert events[1]["details"] == {
        "changed": {"claims": {"from": {"tenant": "acme"}, "to": {"tenant": "acme", "tier": 1}}}
    }
    assert events[0]["details"]["changed"]["claims"]["to"] == {}
    assert "claims: -" in cli.ok("clients", "show", "svc").stdout.splitlines()
    cli.ok("clients", "update", "svc", "--claim", "motd=line\nforged: yes\x1b[2J")
    shown = cli.ok("clients", "show", "svc").stdout
    assert "forged: yes" not in shown.splitlines() and "\x1b" not in shown
    assert 'claims: {"motd":"line\\nforged: yes\\u001b[2J"}' in shown.splitlines()


@pytest.mark.parametrize(
    "name", ["sub", "iss", "aud", "exp", "client_id", "scope", "cnf", "client_epoch", "kid"]
)
def test_a_name_the_dealer_sets_is_refused(cli: CLI, name: str) -> None:
    """Each reserved name, from ``add`` and ``update`` alike: one line saying so, naming
    the option, and nothing changes."""
    cli.add("svc")
    before = _state(cli)
    message = f"Invalid value for '--claim': claim {name!r} is set by the dealer; choose another"
    cli.fails("clients", "add", "other", "--claim", f"{name}=x").assert_one_line_error(message)
    json_message = message.replace("'--claim'", "'--claim-json'")
    cli.fails("clients", "update", "svc", "--claim-json", f"{name}=1").assert_one_line_error(
        json_message
    )
    assert _state(cli) == before


def test_claims_over_the_bounds_are_refused(cli: CLI) -> None:
    """More than MAX_CLAIMS_SIZE bytes, or MAX_CLAIMS claims, at once or added by an
    update to claims that fit, is one line with the figures, and changes nothing."""
    cli.add("svc", "--claim", "a=" + "x" * 1000)
    before = _state(cli)
    big = "x" * MAX_CLAIMS_SIZE
    size = claims_size({"big": big})
    cli.fails("clients", "add", "other", "--claim", f"big={big}").assert_one_line_error(
        f"the claims take {size} bytes; at most {MAX_CLAIMS_SIZE} (a token must stay small"
    )
    more = "b=" + "y" * 1100  # fits alone; not with the claim the client has
    cli.fails("clients", "update", "svc", "--claim", more).assert_one_line_error(
        f"at most {MAX_CLAIMS_SIZE}"
    )
    many = [f"--claim-json=c{i}={i}" for i in range(MAX_CLAIMS)]
    cli.fails("clients", "update", "svc", *many).assert_one_line_error(
        f"a client has at most {MAX_CLAIMS} claims"
    )
    assert _state(cli) == before
    cli.ok("clients", "update", "svc", "--remove-claim", "a", *many)
    assert len(cli.ok("clients", "show", "svc", "--json").json()["claims"]) == MAX_CLAIMS


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--claim", "tenant"], "Invalid value for '--claim': 'tenant' is not NAME=VALUE"),
        (["--claim-json", "tier=two"], "Invalid value for '--claim-json': claim 'tier': the"),
        (["--claim-json", "tier=NaN"], "'--claim-json': claim 'tier': the value is not JSON"),
        (["--claim-json", "t=" + "[" * 5000], "Invalid value for '--claim-json': claim 't'"),
        (["--claim", "a=1", "--claim-json", "a=1"], "'--claim-json': claim 'a' is given twice"),
        (["--claim", "has space=1"], "Invalid value for '--claim': claim name 'has space'"),
        (["--claim-json", 'n={"deep": [[[[[[[[1]]]]]]]]}'], "nests more than 8 levels deep"),
        (
            ["--claim-json", 'o={"a": 1, "b": {"c": 2, "c": 3}}'],
            "Invalid value for '--claim-json': claim 'o': the value is not JSON (an object "
            "gives the key 'c' twice)",
        ),
    ],
)
def test_bad_claim_options_are_one_line_and_change_nothing(
    cli: CLI, args: list[str], fragment: str
) -> None:
    cli.add("svc")
    before = _state(cli)
    cli.fails("clients", "add", "other", *args).assert_one_line_error(fragment)
    cli.fails("clients", "update", "svc", *args).assert_one_line_error(fragment)
    assert _state(cli) == before


def test_changing_the_json_type_of_a_claim_is_a_change(cli: CLI) -> None:
    """1, 1.0 and true are three JSON values (Python finds them equal): changing one for
    another is an update, shown and audited with its from and to, and the value is kept
    as typed; the same value again changes nothing."""
    cli.add("svc", "--claim-json", "tier=1")
    for typed, stored in (("true", "true"), ("1.0", "1.0"), ("1", "1")):
        changed = cli.ok("clients", "update", "svc", "--claim-json", f"tier={typed}")
        assert changed.stdout.strip() == "updated svc: claims", typed
        shown = cli.ok("clients", "show", "svc").stdout.splitlines()
        assert f'claims: {{"tier":{stored}}}' in shown
    again = cli.ok("clients", "update", "svc", "--claim-json", "tier=1")
    assert again.stdout.strip() == "svc unchanged: it already had that policy"
    events = cli.ok("audit", "--action", "client.update", "--json").json()
    assert [json.dumps(e["details"]["changed"]["claims"]) for e in reversed(events)] == [
        '{"from": {"tier": 1}, "to": {"tier": true}}',
        '{"from": {"tier": true}, "to": {"tier": 1.0}}',
        '{"from": {"tier": 1.0}, "to": {"tier": 1}}',
    ]


# -- apply ---------------------------------------------------------------------------------

CLAIMED = """\
clients:
  - client_id: billing
    scopes: [read]
    claims:
      tenant: acme
      tier: 2
      flags: {beta: true, regions: [eu, us]}
"""


async def test_apply_sets_the_claims_a_file_lists(
    settings: Settings, client: QuartClient, tmp_path: Path
) -> None:
    """A file's ``claims`` are the client's and reach its tokens; a second run changes
    nothing; a changed mapping is one update line, and claims left out mean none."""
    cli = CLI.for_settings(settings)
    path = tmp_path / "clients.yaml"
    path.write_text(CLAIMED)
    out = (await cli.aok("apply", str(path))).stdout
    secret = out.rsplit("billing: ", 1)[1].strip()
    token = unverified(await get_token(client, "billing", secret))[1]
    wanted = {"tenant": "acme", "tier": 2, "flags": {"beta": True, "regions": ["eu", "us"]}}
    assert {name: token[name] for name in wanted} == wanted
    again = await cli.aok("apply", str(path))
    assert again.stdout == "0 created, 0 updated, 0 removed, 1 unchanged\n"

    path.write_text(CLAIMED.replace("tier: 2", "tier: 3"))
    changed = (await cli.aok("apply", str(path))).stdout.splitlines()
    assert changed[0] == (
        'update billing: claims {"flags":{"beta":true,"regions":["eu","us"]},"tenant":"acme",'
        '"tier":2} -> {"flags":{"beta":true,"regions":["eu","us"]},"tenant":"acme","tier":3}'
    )
    assert unverified(await get_token(client, "billing", secret))[1]["tier"] == 3
    path.write_text(CLAIMED.split("    claims:")[0])
    await cli.aok("apply", str(path))
    shown = (await cli.aok("clients", "show", "billing", "--json")).json()
    assert shown["claims"] == {}
    events = (await cli.aok("audit", "--action", "client.create", "--json")).json()
    assert events[0]["details"]["claims"] == wanted


BAD_CLAIMS = {
    "reserved name": (
        "- client_id: a\n  claims:\n    tenant: acme\n    sub: admin\n",
        "clients.yaml:4: claims: claim 'sub' is set by the dealer; choose another name",
    ),
    "not a mapping": (
        "- client_id: a\n  claims: [tenant]\n",
        "clients.yaml:2: claims must be a mapping of claim names to values",
    ),
    "not a JSON value": (
        "- client_id: a\n  claims:\n    since: 2024-01-01\n",
        "clients.yaml:3: claims: a value is JSON",
    ),
    "a key not a string": (
        "- client_id: a\n  claims:\n    tenant: {1: x}\n",
        "clients.yaml:3: a key must be a string",
    ),
    "too large": (
        "- client_id: a\n  claims:\n    a: " + "x" * 1100 + "\n    b: " + "y" * 1100 + "\n",
        f"clients.yaml:3: claims: the claims take {claims_size({'a': 'x' * 1100, 'b': 'y' * 1100})}"
        f" bytes; at most {MAX_CLAIMS_SIZE}",
    ),
    "alias bomb": (
        "- client_id: a\n  claims:\n    a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        "    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "    e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
        "claims: too large",
    ),
}


@pytest.mark.parametrize(("text", "fragment"), BAD_CLAIMS.values(), ids=BAD_CLAIMS.keys())
def test_bad_claims_in_a_file_name_the_line_and_change_nothing(
    cli: CLI, tmp_path: Path, text: str, fragment: str
) -> None:
    cli.add("legacy")
    before = _state(cli)
    path = tmp_path / "clients.yaml"
    path.write_text(text)
    result = cli.fails("apply", str(path))
    result.assert_one_line_error(fragment)
    assert _state(cli) == before


def test_json_claims_are_read_with_json_rules(cli: CLI, tmp_path: Path) -> None:
    """In a ``.json`` file, claims are JSON as written: escapes, numbers, nesting."""
    path = tmp_path / "clients.json"
    text = '[{"client_id": "a", "claims": {"n": 1e3, "s": "\\u00c5", "l": [{"x": null}]}}]'
    path.write_text(text)
    cli.ok("apply", str(path))
    shown = cli.ok("clients", "show", "a", "--json").json()
    assert shown["claims"] == {"l": [{"x": None}], "n": 1000.0, "s": "Å"}
    assert json.dumps(shown["claims"]["n"]) == "1000.0"


def test_apply_changes_the_json_type_of_a_claim(cli: CLI, tmp_path: Path) -> None:
    """A file's ``tier: 1.0`` or ``tier: true`` for a client with ``tier: 1`` is an
    update, planned and made; run again, nothing changes."""
    cli.add("billing", "--claim-json", "tier=1")
    path = tmp_path / "clients.yaml"
    for typed in ("1.0", "true", "1"):
        path.write_text(f"- client_id: billing\n  claims: {{tier: {typed}}}\n")
        plan = cli.ok("apply", str(path), "--dry-run").stdout.splitlines()
        assert plan[1].startswith("update billing: claims {"), typed
        assert plan[1].endswith(f' -> {{"tier":{typed}}}')
        cli.ok("apply", str(path))
        shown = cli.ok("clients", "show", "billing").stdout.splitlines()
        assert f'claims: {{"tier":{typed}}}' in shown
        again = cli.ok("apply", str(path)).stdout
        assert again == "0 created, 0 updated, 0 removed, 1 unchanged\n"


def test_a_json_file_yaml_cannot_compose_is_read_as_json(cli: CLI, tmp_path: Path) -> None:
    """Valid JSON that YAML's composer refuses (a key of more than 1024 characters, a
    control character YAML does not allow) is read as JSON, not refused with a YAML
    error; its refusals name line 1."""
    long_key = "k" * 1100
    path = tmp_path / "clients.json"
    claims = {"nested": {long_key: 1}, "raw": "a\x7fb"}
    path.write_text("[\n" + json.dumps({"client_id": "a", "claims": claims}) + "\n]\n")
    cli.ok("apply", str(path))
    assert cli.ok("clients", "show", "a", "--json").json()["claims"] == claims
    bad = {"client_id": "b", "claims": {"nested": {long_key: 1}}, "id": "b"}
    path.write_text("[\n" + json.dumps(bad) + "\n]\n")
    cli.fails("apply", str(path)).assert_one_line_error(f"{path}:1: unknown key 'id'")
    twice = '[{"client_id": "b", "claims": {"nested": {"%s": 1}}, "ttl": 5, "ttl": 6}]'
    path.write_text(twice % long_key)
    cli.fails("apply", str(path)).assert_one_line_error(
        f"{path}:1: 'ttl' is given twice (first at line 1)"
    )
