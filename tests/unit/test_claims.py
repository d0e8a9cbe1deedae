"""Per-client claims in the protocol layer (``protocol.claims``): the names the dealer
keeps for itself, the bounds on a client's claims, and how a token's payload takes them."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tokendealer.admin import clients
from tokendealer.keys.keyset import SigningKey
from tokendealer.protocol.claims import (
    MAX_CLAIM_NAME,
    MAX_CLAIMS,
    MAX_CLAIMS_SIZE,
    MAX_DEPTH,
    RESERVED,
    claim_error,
    claims_error,
    claims_size,
    client_claims,
    parse_json,
)
from tokendealer.protocol.clients import Client
from tokendealer.service.tokens import mint
from tokendealer.settings import Settings
from tokendealer.store import SQLStore


@pytest.fixture(name="key", scope="module")
def _key() -> SigningKey:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey("k1", "RS512", private_key, 0.0, 0.0)


def _mint(key: SigningKey, claims: dict[str, Any], scopes: tuple[str, ...] = ("read",)) -> Any:
    return mint(
        key,
        issuer="https://dealer.test",
        client_id="svc",
        audience="https://api.test",
        scopes=scopes,
        ttl=60,
        now=1_700_000_000,
        epoch="e1",
        claims=claims,
    )


def test_every_name_the_dealer_sets_is_reserved(key: SigningKey) -> None:
    """Each claim of a token the dealer mints, and each name of its header, is reserved: a
    claim the dealer starts setting without reserving it fails here (it would otherwise be
    a name a client could take, and one introspection would copy as the client's)."""
    issued = _mint(key, {})
    header = jwt.get_unverified_header(issued.access_token)
    assert set(issued.claims) | set(header) <= RESERVED
    assert client_claims(issued.claims) == {}


def test_a_token_carries_the_client_claims_after_the_dealers_which_win(key: SigningKey) -> None:
    """The client's claims are copied as they are; a reserved name in a record written
    by other means than the admin service never replaces or adds a claim of the dealer's
    (no ``scope`` appears on a token granted none)."""
    claims = {"tenant": "acme", "tier": 2, "flags": {"beta": True, "regions": ["eu", None]}}
    forged = {"sub": "admin", "scope": "tokendealer:admin", "client_epoch": "old", "exp": 9e9}
    issued = _mint(key, {**claims, **forged}, scopes=())
    payload = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert payload["sub"] == "svc" and payload["client_epoch"] == "e1"
    assert payload["exp"] == 1_700_000_060 and "scope" not in payload
    assert client_claims(payload) == claims
    assert list(payload)[-3:] == ["tenant", "tier", "flags"]  # after the dealer's own


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_reserved_names_are_refused(name: str) -> None:
    assert claim_error(name, "x") == f"claim {name!r} is set by the dealer; choose another name"


BAD: list[tuple[Any, Any, str]] = [
    ("", "x", "1-64 printable ASCII"),
    ("has space", "x", "1-64 printable ASCII"),
    ("x" * (MAX_CLAIM_NAME + 1), "x", "1-64 printable ASCII"),
    ("tenant\n", "x", "1-64 printable ASCII"),
    ("naïve", "x", "1-64 printable ASCII"),
    (5, "x", "1-64 printable ASCII"),
    ("n", float("nan"), "NaN and Infinity"),
    ("n", [float("inf")], "NaN and Infinity"),
    ("n", "\ud83d", "not valid Unicode"),
    ("n", {"\udc00": 1}, "not valid Unicode"),
    ("n", {1: "x"}, "keys of an object are strings"),
    ("n", (1, 2), "must be JSON"),
    ("n", {"a": b"bytes"}, "must be JSON"),
    ("n", [[[[[[[[[1]]]]]]]]], f"nests more than {MAX_DEPTH} levels"),
]


@pytest.mark.parametrize(("name", "value", "fragment"), BAD)
def test_bad_claims_are_refused_with_a_reason(name: Any, value: Any, fragment: str) -> None:
    reason = claim_error(name, value)
    assert reason is not None and fragment in reason


def test_json_values_of_every_kind_are_taken() -> None:
    values = ["", "ü 😀", 0, -1.5, 10**30, True, False, None, [], {}, [[[[[[[[1]]]]]]]]]
    for value in values:
        assert claim_error("c", value) is None, value
    assert claim_error("!#$%&'*+-.^_`|~", 1) is None
    assert claim_error("x" * MAX_CLAIM_NAME, 1) is None


def test_the_count_and_the_size_are_bounded() -> None:
    """At most MAX_CLAIMS claims; at most MAX_CLAIMS_SIZE bytes as the token spells them
    (compact JSON with non-ASCII escaped: one "é" is six bytes), the figure in the
    message."""
    assert claims_error({f"c{i}": i for i in range(MAX_CLAIMS)}) is None
    assert claims_error({f"c{i}": i for i in range(MAX_CLAIMS + 1)}) == (
        f"a client has at most {MAX_CLAIMS} claims"
    )
    base = claims_size({"big": ""})
    fits = {"big": "a" * (MAX_CLAIMS_SIZE - base)}
    assert claims_size(fits) == MAX_CLAIMS_SIZE and claims_error(fits) is None
    over = {"big": "é" * ((MAX_CLAIMS_SIZE - base) // 6 + 1)}
    size = len(json.dumps(over, separators=(",", ":")))
    assert size > MAX_CLAIMS_SIZE > len(json.dumps(over, ensure_ascii=False).encode())
    assert claims_error(over) == (
        f"the claims take {size} bytes; at most {MAX_CLAIMS_SIZE} "
        "(a token must stay small: headers have limits)"
    )


def test_parse_json_refuses_an_object_giving_a_key_twice() -> None:
    """JSON leaves which of two equal keys counts to the reader: typed claims giving one
    twice, at any depth, are refused, the key named whole; other JSON reads as before."""
    for text, key in (('{"a": 1, "a": 2}', "'a'"), ('[{"b": {"c;d": 1, "c;d": 1}}]', "'c;d'")):
        with pytest.raises(ValueError, match=rf"^an object gives the key {key} twice$"):
            parse_json(text)
    assert parse_json('{"a": {"b": [1, {"b": 2}]}, "b": 1.0}') == {
        "a": {"b": [1, {"b": 2}]},
        "b": 1.0,
    }
    with pytest.raises(ValueError, match=r"^NaN is not JSON$"):
        parse_json("NaN")


def test_differences_compare_claims_as_json() -> None:
    """1, 1.0 and true are equal in Python, three values in JSON: each is a difference;
    the order of a mapping's keys is not."""
    one = Client("svc", "", claims={"tier": 1, "o": {"a": 1, "b": 2}})
    for other in (True, 1.0, "1"):
        changed = Client("svc", "", claims={"tier": other, "o": {"a": 1, "b": 2}})
        assert clients.differences(one, changed) == {
            "claims": {"from": dict(one.claims), "to": dict(changed.claims)}
        }
    same = Client("svc", "", claims={"o": {"b": 2, "a": 1}, "tier": 1})
    assert clients.differences(one, same) == {}


async def test_an_update_changing_only_a_claims_type_is_written(sqlite_url: str) -> None:
    """What the admin API's PATCH calls: replacing tier 1 with true, then 1.0, is an
    update each time, written and audited; the same value again writes nothing."""
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    await store.open(create=True)
    try:
        await clients.register(store, "svc", actor="test", claims={"tier": 1})
        for value in (True, 1.0):
            updated = await clients.update(store, "svc", actor="test", claims={"tier": value})
            assert set(updated.changes) == {"claims"}
            stored = (await clients.get(store, "svc")).claims["tier"]
            assert json.dumps(stored) == json.dumps(value)
        unchanged = await clients.update(store, "svc", actor="test", claims={"tier": 1.0})
        assert unchanged.changes == {}
        assert len(await store.audit_events(action="client.update")) == 2
    finally:
        await store.close()
