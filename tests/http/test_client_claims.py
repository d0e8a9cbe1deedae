"""Per-client claims through the admin API, every exchange checked against openapi.yaml:
set at registration and by PATCH, carried by the client's tokens, answered by introspection."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.openapi import Checked, SpecChecker, exchange, load_spec
from tests.support.tokens import get_token, introspect, unverified
from tokendealer.protocol.claims import MAX_CLAIMS_SIZE
from tokendealer.protocol.errors import ADMIN_SCOPE
from tokendealer.service.dealer import Dealer

API = "/admin/api/v1"
JSON = "application/json"
CLAIMS = {"tenant": "acme", "tier": 2, "flags": {"beta": True}, "regions": ["eu", "us"]}


@pytest.fixture(name="checker", scope="module")
def _checker() -> SpecChecker:
    return SpecChecker(load_spec())


@pytest.fixture(name="admin_token")
async def _admin_token(client: QuartClient, register: Register) -> str:
    secret = await register("ops", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    return await get_token(client, "ops", secret, scope=ADMIN_SCOPE, audience=ISSUER)


async def _api(
    checker: SpecChecker, client: QuartClient, token: str, method: str, path: str, body: Any
) -> Checked:
    """An admin API call whose request body the spec accepts, its answer checked."""
    checker.check_request(API + path, method, JSON, body)
    headers = {"Authorization": f"Bearer {token}"}
    return await exchange(checker, client, method, API + path, headers=headers, json=body)


async def test_api_claims_reach_tokens_and_introspection(
    checker: SpecChecker, client: QuartClient, register: Register, admin_token: str
) -> None:
    """Claims given at registration are shown and carried by every token; introspection
    answers them, to the client and to a resource server for the token's audience, and
    the answer matches the spec. PATCH replaces the whole object; a token issued before
    keeps, and is introspected with, the claims it carries."""
    created = await _api(
        checker,
        client,
        admin_token,
        "POST",
        "/clients",
        {"client_id": "billing", "audiences": ["https://api.test"], "claims": CLAIMS},
    )
    assert created.status == 201 and created.body["claims"] == CLAIMS
    secret = created.body["client_secret"]
    first = await get_token(client, "billing", secret)
    payload = unverified(first)[1]
    assert {name: payload[name] for name in CLAIMS} == CLAIMS

    rs = ("rs", await register("rs", audiences=("https://api.test",)))
    for caller in (("billing", secret), rs):
        introspected = await exchange(
            checker, client, "POST", "/oauth/introspect", form={"token": first}, auth=caller
        )
        answer = introspected.body
        assert introspected.status == 200 and answer["active"] is True
        assert {name: answer[name] for name in CLAIMS} == CLAIMS
        assert "client_epoch" not in answer and answer["client_id"] == "billing"

    changed = await _api(
        checker, client, admin_token, "PATCH", "/clients/billing", {"claims": {"tenant": "beta"}}
    )
    assert changed.status == 200 and changed.body["claims"] == {"tenant": "beta"}
    kept = await _api(checker, client, admin_token, "PATCH", "/clients/billing", {"ttl": 60})
    assert kept.body["claims"] == {"tenant": "beta"}  # a PATCH without claims keeps them
    second = unverified(await get_token(client, "billing", secret))[1]
    assert second["tenant"] == "beta" and "tier" not in second
    _, answer, _ = await introspect(client, first, rs)
    assert answer["tenant"] == "acme" and answer["tier"] == 2

    shown = await exchange(
        checker,
        client,
        "GET",
        API + "/clients/billing",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert shown.body["claims"] == {"tenant": "beta"}
    events = await exchange(
        checker,
        client,
        "GET",
        API + "/audit?target=client:billing",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    _, update, create = events.body  # newest first: the ttl, the claims, the creation
    assert create["details"]["claims"] == CLAIMS
    assert update["details"]["changed"]["claims"] == {"from": CLAIMS, "to": {"tenant": "beta"}}

    cleared = await _api(checker, client, admin_token, "PATCH", "/clients/billing", {"claims": {}})
    assert cleared.body["claims"] == {}
    assert "tenant" not in unverified(await get_token(client, "billing", secret))[1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"claims": {"sub": "admin"}}, "claim 'sub' is set by the dealer; choose another name"),
        ({"claims": {"token_type": "x"}}, "claim 'token_type' is set by the dealer"),
        ({"claims": {"big": "x" * MAX_CLAIMS_SIZE}}, f"at most {MAX_CLAIMS_SIZE} (a token"),
        ({"claims": {"n": [[[[[[[[[1]]]]]]]]]}}, "nests more than 8 levels deep"),
        ({"claims": ["tenant"]}, "claims is a JSON object"),
    ],
)
async def test_api_refuses_bad_claims(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    admin_token: str,
    dealer: Dealer,
    body: dict[str, Any],
    message: str,
) -> None:
    """A refused claims object is a 400 naming the field ``claims``, as the spec says,
    from POST and PATCH alike; nothing changes."""
    await register("svc")
    headers = {"Authorization": f"Bearer {admin_token}"}
    for method, path, sent in (
        ("POST", "/clients", {"client_id": "other", **body}),
        ("PATCH", "/clients/svc", body),
    ):
        answer = await exchange(checker, client, method, API + path, headers=headers, json=sent)
        assert (answer.status, answer.body["error"], answer.body["field"]) == (
            400,
            "invalid_request",
            "claims",
        )
        assert message in answer.body["error_description"]
    assert await dealer.store.get_client("other") is None
    svc = await dealer.store.get_client("svc")
    assert svc is not None and svc.claims == {}


async def test_claims_beyond_the_fast_encoder_are_carried_exactly(
    checker: SpecChecker, client: QuartClient, admin_token: str
) -> None:
    """Claims are encoded by orjson (``tokendealer.jsonbytes``), which refuses integers
    past 64 bits and writes text outside ASCII as UTF-8: a client's claims with both
    reach its token exactly, through the fallback for the first, and the token verifies."""
    claims = {"account": 2**70, "city": "Zürich", "nested": {"n": -(2**65)}}
    created = await _api(
        checker, client, admin_token, "POST", "/clients", {"client_id": "wide", "claims": claims}
    )
    assert created.status == 201
    token = await get_token(client, "wide", created.body["client_secret"])
    payload = unverified(token)[1]
    assert (payload["account"], payload["city"], payload["nested"]) == (
        2**70,
        "Zürich",
        {"n": -(2**65)},
    )
    checked = await client.post("/verify_token", form={"access_token": token})
    assert checked.status_code == 200
    assert (await checked.get_json())["account"] == 2**70
