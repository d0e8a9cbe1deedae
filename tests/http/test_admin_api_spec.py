"""The admin API (``/admin/api/v1``) as openapi.yaml describes it.

Every operation is driven through the Quart test client, and every answer, success or
error, is checked against the document (status, headers, media type, body schema): each
error status it declares that a test can provoke, 400 to 503. Request bodies the API
accepts validate against the document's request schemas, and bodies it refuses do not.
The document's limits and enums are the code's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from quart import Quart

from tests.support.apps import add_client, fresh_address, running
from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.keyserver import public_jwk
from tests.support.openapi import (
    HTTP_METHODS,
    Checked,
    Mismatch,
    SpecChecker,
    exchange,
    load_spec,
)
from tests.support.tokens import get_token, tamper
from tokendealer.admin import clients as admin_clients
from tokendealer.admin.clients import (
    MAX_AUDIENCES,
    MAX_DESCRIPTION,
    MAX_GRACE,
    MAX_SCOPE_LENGTH,
    MAX_SCOPES,
)
from tokendealer.admin.keys import KEY_SIZES, MAX_ACTIVATE_AFTER
from tokendealer.http import create_app
from tokendealer.http.admin import api
from tokendealer.keys.keyset import DEFAULT_ALG, DEFAULT_KEY_BITS
from tokendealer.library.algorithms import SIGNING_ALGORITHMS
from tokendealer.protocol import assertions
from tokendealer.protocol.audit import ACTIONS
from tokendealer.protocol.claims import (
    MAX_CLAIM_NAME,
    MAX_CLAIMS,
    MAX_CLAIMS_SIZE,
    MAX_DEPTH,
    RESERVED,
)
from tokendealer.protocol.clients import AUTH_METHODS, FEDERATED, PRIVATE_KEY_JWT, Client
from tokendealer.protocol.credentials import MAX_CLIENT_ID_LENGTH
from tokendealer.protocol.errors import ADMIN_SCOPE
from tokendealer.protocol.rates import MAX_RATE_TEXT, RATE_LIMIT_MODES
from tokendealer.protocol.urls import MAX_URL_LENGTH as MAX_URI_LENGTH
from tokendealer.service.dealer import Dealer
from tokendealer.settings import MAX_TOKEN_TTL, Rate, Settings
from tokendealer.store import SQLStore, StoreUnavailable
from tokendealer.store.audit import MAX_EVENTS

API = "/admin/api/v1"
JSON = "application/json"
BARE_CHALLENGE = 'Bearer realm="tokendealer"'

#: One request for each operation of the admin API, on an existing client ``svc``.
OPERATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/clients", None),
    ("POST", "/clients", {"client_id": "billing"}),
    ("GET", "/clients/svc", None),
    ("PATCH", "/clients/svc", {"ttl": 60}),
    ("DELETE", "/clients/svc", None),
    ("POST", "/clients/svc/rotate-secret", {"grace": 60}),
    ("POST", "/clients/svc/disable", {}),
    ("POST", "/clients/svc/enable", None),
    ("GET", "/keys", None),
    ("POST", "/keys/rotate", {"activate_after": 3600}),
    ("POST", "/keys/prune", {}),
    ("GET", "/audit", None),
]
OPERATION_IDS = [f"{method} {path}" for method, path, _ in OPERATIONS]
#: The operations whose body is optional: an empty one is ``{}``.
OPTIONAL_BODIES = ("/rotate-secret", "/disable", "/keys/rotate", "/keys/prune")

#: A private_key_jwt client's keys: its own (``KEY``, ``kid`` k1) and another one.
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP384R1())
JWK = public_jwk(KEY, "k1")
JWKS = {"keys": [JWK, public_jwk(OTHER_KEY, "k2")]}
#: The private JWK of ``KEY``: refused, it is the client's own.
PRIVATE_JWK = {**ECAlgorithm.to_jwk(KEY, as_dict=True), "kid": "k1"}
KEY_URL = "https://keys.test/jwks.json"
PRIVATE = {"auth_method": PRIVATE_KEY_JWT}


@pytest.fixture(name="spec", scope="module")
def _spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture(name="checker", scope="module")
def _checker(spec: dict[str, Any]) -> SpecChecker:
    return SpecChecker(spec)


@pytest.fixture(name="admin_token")
async def _admin_token(client: QuartClient, register: Register) -> str:
    secret = await register("ops", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    return await get_token(client, "ops", secret, scope=ADMIN_SCOPE, audience=ISSUER)


async def admin(
    checker: SpecChecker,
    client: QuartClient,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Checked:
    """``method API+path`` with the bearer ``token`` and the JSON ``body`` (each when
    given); the response checked against the spec."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        kwargs["json"] = body
    return await exchange(checker, client, method, API + path, headers=headers, **kwargs)


async def send(
    checker: SpecChecker, client: QuartClient, method: str, path: str, token: str, body: Any
) -> Checked:
    """``admin``, with a body the spec must accept."""
    checker.check_request(API + path, method, JSON, body)
    return await admin(checker, client, method, path, token, body)


def elsewhere() -> dict[str, Any]:
    """A request's scope from an address no other request used."""
    return {"client": (fresh_address(), 40000)}


def refusal(answer: Checked) -> tuple[int, str, str | None]:
    """An error answer's status, error code and field (None when it names none)."""
    return answer.status, answer.body["error"], answer.body.get("field")


# -- the document ------------------------------------------------------------------------


def test_every_admin_operation_is_driven_here(checker: SpecChecker, spec: dict[str, Any]) -> None:
    """``OPERATIONS`` names each operation the spec tags ``admin``, once, with a body the
    spec accepts where it declares one."""
    tagged = {
        (path, method)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and "admin" in operation.get("tags", ())
    }
    driven = [(checker.template(API + path), method.lower()) for method, path, _ in OPERATIONS]
    assert sorted(driven) == sorted(tagged)
    for method, path, body in OPERATIONS:
        if body is not None:
            checker.check_request(API + path, method, JSON, body)


def test_spec_limits_and_enums_are_the_codes(spec: dict[str, Any]) -> None:
    """The limits and the audit actions the spec states are the ones the API enforces."""
    schemas = spec["components"]["schemas"]
    assert schemas["AuditAction"]["enum"] == list(ACTIONS)
    assert schemas["TokenLifetime"]["maximum"] == MAX_TOKEN_TTL
    assert schemas["ClientDescription"]["maxLength"] == MAX_DESCRIPTION
    assert schemas["ScopeToken"]["maxLength"] == MAX_SCOPE_LENGTH
    assert f"{{1,{MAX_SCOPE_LENGTH}}}" in schemas["AdminScopesInput"]["items"]["pattern"]
    assert schemas["AdminScopesInput"]["maxItems"] == MAX_SCOPES
    assert schemas["AdminAudiencesInput"]["maxItems"] == MAX_AUDIENCES
    shown = schemas["AdminClientFields"]["properties"]
    assert (shown["scopes"]["maxItems"], shown["audiences"]["maxItems"]) == (
        MAX_SCOPES,
        MAX_AUDIENCES,
    )
    assert schemas["AdminSecretRotation"]["properties"]["grace"]["maximum"] == MAX_GRACE
    assert f"{{1,{MAX_CLIENT_ID_LENGTH}}}$" in schemas["ClientId"]["pattern"]
    audit = spec["paths"]["/admin/api/v1/audit"]["get"]
    (limit,) = [p for p in audit["parameters"] if p["name"] == "limit"]
    assert limit["schema"]["maximum"] == MAX_EVENTS
    assert spec["components"]["securitySchemes"]["bearerAdmin"]["scheme"] == "bearer"
    assert schemas["SigningAlgorithm"]["enum"] == list(SIGNING_ALGORITHMS)
    rotation = schemas["AdminKeyRotation"]["properties"]
    assert rotation["activate_after"]["maximum"] == MAX_ACTIVATE_AFTER
    assert rotation["bits"]["enum"] == [*KEY_SIZES, None]
    assert f"`{DEFAULT_ALG}`" in rotation["alg"]["description"]
    assert f"`{DEFAULT_KEY_BITS}`" in rotation["bits"]["description"]
    claims = schemas["ClientClaims"]
    assert claims["maxProperties"] == MAX_CLAIMS
    assert f"at most {MAX_CLAIMS_SIZE} bytes" in " ".join(claims["description"].split())
    assert f"nested at most {MAX_DEPTH} deep" in " ".join(claims["description"].split())
    assert schemas["ClaimName"]["pattern"].endswith(f"{{1,{MAX_CLAIM_NAME}}}$")
    assert schemas["ClaimName"]["not"]["enum"] == sorted(RESERVED)
    assert schemas["RegistrableAuthMethod"]["enum"] == list(api.AUTH_METHODS)
    assert schemas["ClientAuthMethod"]["enum"] == list(AUTH_METHODS)
    assert schemas["ClientRateLimitMode"]["enum"] == list(RATE_LIMIT_MODES)
    assert schemas["ClientRateLimit"]["maxLength"] == MAX_RATE_TEXT
    assert schemas["ClientKeySetURL"]["maxLength"] == MAX_URI_LENGTH
    assert f"at most {MAX_URI_LENGTH} characters" in schemas["ClientKeySetURL"]["description"]
    keys = " ".join(schemas["ClientKeysInput"]["description"].split())
    assert f"at most {assertions.MAX_KEY_SET_LENGTH} characters" in keys
    refused = [any_of["required"] for any_of in schemas["ClientPublicJWK"]["not"]["anyOf"]]
    assert refused == [[name] for name in sorted(assertions._PRIVATE_MEMBERS)]


def test_client_schemas_keep_secrets_where_they_belong(checker: SpecChecker) -> None:
    """A client shown with a secret does not match ``AdminClient``, nor one without it
    ``AdminClientCreated``: the checker would catch a secret leaking into a listing."""
    shown = {
        "client_id": "svc",
        "description": "",
        "scopes": ["read"],
        "audiences": [],
        "ttl": None,
        "claims": {},
        "rate_limit": None,
        "rate_limit_mode": "enforce",
        "auth_method": "client_secret",
        "jwks_uri": None,
        "jwks": None,
        "disabled": False,
        "created_at": "2025-01-31T12:00:00+00:00",
        "last_token_at": None,
        "early_token_requests": 0,
        "previous_secret_valid_until": None,
    }
    secret = {"client_secret": "A" * 43}
    checker.validate("/components/schemas/AdminClient", shown, "client")
    checker.validate("/components/schemas/AdminClientCreated", shown | secret, "created")
    with pytest.raises(Mismatch):
        checker.validate("/components/schemas/AdminClient", shown | secret, "client")
    with pytest.raises(Mismatch):
        checker.validate("/components/schemas/AdminClientCreated", shown, "created")
    with pytest.raises(Mismatch):
        checker.validate("/components/schemas/AdminClient", shown | {"ttl": 0}, "client")
    # A private_key_jwt client is created without a secret, and shown with its keys.
    for keys in ({"jwks_uri": KEY_URL}, {"jwks": JWKS}):
        keyed = shown | PRIVATE | keys
        checker.validate("/components/schemas/AdminClient", keyed, "client")
        checker.validate("/components/schemas/AdminClientCreated", keyed, "created")
        with pytest.raises(Mismatch):
            checker.validate("/components/schemas/AdminClientCreated", keyed | secret, "created")
    for wrong in ({"auth_method": "saml"}, {"jwks": {"keys": [PRIVATE_JWK]}}):
        with pytest.raises(Mismatch):
            checker.validate("/components/schemas/AdminClient", shown | PRIVATE | wrong, "client")
    limited = shown | {"rate_limit": "5/10 seconds", "rate_limit_mode": "monitor"}
    checker.validate("/components/schemas/AdminClient", limited, "client")
    for wrong_limit in ({"rate_limit": "5/fortnight"}, {"rate_limit_mode": "warn"}):
        with pytest.raises(Mismatch):
            checker.validate("/components/schemas/AdminClient", shown | wrong_limit, "client")


def test_paths_below_a_client_are_not_taken_for_the_client(checker: SpecChecker) -> None:
    """``/clients/x/disable`` is its own operation, not ``/clients/{client_id}``."""
    assert checker.operation(API + "/clients/x/disable", "POST").endswith("~1disable/post")
    with pytest.raises(Mismatch):
        checker.operation(API + "/clients/x/disable", "GET")


# -- every operation, as it succeeds -----------------------------------------------------


async def test_every_operation_succeeds_as_the_spec_says(
    checker: SpecChecker, client: QuartClient, admin_token: str
) -> None:
    registration = {
        "client_id": "billing",
        "scopes": ["read", "write"],
        "audiences": ["https://api.test"],
        "ttl": 120,
        "description": "Billing service",
    }
    created = await send(checker, client, "POST", "/clients", admin_token, registration)
    assert created.status == 201
    assert created.body["client_id"] == "billing" and created.body["client_secret"]

    listed = await admin(checker, client, "GET", "/clients", admin_token)
    assert listed.status == 200
    assert [c["client_id"] for c in listed.body] == ["billing", "ops"]
    shown = await admin(checker, client, "GET", "/clients/billing", admin_token)
    assert (shown.status, shown.body["ttl"]) == (200, 120)

    change = {"scopes": ["read", "write", "refunds"], "ttl": None, "description": None}
    changed = await send(checker, client, "PATCH", "/clients/billing", admin_token, change)
    assert changed.status == 200
    assert changed.body["scopes"] == ["read", "write", "refunds"]
    assert (changed.body["ttl"], changed.body["description"]) == (None, "Billing service")

    rotate = "/clients/billing/rotate-secret"
    rotated = await send(checker, client, "POST", rotate, admin_token, {"grace": 60})
    assert rotated.status == 200 and rotated.body["previous_secret_valid_until"] is not None
    rotated = await send(checker, client, "POST", rotate, admin_token, {})
    assert rotated.status == 200 and rotated.body["previous_secret_valid_until"] is None

    disable = "/clients/billing/disable"
    shown = await send(checker, client, "POST", disable, admin_token, {"revoke_tokens": True})
    assert (shown.status, shown.body["disabled"]) == (200, True)
    # The spec declares no request body for enable (the API ignores one): none is sent.
    shown = await admin(checker, client, "POST", "/clients/billing/enable", admin_token)
    assert (shown.status, shown.body["disabled"]) == (200, False)

    query = "target=client:billing&action=client.update&since=2000-01-01T00:00:00Z&limit=10"
    events = await admin(checker, client, "GET", f"/audit?{query}", admin_token)
    assert events.status == 200
    assert [e["action"] for e in events.body] == ["client.update"]
    events = await admin(checker, client, "GET", "/audit?actor=client:ops", admin_token)
    assert events.status == 200 and len(events.body) == 6
    assert {e["actor"] for e in events.body} == {"client:ops"}

    removed = await admin(checker, client, "DELETE", "/clients/billing", admin_token)
    assert (removed.status, removed.body) == (204, None)


async def test_private_key_jwt_clients_are_managed_as_the_spec_says(
    checker: SpecChecker, client: QuartClient, admin_token: str
) -> None:
    """A private_key_jwt client registered with its keys (a JWK Set) or their URL is
    a 201 without a secret, shown with its keys; PATCH replaces them (the set by a URL,
    the URL by one JWK), each change audited without any key material."""
    body = {"client_id": "signer", "scopes": ["read"], **PRIVATE, "jwks": JWKS}
    created = await send(checker, client, "POST", "/clients", admin_token, body)
    assert created.status == 201 and "client_secret" not in created.body
    assert (created.body["auth_method"], created.body["jwks_uri"]) == (PRIVATE_KEY_JWT, None)
    assert created.body["jwks"] == JWKS
    body = {"client_id": "fetcher", **PRIVATE, "jwks_uri": KEY_URL, "jwks": None}
    created = await send(checker, client, "POST", "/clients", admin_token, body)
    assert created.status == 201 and "client_secret" not in created.body
    assert (created.body["jwks_uri"], created.body["jwks"]) == (KEY_URL, None)
    secret = await send(checker, client, "POST", "/clients", admin_token, {"client_id": "s"})
    assert secret.body["auth_method"] == "client_secret" and secret.body["client_secret"]

    change = {"jwks_uri": KEY_URL, "jwks": None}
    changed = await send(checker, client, "PATCH", "/clients/signer", admin_token, change)
    assert changed.status == 200
    assert (changed.body["jwks_uri"], changed.body["jwks"]) == (KEY_URL, None)
    change = {"jwks": JWK, "description": "Fetches no more"}
    changed = await send(checker, client, "PATCH", "/clients/fetcher", admin_token, change)
    assert changed.status == 200
    assert (changed.body["jwks_uri"], changed.body["jwks"]) == (None, {"keys": [JWK]})
    shown = await admin(checker, client, "GET", "/clients/fetcher", admin_token)
    assert shown.body == changed.body

    events = await admin(checker, client, "GET", "/audit?action=client.update", admin_token)
    assert [e["target"] for e in events.body] == ["client:fetcher", "client:signer"]
    assert all("keys" in event["details"]["changed"] for event in events.body)
    listed = await admin(checker, client, "GET", "/audit", admin_token)
    assert JWK["x"] not in json.dumps(listed.body)


async def test_key_operations_succeed_as_the_spec_says(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    settings: Settings,
    admin_token: str,
) -> None:
    """A routine rotation, a second one refused (409, nothing written), the emergency one
    replacing the pending key, a prune keeping the retired key then a forced one removing
    it (and with it the admin token it signed), a rotation with the default delay; each
    answer and each audit event as the spec says."""
    listed = await admin(checker, client, "GET", "/keys", admin_token)
    assert listed.status == 200
    [first] = listed.body
    assert (first["state"], first["retired_at"]) == ("active", None)

    rotate = {"activate_after": 3600, "alg": "RS256", "bits": 2048}
    routine = await send(checker, client, "POST", "/keys/rotate", admin_token, rotate)
    assert routine.status == 200
    assert (routine.body["activate_after"], routine.body["replaced"]) == (3600, [])
    pending = routine.body["kid"]
    keys = {key["kid"]: key for key in routine.body["keys"]}
    assert {kid: key["state"] for kid, key in keys.items()} == {
        first["kid"]: "active",
        pending: "next",
    }
    assert keys[pending]["alg"] == "RS256"
    assert keys[first["kid"]]["retired_at"] == keys[pending]["activate_at"]

    # Only one routine rotation may be pending: a 409 naming the pending key, no field.
    second = await send(checker, client, "POST", "/keys/rotate", admin_token, {"bits": 3072})
    assert refusal(second) == (409, "conflict", None)
    assert pending in second.body["error_description"]
    second = await admin(checker, client, "POST", "/keys/rotate", admin_token)
    assert refusal(second) == (409, "conflict", None)

    emergency = {"activate_after": 0, "alg": "RS384", "bits": 3072}
    replaced = await send(checker, client, "POST", "/keys/rotate", admin_token, emergency)
    assert replaced.status == 200
    assert (replaced.body["activate_after"], replaced.body["replaced"]) == (0, [pending])
    signer = replaced.body["kid"]
    keys = {key["kid"]: key for key in replaced.body["keys"]}
    assert {kid: key["state"] for kid, key in keys.items()} == {
        first["kid"]: "retired",
        signer: "active",
    }
    assert (keys[signer]["alg"], keys[signer]["bits"]) == ("RS384", 3072)

    pruned = await admin(checker, client, "POST", "/keys/prune", admin_token)
    assert pruned.status == 200
    assert pruned.body == {
        "removed": [],
        "kept": [first["kid"]],
        "longest_token_lifetime": settings.token_ttl + settings.leeway,
    }

    # The admin token was signed by the first key: a forced prune ends it too.
    secret = await register("ops2", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    fresh = await get_token(client, "ops2", secret, scope=ADMIN_SCOPE, audience=ISSUER)
    force = {"force": True}
    pruned = await send(checker, client, "POST", "/keys/prune", admin_token, force)
    assert pruned.status == 200
    assert (pruned.body["removed"], pruned.body["kept"]) == ([first["kid"]], [])
    refused = await admin(checker, client, "GET", "/keys", admin_token)
    assert refusal(refused)[:2] == (401, "invalid_token")
    listed = await admin(checker, client, "GET", "/keys", fresh)
    assert [(key["kid"], key["state"]) for key in listed.body] == [(signer, "active")]

    # No body: a routine rotation after the JWKS cache lifetime.
    routine = await admin(checker, client, "POST", "/keys/rotate", fresh)
    assert routine.status == 200
    assert routine.body["activate_after"] == settings.jwks_max_age

    events = await admin(checker, client, "GET", "/audit?target=key:" + signer, fresh)
    assert [(e["actor"], e["action"]) for e in events.body] == [("client:ops", "key.rotate")]
    assert events.body[0]["details"]["replaced"] == [pending]
    events = await admin(checker, client, "GET", "/audit?action=key.prune", fresh)
    assert [(e["target"], e["details"]) for e in events.body] == [
        (f"key:{first['kid']}", {"force": True})
    ]
    events = await admin(checker, client, "GET", "/audit?action=key.rotate", fresh)
    assert [e["actor"] for e in events.body] == ["client:ops2", "client:ops", "client:ops"]


#: Bodies the API accepts (on a client ``svc``), each at the edge of what the spec allows.
ACCEPTED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/clients", {"client_id": "a" * MAX_CLIENT_ID_LENGTH}),
    (
        "POST",
        "/clients",
        {
            "client_id": "b",
            "scopes": None,
            "audiences": None,
            "ttl": None,
            "description": None,
            "claims": None,
        },
    ),
    (
        "POST",
        "/clients",
        {
            "client_id": "c.d_e-f:g@h",
            "scopes": ["write", "read", "s" * MAX_SCOPE_LENGTH],
            "audiences": ["urn:example:orders", "x" * 512],
            "ttl": MAX_TOKEN_TTL,
            "description": "d" * MAX_DESCRIPTION,
        },
    ),
    (
        "POST",
        "/clients",
        {
            "client_id": "claimed",
            "claims": {
                "n" * MAX_CLAIM_NAME: "s",
                "!#$%&'*+-.^_`|~": [1, 2.5, None, True, {"a": [[[[[[1]]]]]]}],
                **{f"c{i}": i for i in range(MAX_CLAIMS - 2)},
            },
        },
    ),
    ("PATCH", "/clients/svc", {}),
    ("PATCH", "/clients/svc", {"claims": None}),
    ("PATCH", "/clients/svc", {"claims": {}}),
    ("PATCH", "/clients/svc", {"scopes": [], "audiences": [], "ttl": 1, "description": ""}),
    (
        "PATCH",
        "/clients/svc",
        {
            "scopes": [f"s{i}" for i in range(MAX_SCOPES)],
            "audiences": [f"urn:a:{i}" for i in range(MAX_AUDIENCES)],
        },
    ),
    ("POST", "/clients/svc/rotate-secret", {"grace": None}),
    ("POST", "/clients/svc/rotate-secret", {"grace": MAX_GRACE}),
    ("POST", "/clients/svc/disable", {"revoke_tokens": False}),
    ("POST", "/keys/rotate", {"activate_after": None, "alg": None, "bits": None}),
    ("POST", "/keys/rotate", {"activate_after": MAX_ACTIVATE_AFTER, "alg": "RS256"}),
    ("POST", "/keys/rotate", {"activate_after": 0, "alg": "RS384", "bits": 2048}),
    ("POST", "/keys/prune", {"force": False}),
    ("POST", "/keys/prune", {"force": True}),
    ("POST", "/clients", {"client_id": "k1", **PRIVATE, "jwks": JWKS}),
    ("POST", "/clients", {"client_id": "k2", **PRIVATE, "jwks": JWK, "jwks_uri": None}),
    (
        "POST",
        "/clients",
        {"client_id": "k3", **PRIVATE, "jwks_uri": "HTTP://k" + "/" * (MAX_URI_LENGTH - 8)},
    ),
    ("POST", "/clients", {"client_id": "k4", "auth_method": "client_secret", "jwks": None}),
    ("POST", "/clients", {"client_id": "k5", "auth_method": None, "jwks_uri": None}),
    ("PATCH", "/clients/keyed", {"jwks_uri": KEY_URL}),
    ("PATCH", "/clients/keyed", {"jwks": JWK, "jwks_uri": None, "scopes": ["read"]}),
    ("PATCH", "/clients/keyed", {"jwks": None}),
]


@pytest.mark.parametrize(("method", "path", "body"), ACCEPTED)
async def test_what_the_api_accepts_the_spec_allows(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    admin_token: str,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    await register("svc")
    await _register_keyed(client)
    answer = await send(checker, client, method, path, admin_token, body)
    assert answer.status in (200, 201)


async def _register_keyed(client: QuartClient) -> None:
    """A private_key_jwt client ``keyed`` (its keys ``JWKS``), through the admin service."""
    dealer: Dealer = client.app.extensions["tokendealer"]
    keys = admin_clients.check_authentication(PRIVATE_KEY_JWT, jwk_text=json.dumps(JWKS))
    await admin_clients.register(dealer.store, "keyed", actor="test", authentication=keys)


# -- each error the spec declares --------------------------------------------------------

#: (request on a client ``svc``, the field the 400 names). Each body is refused by the
#: API and by the spec.
REFUSED: list[tuple[str, str, Any, str]] = [
    ("POST", "/clients", {}, "client_id"),
    ("POST", "/clients", {"client_id": None}, "client_id"),
    ("POST", "/clients", {"client_id": "bad id"}, "client_id"),
    ("POST", "/clients", {"client_id": "a" * (MAX_CLIENT_ID_LENGTH + 1)}, "client_id"),
    ("POST", "/clients", {"client_id": "a", "secret": "mine"}, "secret"),
    ("POST", "/clients", {"client_id": "a", "scopes": "read"}, "scopes"),
    ("POST", "/clients", {"client_id": "a", "scopes": ['bad"scope']}, "scopes"),
    ("POST", "/clients", {"client_id": "a", "audiences": ["has space"]}, "audiences"),
    ("POST", "/clients", {"client_id": "a", "audiences": ["x" * 513]}, "audiences"),
    ("POST", "/clients", {"client_id": "a", "scopes": ["s" * (MAX_SCOPE_LENGTH + 1)]}, "scopes"),
    (
        "POST",
        "/clients",
        {"client_id": "a", "scopes": [f"s{i}" for i in range(MAX_SCOPES + 1)]},
        "scopes",
    ),
    (
        "POST",
        "/clients",
        {"client_id": "a", "audiences": [f"urn:a:{i}" for i in range(MAX_AUDIENCES + 1)]},
        "audiences",
    ),
    ("POST", "/clients", {"client_id": "a", "ttl": 0}, "ttl"),
    ("POST", "/clients", {"client_id": "a", "ttl": MAX_TOKEN_TTL + 1}, "ttl"),
    ("POST", "/clients", {"client_id": "a", "ttl": "60"}, "ttl"),
    ("POST", "/clients", {"client_id": "a", "ttl": True}, "ttl"),
    ("POST", "/clients", {"client_id": "a", "description": 5}, "description"),
    (
        "POST",
        "/clients",
        {"client_id": "a", "description": "d" * (MAX_DESCRIPTION + 1)},
        "description",
    ),
    ("PATCH", "/clients/svc", {"client_id": "other"}, "client_id"),
    ("PATCH", "/clients/svc", {"scopes": [1]}, "scopes"),
    ("PATCH", "/clients/svc", {"scopes": [f"s{i}" for i in range(MAX_SCOPES + 1)]}, "scopes"),
    ("PATCH", "/clients/svc", {"ttl": -5}, "ttl"),
    ("POST", "/clients", {"client_id": "a", "claims": "tenant=acme"}, "claims"),
    ("POST", "/clients", {"client_id": "a", "claims": {"sub": "admin"}}, "claims"),
    ("PATCH", "/clients/svc", {"claims": {"client_epoch": "x"}}, "claims"),
    ("PATCH", "/clients/svc", {"claims": {"has space": 1}}, "claims"),
    ("PATCH", "/clients/svc", {"claims": {"n" * (MAX_CLAIM_NAME + 1): 1}}, "claims"),
    ("PATCH", "/clients/svc", {"claims": {f"c{i}": i for i in range(MAX_CLAIMS + 1)}}, "claims"),
    ("POST", "/clients/svc/rotate-secret", {"grace": -1}, "grace"),
    ("POST", "/clients/svc/rotate-secret", {"grace": MAX_GRACE + 1}, "grace"),
    ("POST", "/clients/svc/rotate-secret", {"grace": "60"}, "grace"),
    ("POST", "/clients/svc/rotate-secret", {"revoke_tokens": True}, "revoke_tokens"),
    ("POST", "/clients/svc/disable", {"revoke_tokens": "yes"}, "revoke_tokens"),
    ("POST", "/clients/svc/disable", {"revoke_tokens": None}, "revoke_tokens"),
    ("POST", "/clients/svc/disable", {"grace": 0}, "grace"),
    ("POST", "/keys/rotate", {"activate_after": -1}, "activate_after"),
    ("POST", "/keys/rotate", {"activate_after": MAX_ACTIVATE_AFTER + 1}, "activate_after"),
    ("POST", "/keys/rotate", {"activate_after": "3600"}, "activate_after"),
    ("POST", "/keys/rotate", {"activate_after": True}, "activate_after"),
    ("POST", "/keys/rotate", {"alg": "HS256"}, "alg"),
    ("POST", "/keys/rotate", {"alg": "rs512"}, "alg"),
    ("POST", "/keys/rotate", {"alg": 512}, "alg"),
    ("POST", "/keys/rotate", {"bits": 1024}, "bits"),
    ("POST", "/keys/rotate", {"bits": 2560}, "bits"),
    ("POST", "/keys/rotate", {"bits": "2048"}, "bits"),
    ("POST", "/keys/rotate", {"kid": "mine"}, "kid"),
    ("POST", "/keys/prune", {"force": "yes"}, "force"),
    ("POST", "/keys/prune", {"force": None}, "force"),
    ("POST", "/keys/prune", {"max_token_lifetime": 0}, "max_token_lifetime"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": None, "jwks_uri": None}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": JWKS, "jwks_uri": KEY_URL}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": PRIVATE_JWK}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": {"keys": [PRIVATE_JWK]}}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": {"keys": []}}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": {"kty": "oct", "k": "AA"}}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": json.dumps(JWK)}, "jwks"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks_uri": "ftp://keys.test/"}, "jwks_uri"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks_uri": "keys.test/jwks"}, "jwks_uri"),
    ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks_uri": "https:///jwks"}, "jwks_uri"),
    (
        "POST",
        "/clients",
        {"client_id": "a", **PRIVATE, "jwks_uri": "https://k" + "/" * (MAX_URI_LENGTH - 8)},
        "jwks_uri",
    ),
    ("POST", "/clients", {"client_id": "a", "jwks": JWKS}, "jwks"),
    ("POST", "/clients", {"client_id": "a", "auth_method": "client_secret", "jwks": JWK}, "jwks"),
    (
        "POST",
        "/clients",
        {"client_id": "a", "auth_method": "client_secret", "jwks_uri": KEY_URL},
        "jwks_uri",
    ),
    ("POST", "/clients", {"client_id": "a", "auth_method": "federated"}, "auth_method"),
    ("POST", "/clients", {"client_id": "a", "auth_method": "PRIVATE_KEY_JWT"}, "auth_method"),
    ("PATCH", "/clients/svc", {"auth_method": PRIVATE_KEY_JWT}, "auth_method"),
    ("PATCH", "/clients/svc", {"jwks": JWKS, "jwks_uri": KEY_URL}, "jwks"),
    ("PATCH", "/clients/svc", {"jwks": {"keys": [PRIVATE_JWK]}}, "jwks"),
    ("PATCH", "/clients/svc", {"jwks_uri": "not a url"}, "jwks_uri"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), REFUSED)
async def test_refused_bodies_are_400_as_the_spec_says(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    admin_token: str,
    method: str,
    path: str,
    body: Any,
    field: str,
) -> None:
    await register("svc")
    with pytest.raises(Mismatch):
        checker.check_request(API + path, method, JSON, body)
    answer = await admin(checker, client, method, path, admin_token, body)
    assert refusal(answer) == (
        400,
        "invalid_request",
        field,
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [(method, path) for method, path, body in OPERATIONS if body is not None],
)
@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"not json", b""])
async def test_a_body_that_is_not_a_json_object_is_400(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    admin_token: str,
    method: str,
    path: str,
    data: bytes,
) -> None:
    await register("svc")
    if data == b"" and path.endswith(OPTIONAL_BODIES):
        return  # their body is optional: an empty one is {} (tested with the operations)
    if data.startswith((b"[", b'"')):  # JSON, but no object: the spec refuses it too
        with pytest.raises(Mismatch):
            checker.check_request(API + path, method, JSON, json.loads(data))
    answer = await admin(
        checker, client, method, path, admin_token, data=data, headers={"Content-Type": JSON}
    )
    assert refusal(answer)[:2] == (400, "invalid_request")


@pytest.mark.parametrize("path", ["/clients", "/keys/rotate", "/keys/prune"])
async def test_a_body_over_the_limit_is_413(
    checker: SpecChecker, client: QuartClient, admin_token: str, path: str
) -> None:
    answer = await admin(
        checker,
        client,
        "POST",
        path,
        admin_token,
        data=b'{"client_id": "' + b"a" * 70_000 + b'"}',
        headers={"Content-Type": JSON},
    )
    assert refusal(answer)[:2] == (413, "invalid_request")


@pytest.mark.parametrize(("method", "path", "body"), [o for o in OPERATIONS if "svc" in o[1]])
async def test_a_malformed_client_id_in_the_path_is_400(
    checker: SpecChecker,
    client: QuartClient,
    admin_token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    path = path.replace("svc", "bad%20id")
    answer = await admin(checker, client, method, path, admin_token, body)
    assert refusal(answer) == (
        400,
        "invalid_request",
        "client_id",
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("action=client.explode", "action"),
        ("limit=0", "limit"),
        (f"limit={MAX_EVENTS + 1}", "limit"),
        ("limit=many", "limit"),
        ("since=yesterday", "since"),
    ],
)
async def test_a_bad_audit_query_is_400(
    checker: SpecChecker, client: QuartClient, admin_token: str, query: str, field: str
) -> None:
    answer = await admin(checker, client, "GET", f"/audit?{query}", admin_token)
    assert refusal(answer) == (
        400,
        "invalid_request",
        field,
    )


@pytest.mark.parametrize(("method", "path", "body"), [o for o in OPERATIONS if "svc" in o[1]])
async def test_an_unknown_client_is_404(
    checker: SpecChecker,
    client: QuartClient,
    admin_token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    path = path.replace("svc", "nobody")
    answer = await admin(checker, client, method, path, admin_token, body)
    assert refusal(answer) == (
        404,
        "not_found",
        "client_id",
    )


async def test_rotating_the_secret_of_a_client_without_one_is_409(
    checker: SpecChecker, client: QuartClient, admin_token: str
) -> None:
    await _register_keyed(client)
    path = "/clients/keyed/rotate-secret"
    answer = await send(checker, client, "POST", path, admin_token, {"grace": 0})
    assert refusal(answer)[:2] == (409, "conflict")
    assert "private_key_jwt" in answer.body["error_description"]
    events = await admin(checker, client, "GET", "/audit?action=client.rotate_secret", admin_token)
    assert events.body == []


async def test_an_existing_client_id_is_409(
    checker: SpecChecker, client: QuartClient, admin_token: str
) -> None:
    answer = await send(checker, client, "POST", "/clients", admin_token, {"client_id": "ops"})
    assert refusal(answer) == (
        409,
        "conflict",
        "client_id",
    )


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS, ids=OPERATION_IDS)
async def test_callers_are_refused_as_the_spec_says(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    admin_token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    """No token or another scheme: a bare 401 challenge. A token that does not verify
    (tampered, for another audience): 401 ``invalid_token``. A token without the admin
    scope: 403 ``insufficient_scope``. Nothing changes. Each attempt comes from an address
    of its own: some routes (a key rotation) allow few attempts per address."""
    await register("svc")
    secret = await register("reader", scopes=("read", ADMIN_SCOPE), audiences=(ISSUER,))
    unscoped = await get_token(client, "reader", secret, scope="read", audience=ISSUER)
    secret = await register("tool", scopes=(ADMIN_SCOPE,), audiences=("https://api.test",))
    other_audience = await get_token(client, "tool", secret, scope=ADMIN_SCOPE)

    for headers in ({}, {"Authorization": "Basic b3BzOnNlY3JldA=="}):
        answer = await admin(
            checker, client, method, path, body=body, headers=headers, scope_base=elsewhere()
        )
        assert refusal(answer)[:2] == (401, "invalid_token")
        assert answer.headers["WWW-Authenticate"] == BARE_CHALLENGE

    # RFC 6750 §3.1: a Bearer header without exactly one token is a malformed request.
    for value in ("Bearer", f"Bearer {admin_token} {admin_token}"):
        answer = await admin(
            checker,
            client,
            method,
            path,
            body=body,
            headers={"Authorization": value},
            scope_base=elsewhere(),
        )
        assert refusal(answer)[:2] == (400, "invalid_request")
        assert 'error="invalid_request"' in answer.headers["WWW-Authenticate"]

    for token in (tamper(admin_token), other_audience):
        answer = await admin(checker, client, method, path, token, body, scope_base=elsewhere())
        assert refusal(answer)[:2] == (401, "invalid_token")
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]

    answer = await admin(checker, client, method, path, unscoped, body, scope_base=elsewhere())
    assert refusal(answer)[:2] == (403, "insufficient_scope")

    listed = await admin(checker, client, "GET", "/clients", admin_token)
    assert [c["client_id"] for c in listed.body] == ["ops", "reader", "svc", "tool"]
    events = await admin(checker, client, "GET", "/audit", admin_token)
    assert events.body == []


async def test_other_methods_are_405_as_the_spec_says(
    checker: SpecChecker, client: QuartClient, spec: dict[str, Any], admin_token: str
) -> None:
    """Each admin path answers 405 to the methods it does not describe, authenticated or
    not, with the spec's Allow."""
    for template, item in spec["paths"].items():
        if not template.startswith(API):
            continue
        described = {m.upper() for m in item if m in HTTP_METHODS}
        path = template.replace("{client_id}", "svc")
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - described:
            for headers in ({}, {"Authorization": f"Bearer {admin_token}"}):
                response = await client.open(path, method=method, headers=headers)
                assert response.status_code == 405, (method, path)
                for declared in described:
                    checker.check_response(
                        path,
                        declared,
                        405,
                        response.headers,
                        response.mimetype or "",
                        await response.get_data(),
                    )
                allowed = {m.strip() for m in response.headers["Allow"].split(",")}
                assert allowed - {"HEAD"} == described, (method, path)


async def test_rate_limited_answers_are_429_as_the_spec_says(
    settings: Settings, checker: SpecChecker
) -> None:
    """Limited per client address before any authentication: a caller without a token
    is limited too."""
    limited = dataclasses.replace(settings, verify_rate_limit=Rate(1, 60))
    async with running(limited) as limited_client:
        statuses = [
            (await admin(checker, limited_client, "GET", "/clients")).status for _ in range(2)
        ]
    assert statuses == [401, 429]


class FailingStore(SQLStore):
    """A real SQLite store whose listings (clients, audit events) fail with ``failure``;
    pruning keys reads the clients' lifetimes, so it fails too."""

    def __init__(self, url: str, failure: Exception) -> None:
        super().__init__(url)
        self.failure = failure

    async def list_clients(self) -> list[Client]:
        raise self.failure

    async def audit_events(self, **filters: Any) -> list[Any]:
        raise self.failure


@pytest.fixture(name="failing_app")
async def _failing_app(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Quart]:
    app = create_app(settings, store=FailingStore(settings.sqlalchemy_url, request.param))
    async with app.test_app():
        yield app


@pytest.mark.parametrize(
    ("failing_app", "status", "error"),
    [
        (StoreUnavailable("database unavailable: test"), 503, "temporarily_unavailable"),
        (RuntimeError("boom"), 500, "server_error"),
    ],
    indirect=["failing_app"],
    ids=["store unavailable", "unexpected error"],
)
async def test_store_failures_are_answered_as_the_spec_says(
    checker: SpecChecker, failing_app: Quart, status: int, error: str
) -> None:
    """A store outage is a 503 with Retry-After, an unexpected error a 500 with a request
    id, for an authenticated caller."""
    dealer: Dealer = failing_app.extensions["tokendealer"]
    secret = await add_client(dealer, "ops", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    client = failing_app.test_client()
    token = await get_token(client, "ops", secret, scope=ADMIN_SCOPE, audience=ISSUER)
    # Captured, not rendered: the console renderer's traceback takes half a second each.
    with structlog.testing.capture_logs():
        for method, path in (("GET", "/clients"), ("GET", "/audit"), ("POST", "/keys/prune")):
            answer = await admin(checker, client, method, path, token)
            assert refusal(answer)[:2] == (status, error), path


async def test_a_federated_client_is_shown_as_the_spec_says(
    checker: SpecChecker, client: QuartClient, admin_token: str, dealer: Dealer
) -> None:
    """Federated clients are registered with the CLI; the API shows them, their binding
    included, as the spec describes."""
    await dealer.store.add_client(
        Client(
            "k8s-worker",
            "",
            auth_method=FEDERATED,
            trust="k8s",
            subject_pattern="system:serviceaccount:billing:*",
            created_at=time.time(),
        )
    )
    listed = await admin(checker, client, "GET", "/clients", admin_token)
    [shown] = [c for c in listed.body if c["client_id"] == "k8s-worker"]
    assert (shown["auth_method"], shown["trust"], shown["subject"]) == ("federated", "k8s", None)
    assert shown["subject_pattern"] == "system:serviceaccount:billing:*"
