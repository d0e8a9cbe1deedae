"""The admin API (``/admin/api/v1``): callers with a dealer token carrying the scope
``tokendealer:admin`` for the issuer (RFC 6750 errors otherwise), clients managed end to
end, each change audited with the caller as actor."""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.apps import running
from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.keyserver import KeyServer, public_jwk
from tests.support.tokens import basic, get_token, request_token, unverified
from tokendealer.http.limits import KEY_GENERATION_LIMIT
from tokendealer.keys.keyset import MANIFEST, load_keyset
from tokendealer.protocol.assertions import ASSERTION_TYPE
from tokendealer.protocol.errors import ADMIN_SCOPE
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings

API = "/admin/api/v1"
#: A private_key_jwt client's key, and the one that replaces it.
KEY = ec.generate_private_key(ec.SECP256R1())
NEW_KEY = ec.generate_private_key(ec.SECP384R1())
PRIVATE = {"auth_method": "private_key_jwt"}


@pytest.fixture(name="admin_token")
async def _admin_token(client: QuartClient, register: Register) -> str:
    secret = await register("ops", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    return await get_token(client, "ops", secret, scope=ADMIN_SCOPE, audience=ISSUER)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    client: QuartClient, method: str, path: str, token: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any, Any]:
    response = await client.open(
        API + path, method=method, headers=bearer(token), json=body, **kwargs
    )
    data = await response.get_data()
    return response.status_code, (await response.get_json() if data else None), response


# -- who may call ------------------------------------------------------------------------


async def test_no_token_is_401_with_a_bare_bearer_challenge(client: QuartClient) -> None:
    response = await client.get(API + "/clients")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokendealer"'
    assert (await response.get_json())["error"] == "invalid_token"


async def test_other_schemes_are_401(client: QuartClient) -> None:
    response = await client.get(
        API + "/clients", headers={"Authorization": "Basic b3BzOnNlY3JldA=="}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokendealer"'


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer a b"])
async def test_malformed_bearer_header_is_400_invalid_request(
    client: QuartClient, header: str
) -> None:
    """RFC 6750 §3.1: a malformed request is ``invalid_request`` (400)."""
    response = await client.get(API + "/clients", headers={"Authorization": header})
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_request"
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]


async def test_a_disabled_caller_administers_nothing(
    client: QuartClient, admin_token: str, register: Register
) -> None:
    """Disabling an admin client without revoking its tokens still ends its admin
    access: the API checks that the caller's client is enabled."""
    other_secret = await register("ops2", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    other = await get_token(client, "ops2", other_secret, scope=ADMIN_SCOPE, audience=ISSUER)
    status, _, _ = await call(client, "POST", "/clients/ops/disable", other, {})
    assert status == 200
    status, body, _ = await call(client, "GET", "/clients", admin_token)
    assert status == 401 and body["error"] == "invalid_token"
    assert (await call(client, "POST", "/clients/ops/enable", other))[0] == 200
    assert (await call(client, "GET", "/clients", admin_token))[0] == 200


async def test_bad_token_is_invalid_token(client: QuartClient, admin_token: str) -> None:
    head, payload, signature = admin_token.split(".")
    status, body, response = await call(
        client, "GET", "/clients", f"{head}.{payload}.{signature[:-4]}AAAA"
    )
    assert status == 401 and body["error"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_token_without_the_scope_is_403_insufficient_scope(
    client: QuartClient, register: Register
) -> None:
    secret = await register("svc", scopes=("read",), audiences=(ISSUER,))
    token = await get_token(client, "svc", secret, audience=ISSUER)
    status, body, response = await call(client, "GET", "/clients", token)
    assert status == 403 and body["error"] == "insufficient_scope"
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and f'scope="{ADMIN_SCOPE}"' in challenge


async def test_token_for_another_audience_is_refused(
    client: QuartClient, register: Register
) -> None:
    secret = await register("ops", scopes=(ADMIN_SCOPE,), audiences=("https://api.test",))
    token = await get_token(client, "ops", secret, scope=ADMIN_SCOPE)
    assert unverified(token)[1]["aud"] == "https://api.test"
    status, body, _ = await call(client, "GET", "/clients", token)
    assert status == 401 and body["error"] == "invalid_token"


async def test_revoked_token_is_refused(client: QuartClient, admin_token: str) -> None:
    """The API honours revocation like every verification at the dealer: the caller
    disabling itself with revoke_tokens ends its own token."""
    status, _, _ = await call(
        client, "POST", "/clients/ops/disable", admin_token, {"revoke_tokens": True}
    )
    assert status == 200
    status, body, _ = await call(client, "GET", "/clients", admin_token)
    assert status == 401 and body["error"] == "invalid_token"


async def test_admin_off_is_404(settings: Settings, register: Register) -> None:
    async with running(dataclasses.replace(settings, admin=False)) as off:
        response = await off.get(API + "/clients")
        assert response.status_code == 404


# -- clients -----------------------------------------------------------------------------


async def test_client_lifecycle_through_the_api(client: QuartClient, admin_token: str) -> None:
    status, created, _ = await call(
        client,
        "POST",
        "/clients",
        admin_token,
        {
            "client_id": "billing",
            "scopes": ["read"],
            "audiences": ["https://api.test"],
            "ttl": 120,
            "description": "Billing",
        },
    )
    assert status == 201
    assert _.headers["Location"] == API + "/clients/billing"
    secret = created.pop("client_secret")
    assert created["client_id"] == "billing" and created["description"] == "Billing"
    token = await get_token(client, "billing", secret)
    assert unverified(token)[1]["scope"] == "read"

    status, changed, _ = await call(
        client, "PATCH", "/clients/billing", admin_token, {"scopes": ["read", "write"]}
    )
    assert status == 200 and changed["scopes"] == ["read", "write"]
    assert unverified(await get_token(client, "billing", secret))[1]["scope"] == "read write"

    status, rotated, _ = await call(
        client, "POST", "/clients/billing/rotate-secret", admin_token, {"grace": 60}
    )
    assert status == 200 and rotated["previous_secret_valid_until"] is not None
    await get_token(client, "billing", secret)  # the old one, within its grace
    await get_token(client, "billing", rotated["client_secret"])

    status, shown, _ = await call(
        client, "POST", "/clients/billing/disable", admin_token, {"revoke_tokens": False}
    )
    assert status == 200 and shown["disabled"] is True
    status, shown, _ = await call(client, "POST", "/clients/billing/enable", admin_token, {})
    assert status == 200 and shown["disabled"] is False

    status, listed, _ = await call(client, "GET", "/clients", admin_token)
    assert [c["client_id"] for c in listed] == ["billing", "ops"]
    assert all(
        "secret" not in key for c in listed for key in c if key != "previous_secret_valid_until"
    )

    status, body, response = await call(client, "DELETE", "/clients/billing", admin_token)
    assert status == 204 and body is None
    assert response.headers["Cache-Control"] == "no-store"
    status, body, _ = await call(client, "GET", "/clients/billing", admin_token)
    assert status == 404 and body["error"] == "not_found"

    status, events, _ = await call(client, "GET", "/audit?target=client:billing", admin_token)
    assert [e["action"] for e in events] == [
        "client.remove",
        "client.enable",
        "client.disable",
        "client.rotate_secret",
        "client.update",
        "client.create",
    ]
    assert {e["actor"] for e in events} == {"client:ops"}
    flat = str(events)
    assert secret not in flat and rotated["client_secret"] not in flat


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"client_id": "bad id"}, "client_id"),
        ({}, "client_id"),
        ({"client_id": "a", "scopes": "read"}, "scopes"),
        ({"client_id": "a", "scopes": ['bad"scope']}, "scopes"),
        # One entry is one scope: never split into several (here, the admin scope).
        ({"client_id": "a", "scopes": ["reports:read tokendealer:admin"]}, "scopes"),
        ({"client_id": "a", "scopes": ["a\tb"]}, "scopes"),
        ({"client_id": "a", "scopes": [" "]}, "scopes"),
        ({"client_id": "a", "audiences": ["has space"]}, "audiences"),
        ({"client_id": "a", "ttl": 0}, "ttl"),
        ({"client_id": "a", "ttl": "60"}, "ttl"),
        ({"client_id": "a", "secret": "mine"}, "secret"),
    ],
)
async def test_bad_input_is_400_naming_the_field_and_changes_nothing(
    client: QuartClient, admin_token: str, body: dict[str, Any], field: str
) -> None:
    status, answer, _ = await call(client, "POST", "/clients", admin_token, body)
    assert status == 400
    assert answer["error"] == "invalid_request" and answer["field"] == field
    _, listed, _ = await call(client, "GET", "/clients", admin_token)
    assert [c["client_id"] for c in listed] == ["ops"]
    _, events, _ = await call(client, "GET", "/audit", admin_token)
    assert events == []


async def signed_token(
    client: QuartClient, client_id: str, key: Any, kid: str | None = None
) -> tuple[int, Any]:
    """A token request authenticated by an assertion (RFC 7523 §2.2) ``key`` signs."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }
    alg = {256: "ES256", 384: "ES384"}[key.curve.key_size]
    headers = {"kid": kid} if kid else None
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": jwt.encode(claims, key, algorithm=alg, headers=headers),
    }
    response = await client.post("/oauth/token", form=form)
    return response.status_code, await response.get_json()


@pytest.fixture(name="key_server")
def _key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.close()


async def test_a_private_key_jwt_client_registered_with_its_keys_gets_tokens_with_them(
    client: QuartClient, admin_token: str
) -> None:
    """Registered with a JWK Set, the client has no secret (none in the answer, none
    works) and gets tokens with assertions its key signs, not with another key's."""
    body = {"client_id": "signer", "scopes": ["read"], **PRIVATE}
    body["jwks"] = {"keys": [public_jwk(KEY, "k1")]}
    status, created, response = await call(client, "POST", "/clients", admin_token, body)
    assert status == 201, created
    assert response.headers["Location"] == API + "/clients/signer"
    assert "client_secret" not in created
    assert (created["auth_method"], created["jwks_uri"]) == ("private_key_jwt", None)
    assert created["jwks"] == {"keys": [public_jwk(KEY, "k1")]}
    for kid in ("k1", None):
        status, answer = await signed_token(client, "signer", KEY, kid)
        assert status == 200, answer
        claims = unverified(answer["access_token"])[1]
        assert (claims["client_id"], claims["scope"]) == ("signer", "read")
    assert (await signed_token(client, "signer", NEW_KEY, "k1"))[0] == 401
    refused = await client.post(
        "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic("signer", "")
    )
    assert refused.status_code == 401
    _, events, _ = await call(client, "GET", "/audit?action=client.create", admin_token)
    assert events[0]["details"]["jwks"] == ["k1"]


async def test_a_private_key_jwt_client_registered_with_a_key_url_gets_tokens(
    client: QuartClient, admin_token: str, key_server: KeyServer
) -> None:
    key_server.publish((KEY, "k1"))
    body = {"client_id": "fetcher", **PRIVATE, "jwks_uri": key_server.url}
    status, created, _ = await call(client, "POST", "/clients", admin_token, body)
    assert status == 201, created
    assert "client_secret" not in created
    assert (created["jwks_uri"], created["jwks"]) == (key_server.url, None)
    status, answer = await signed_token(client, "fetcher", KEY, "k1")
    assert status == 200, answer
    assert key_server.requests == 1


async def test_replacing_a_clients_keys_ends_the_old_ones(
    client: QuartClient, admin_token: str, key_server: KeyServer
) -> None:
    """PATCH jwks: assertions signed with the new key authenticate the client, those
    of the old one no longer do; PATCH jwks_uri then puts the published set in their
    place. Each replacement is audited."""
    body = {"client_id": "signer", **PRIVATE, "jwks": public_jwk(KEY, "k1")}
    assert (await call(client, "POST", "/clients", admin_token, body))[0] == 201
    assert (await signed_token(client, "signer", KEY, "k1"))[0] == 200

    change = {"jwks": {"keys": [public_jwk(NEW_KEY, "k2")]}}
    status, changed, _ = await call(client, "PATCH", "/clients/signer", admin_token, change)
    assert status == 200, changed
    assert changed["jwks"] == change["jwks"] and changed["jwks_uri"] is None
    assert (await signed_token(client, "signer", NEW_KEY, "k2"))[0] == 200
    for kid in ("k1", "k2", None):
        status, answer = await signed_token(client, "signer", KEY, kid)
        assert (status, answer["error"]) == (401, "invalid_client")

    key_server.publish((KEY, "k3"))
    change = {"jwks_uri": key_server.url}
    status, changed, _ = await call(client, "PATCH", "/clients/signer", admin_token, change)
    assert (status, changed["jwks_uri"], changed["jwks"]) == (200, key_server.url, None)
    assert (await signed_token(client, "signer", KEY, "k3"))[0] == 200
    assert (await signed_token(client, "signer", NEW_KEY, "k2"))[0] == 401
    _, events, _ = await call(client, "GET", "/audit?action=client.update", admin_token)
    assert [sorted(e["details"]["changed"]) for e in events] == [["keys"], ["keys"]]


def _pem(key: Any) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(public.decode())


WEAK_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/clients", {"client_id": "a", **PRIVATE}, "jwks"),
        (
            "POST",
            "/clients",
            {"client_id": "a", **PRIVATE, "jwks": public_jwk(KEY, "k"), "jwks_uri": "https://k/"},
            "jwks",
        ),
        (
            "POST",
            "/clients",
            {"client_id": "a", **PRIVATE, "jwks": {**public_jwk(KEY, "k"), "d": "AAAA"}},
            "jwks",
        ),
        ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks": _pem(KEY)}, "jwks"),
        (
            "POST",
            "/clients",
            {"client_id": "a", **PRIVATE, "jwks": public_jwk(WEAK_KEY, "w")},
            "jwks",
        ),
        ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks_uri": "ftp://k/jwks"}, "jwks_uri"),
        ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks_uri": "/jwks"}, "jwks_uri"),
        # Not URLs the dealer could fetch: an unclosed IPv6 bracket (urlsplit raises),
        # a space, a new line.
        ("POST", "/clients", {"client_id": "a", **PRIVATE, "jwks_uri": "http://[::1"}, "jwks_uri"),
        (
            "POST",
            "/clients",
            {"client_id": "a", **PRIVATE, "jwks_uri": "https://k/a b"},
            "jwks_uri",
        ),
        (
            "POST",
            "/clients",
            {"client_id": "a", **PRIVATE, "jwks_uri": "https://k/\nx"},
            "jwks_uri",
        ),
        ("POST", "/clients", {"client_id": "a", "jwks": public_jwk(KEY, "k")}, "jwks"),
        (
            "POST",
            "/clients",
            {"client_id": "a", "auth_method": "client_secret", "jwks_uri": "https://k/"},
            "jwks_uri",
        ),
        ("POST", "/clients", {"client_id": "a", "auth_method": "federated"}, "auth_method"),
        ("PATCH", "/clients/ops", {"jwks": public_jwk(KEY, "k")}, "auth_method"),
        ("PATCH", "/clients/ops", {"jwks_uri": "https://k/"}, "auth_method"),
        ("PATCH", "/clients/ops", {"auth_method": "private_key_jwt"}, "auth_method"),
        ("PATCH", "/clients/keyed", {"jwks": {"keys": []}}, "jwks"),
        ("PATCH", "/clients/keyed", {"jwks_uri": "keys"}, "jwks_uri"),
        (
            "PATCH",
            "/clients/keyed",
            {"jwks": public_jwk(KEY, "k"), "jwks_uri": "https://k/"},
            "jwks",
        ),
    ],
    ids=[
        "no keys",
        "both",
        "a private key",
        "PEM text",
        "a weak key",
        "not http",
        "no host",
        "an unclosed IPv6 bracket",
        "a space",
        "a new line",
        "keys for a secret client",
        "a URL for a secret client",
        "an unknown method",
        "new keys for a secret client",
        "a URL for a secret client (PATCH)",
        "a method change",
        "an empty set",
        "a bad URL",
        "both (PATCH)",
    ],
)
async def test_refused_keys_are_400_naming_the_field_and_change_nothing(
    client: QuartClient, admin_token: str, method: str, path: str, body: Any, field: str
) -> None:
    keyed = {"client_id": "keyed", **PRIVATE, "jwks": public_jwk(NEW_KEY, "n")}
    assert (await call(client, "POST", "/clients", admin_token, keyed))[0] == 201
    _, before, _ = await call(client, "GET", "/clients", admin_token)
    status, answer, _ = await call(client, method, path, admin_token, body)
    assert (status, answer["error"], answer["field"]) == (400, "invalid_request", field), answer
    assert (await call(client, "GET", "/clients", admin_token))[1] == before
    _, events, _ = await call(client, "GET", "/audit", admin_token)
    assert [e["action"] for e in events] == ["client.create"]


async def test_a_json_member_named_twice_is_400_and_changes_nothing(
    client: QuartClient, admin_token: str
) -> None:
    """``{"client_id": "zz", "client_id": "yy"}`` registers neither: which one a parser
    keeps differs (the first, the last), so the body is refused."""
    response = await client.post(
        API + "/clients",
        data=b'{"client_id": "zz", "client_id": "yy"}',
        headers={**bearer(admin_token), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    body = await response.get_json()
    assert body["error"] == "invalid_request" and "repeats" in body["error_description"]
    _, listed, _ = await call(client, "GET", "/clients", admin_token)
    assert [c["client_id"] for c in listed] == ["ops"]


async def test_body_that_is_not_a_json_object_is_400(client: QuartClient, admin_token: str) -> None:
    response = await client.post(
        API + "/clients",
        data=b"[1,2]",
        headers={**bearer(admin_token), "Content-Type": "application/json"},
    )
    assert response.status_code == 400


async def test_duplicate_is_409_and_unknown_is_404(client: QuartClient, admin_token: str) -> None:
    status, body, _ = await call(client, "POST", "/clients", admin_token, {"client_id": "ops"})
    assert status == 409 and body["error"] == "conflict"
    for method, path, payload in [
        ("GET", "/clients/nobody", None),
        ("PATCH", "/clients/nobody", {"ttl": 60}),
        ("POST", "/clients/nobody/rotate-secret", {"grace": 0}),
        ("POST", "/clients/nobody/disable", {}),
        ("POST", "/clients/nobody/enable", {}),
        ("DELETE", "/clients/nobody", None),
    ]:
        status, body, _ = await call(client, method, path, admin_token, payload)
        assert (status, body["error"]) == (404, "not_found"), (method, path)


async def test_audit_query_is_checked(client: QuartClient, admin_token: str) -> None:
    for query in ["action=client.explode", "limit=0", "limit=many", "since=yesterday"]:
        status, body, _ = await call(client, "GET", f"/audit?{query}", admin_token)
        assert status == 400 and body["error"] == "invalid_request", query


async def test_disable_and_rotate_take_an_empty_body(
    client: QuartClient, admin_token: str, register: Register
) -> None:
    """Their members are optional, and so is their body: none means ``{}``."""
    await register("svc")
    disabled = await client.post(API + "/clients/svc/disable", headers=bearer(admin_token))
    assert disabled.status_code == 200 and (await disabled.get_json())["disabled"] is True
    rotated = await client.post(API + "/clients/svc/rotate-secret", headers=bearer(admin_token))
    assert rotated.status_code == 200
    assert (await rotated.get_json())["previous_secret_valid_until"] is None


async def _statuses(client: QuartClient, client_id: str, secret: str, count: int) -> list[int]:
    return [(await request_token(client, client_id, secret)).status_code for _ in range(count)]


async def test_a_clients_own_rate_limit_is_set_changed_and_removed(
    client: QuartClient, dealer: Dealer, admin_token: str
) -> None:
    """POST with ``rate_limit`` registers a limited client (its third token request
    429); PATCH changes the limit and the mode, and ``null`` gives back the service's
    (the mode is left); each change is audited with the caller; a bad value is a 400
    naming its field and changes nothing."""
    body = {"client_id": "svc", "rate_limit": "2/minute"}
    status, created, _ = await call(client, "POST", "/clients", admin_token, body)
    assert status == 201
    assert (created["rate_limit"], created["rate_limit_mode"]) == ("2/minute", "enforce")
    assert created["early_token_requests"] == 0
    secret = created["client_secret"]
    assert await _statuses(client, "svc", secret, 3) == [200, 200, 429]

    change = {"rate_limit": "4/2 minutes", "rate_limit_mode": "monitor"}
    status, changed, _ = await call(client, "PATCH", "/clients/svc", admin_token, change)
    assert status == 200
    assert (changed["rate_limit"], changed["rate_limit_mode"]) == ("4/2 minutes", "monitor")
    assert await _statuses(client, "svc", secret, 1) == [200]
    status, restored, _ = await call(
        client, "PATCH", "/clients/svc", admin_token, {"rate_limit": None}
    )
    assert (status, restored["rate_limit"], restored["rate_limit_mode"]) == (200, None, "monitor")

    for bad, field in (
        ({"rate_limit": "2/fortnight"}, "rate_limit"),
        ({"rate_limit": 2}, "rate_limit"),
        ({"rate_limit_mode": "loud"}, "rate_limit_mode"),
    ):
        status, error, _ = await call(client, "PATCH", "/clients/svc", admin_token, bad)
        assert (status, error["error"], error["field"]) == (400, "invalid_request", field), bad
    bad_create = {"client_id": "x", "rate_limit": "0/minute"}
    status, error, _ = await call(client, "POST", "/clients", admin_token, bad_create)
    assert (status, error["field"]) == (400, "rate_limit")
    assert "a rate limit is COUNT/UNIT" in error["error_description"]
    status, shown, _ = await call(client, "GET", "/clients/svc", admin_token)
    assert (shown["rate_limit"], shown["rate_limit_mode"]) == (None, "monitor")
    assert await dealer.store.get_client("x") is None

    audit = await dealer.store.audit_events(target="client:svc")
    assert [event.action for event in audit] == ["client.update", "client.update", "client.create"]
    assert {event.actor for event in audit} == {"client:ops"}
    assert audit[2].details["rate_limit"] == "2/minute"
    assert audit[1].details["changed"] == {
        "rate_limit": {"from": "2/minute", "to": "4/2 minutes"},
        "rate_limit_mode": {"from": "enforce", "to": "monitor"},
    }
    assert audit[0].details["changed"] == {"rate_limit": {"from": "4/2 minutes", "to": None}}


async def test_a_client_shows_its_early_token_requests(
    client: QuartClient, dealer: Dealer, register: Register, admin_token: str
) -> None:
    await register("wasteful")
    await dealer.store.add_early_token_requests({"wasteful": 7})
    status, shown, _ = await call(client, "GET", "/clients/wasteful", admin_token)
    assert (status, shown["early_token_requests"]) == (200, 7)


# -- keys ----------------------------------------------------------------------------------


async def test_keys_rotate_and_prune_through_the_api(client: QuartClient, admin_token: str) -> None:
    """A routine rotation publishes the next key at once (in this worker's JWKS too); a
    second one is 409 naming the pending key; the emergency one replaces it and signs at
    once; prune with force drops the retired key. Each change is audited."""
    status, keys, _ = await call(client, "GET", "/keys", admin_token)
    assert status == 200 and [k["state"] for k in keys] == ["active"]
    first = keys[0]["kid"]

    status, rotated, _ = await call(
        client, "POST", "/keys/rotate", admin_token, {"activate_after": 3600}
    )
    assert status == 200 and rotated["replaced"] == []
    pending = rotated["kid"]
    assert {k["kid"]: k["state"] for k in rotated["keys"]} == {first: "active", pending: "next"}
    jwks = await (await client.get("/.well-known/jwks.json")).get_json()
    assert pending in {key["kid"] for key in jwks["keys"]}

    status, body, _ = await call(client, "POST", "/keys/rotate", admin_token, {})
    assert status == 409 and body["error"] == "conflict" and pending in body["error_description"]

    status, emergency, _ = await call(
        client, "POST", "/keys/rotate", admin_token, {"activate_after": 0}
    )
    assert status == 200 and emergency["replaced"] == [pending]
    signer = emergency["kid"]
    status, created, _ = await call(client, "POST", "/clients", admin_token, {"client_id": "svc"})
    assert status == 201
    token = await get_token(client, "svc", created["client_secret"])
    assert unverified(token)[0]["kid"] == signer

    status, pruned, _ = await call(client, "POST", "/keys/prune", admin_token, {})
    assert status == 200 and pruned["removed"] == [] and pruned["kept"] == [first]
    # The admin token was signed by the first key: forcing it out ends that token too.
    status, created, _ = await call(
        client,
        "POST",
        "/clients",
        admin_token,
        {"client_id": "ops2", "scopes": [ADMIN_SCOPE], "audiences": [ISSUER]},
    )
    fresh = await get_token(
        client, "ops2", created["client_secret"], scope=ADMIN_SCOPE, audience=ISSUER
    )
    status, pruned, _ = await call(client, "POST", "/keys/prune", admin_token, {"force": True})
    assert status == 200 and pruned["removed"] == [first]
    assert (await call(client, "GET", "/keys", admin_token))[0] == 401
    status, keys, _ = await call(client, "GET", "/keys", fresh)
    assert [k["kid"] for k in keys] == [signer]

    _, events, _ = await call(client, "GET", "/audit?actor=client:ops", fresh)
    key_events = [(e["action"], e["target"]) for e in events if e["action"].startswith("key.")]
    assert key_events == [
        ("key.prune", f"key:{first}"),
        ("key.rotate", f"key:{signer}"),
        ("key.rotate", f"key:{pending}"),
    ]


@pytest.mark.parametrize(("alg", "bits"), [("ES256", 256), ("ES384", 384), ("EdDSA", 256)])
async def test_rotation_to_another_algorithm(
    client: QuartClient, admin_token: str, dealer: Dealer, alg: str, bits: int
) -> None:
    """The rotation's alg: the new key is of its type, listed with its curve's size, and
    signs the tokens that follow; the audit event names the algorithm (and no size)."""
    status, rotated, _ = await call(
        client, "POST", "/keys/rotate", admin_token, {"activate_after": 0, "alg": alg}
    )
    assert status == 200
    (row,) = [k for k in rotated["keys"] if k["kid"] == rotated["kid"]]
    assert (row["alg"], row["bits"], row["state"]) == (alg, bits, "active")
    status, created, _ = await call(client, "POST", "/clients", admin_token, {"client_id": "svc"})
    token = await get_token(client, "svc", created["client_secret"])
    assert unverified(token)[0] == {"alg": alg, "kid": rotated["kid"], "typ": "at+jwt"}
    (event,) = await dealer.store.audit_events(action="key.rotate")
    assert event.details["alg"] == alg and "bits" not in event.details


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"activate_after": -1}, "activate_after"),
        ({"activate_after": "soon"}, "activate_after"),
        ({"alg": "HS256"}, "alg"),
        ({"alg": ""}, "alg"),
        ({"bits": 1024}, "bits"),
        ({"alg": "ES512"}, "alg"),
        # An RSA key's size, refused for the other key types (their curve sets it).
        ({"alg": "ES256", "bits": 2048}, "bits"),
        ({"alg": "EdDSA", "bits": 4096}, "bits"),
        ({"when": 3}, "when"),
    ],
)
async def test_bad_rotation_is_400_and_makes_no_key(
    client: QuartClient, admin_token: str, body: dict[str, Any], field: str
) -> None:
    status, answer, _ = await call(client, "POST", "/keys/rotate", admin_token, body)
    assert status == 400 and answer["field"] == field
    _, keys, _ = await call(client, "GET", "/keys", admin_token)
    assert len(keys) == 1


async def test_key_rotations_have_a_tighter_limit_of_their_own(
    client: QuartClient, admin_token: str
) -> None:
    """Each rotation generates an RSA key: far fewer of them than other admin requests
    (attempts count, refused or not, so these cost no key generation)."""
    for _ in range(KEY_GENERATION_LIMIT.count):
        status, _, _ = await call(client, "POST", "/keys/rotate", admin_token, {"bits": 1})
        assert status == 400
    status, body, response = await call(client, "POST", "/keys/rotate", admin_token, {})
    assert status == 429 and int(response.headers["Retry-After"]) > 0
    assert body["error"] == "temporarily_unavailable"
    status, _, _ = await call(client, "GET", "/keys", admin_token)  # the rest is not limited
    assert status == 200


async def test_unreadable_keys_are_a_server_error_not_a_conflict(
    client: QuartClient, admin_token: str, settings: Settings
) -> None:
    """Key files the server cannot read are its own fault: 500 with a request id, and
    the path stays in the log, out of the answer."""
    (settings.keys_dir / MANIFEST).write_text("{not json")
    status, body, response = await call(client, "GET", "/keys", admin_token)
    assert status == 500 and body["error"] == "server_error"
    assert str(settings.keys_dir) not in str(body) and response.headers["X-Request-Id"]


async def test_a_key_change_whose_event_cannot_be_written_is_503_and_logged(
    settings: Settings, register: Register
) -> None:
    """The store stops taking writes between a rotation's key files and its audit event
    (another process holds SQLite's write lock; reads still work, so the caller is
    authenticated): the answer is 503 with Retry-After within the database timeout, the
    rotation stands, and its event is logged at error level with every field."""
    secret = await register("ops", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    quick = dataclasses.replace(settings, database_timeout=0.2, database_retry_interval=0.05)
    async with running(quick) as client:
        token = await get_token(client, "ops", secret, scope=ADMIN_SCOPE, audience=ISSUER)
        (before,) = load_keyset(settings.keys_dir).keys
        holder = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
        try:
            holder.execute("BEGIN IMMEDIATE")
            with structlog.testing.capture_logs() as logs:
                status, body, response = await call(
                    client, "POST", "/keys/rotate", token, {"activate_after": 3600}
                )
        finally:
            holder.rollback()
            holder.close()
    assert status == 503 and body["error"] == "temporarily_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    keyset = load_keyset(settings.keys_dir)
    (rotated,) = [key for key in keyset.keys if key.kid != before.kid]
    assert keyset.state(rotated) == "next"
    (missing,) = [entry for entry in logs if entry["event"] == "audit_event_not_recorded"]
    assert missing["log_level"] == "error"
    assert (missing["actor"], missing["action"], missing["target"]) == (
        "client:ops",
        "key.rotate",
        f"key:{rotated.kid}",
    )
    assert missing["details"]["activate_after"] == 3600


# -- what the security review found ----------------------------------------------------------


async def test_withdrawn_admin_scope_ends_admin_access_of_tokens_held(
    client: QuartClient, admin_token: str, register: Register
) -> None:
    """The token says what the client could do when issued; the record, what it may do
    now: a client whose admin scope (or issuer audience) is withdrawn administers nothing
    more with the tokens it still holds."""
    other_secret = await register("ops2", scopes=(ADMIN_SCOPE,), audiences=(ISSUER,))
    other = await get_token(client, "ops2", other_secret, scope=ADMIN_SCOPE, audience=ISSUER)
    status, _, _ = await call(client, "PATCH", "/clients/ops", other, {"scopes": []})
    assert status == 200
    status, body, _ = await call(client, "POST", "/clients", admin_token, {"client_id": "x"})
    assert status == 401 and body["error"] == "invalid_token"
    status, _, _ = await call(
        client, "PATCH", "/clients/ops2", other, {"audiences": ["https://elsewhere.test"]}
    )
    assert status == 200
    assert (await call(client, "GET", "/clients", other))[0] == 401


async def test_admin_scope_is_never_implicit_nor_the_default_audience(
    client: QuartClient, register: Register
) -> None:
    """A client's everyday token (no scope asked for) leaves the admin scope out; and a
    client registered without the issuer among its audiences cannot administer, even
    with a token whose audience defaulted to the issuer."""
    secret = await register("mixed", scopes=(ADMIN_SCOPE, "read"))
    everyday = await get_token(client, "mixed", secret)
    assert unverified(everyday)[1]["scope"] == "read"
    explicit = await get_token(client, "mixed", secret, scope=ADMIN_SCOPE)
    assert unverified(explicit)[1]["aud"] == ISSUER  # the default audience
    status, body, _ = await call(client, "GET", "/clients", explicit)
    assert status == 401 and body["error"] == "invalid_token"


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", b'{"client_id": "x"}'),
        ("application/x-www-form-urlencoded", b"client_id=x"),
        ("application/json", b"[" * 60000),
        ("application/json", b"\xff\xfe"),
    ],
)
async def test_bodies_that_are_not_json_objects_are_400(
    client: QuartClient, admin_token: str, content_type: str, data: bytes
) -> None:
    response = await client.post(
        API + "/clients",
        data=data,
        headers={**bearer(admin_token), "Content-Type": content_type},
    )
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_request"


@pytest.mark.parametrize(
    "query", ["limit=%C2%B2", "limit=" + "9" * 5000, "actor=%00", "target=" + "t" * 301]
)
async def test_odd_audit_queries_are_400_and_trip_nothing(
    client: QuartClient, admin_token: str, register: Register, query: str
) -> None:
    status, body, _ = await call(client, "GET", f"/audit?{query}", admin_token)
    assert status == 400 and body["error"] == "invalid_request"
    secret = await register("svc")
    await get_token(client, "svc", secret)  # the store is not taken for down
