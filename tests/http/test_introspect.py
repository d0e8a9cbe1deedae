"""``POST /oauth/introspect`` (RFC 7662): authenticated callers, active and inactive tokens.

Every inactive token is answered exactly ``{"active": false}`` and, since introspection
shares the one verification core with ``/verify_token``, is refused there too; except what
RFC 7662 §4 adds for introspection alone: expiry judged with no leeway, and tokens meant
for other resource servers than the caller's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.apps import add_client, running
from tests.support.cli import CLI
from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.tokens import (
    INACTIVE,
    INTROSPECT_PATH,
    basic,
    forge,
    get_token,
    introspect,
    request_token,
    unverified,
    verify_status,
)
from tokendealer.http import create_app
from tokendealer.keys.keyset import SigningKey
from tokendealer.service.dealer import Dealer
from tokendealer.service.tokens import mint
from tokendealer.settings import Settings

#: RFC 7662 §2.2 members an active token's answer carries here.
ACTIVE_MEMBERS = {
    "active",
    "client_id",
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "nbf",
    "jti",
    "scope",
    "token_type",
}


def foreign_key(kid: str) -> SigningKey:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid, "RS512", private_key, 0.0, 0.0)


@pytest.fixture(name="caller")
async def _caller(register: Register) -> tuple[str, str]:
    """A resource server registered as a client, which introspects other clients' tokens."""
    return "rs", await register("rs")


@pytest.fixture(name="svc_secret")
async def _svc_secret(register: Register) -> str:
    return await register("svc", scopes=("read", "write"))


# -- client authentication ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        pytest.param({}, {}, id="none"),
        pytest.param(basic("rs", "wrong"), {}, id="basic-wrong-secret"),
        pytest.param(basic("nobody", "wrong"), {}, id="basic-unknown-client"),
        pytest.param({}, {"client_id": "rs", "client_secret": "wrong"}, id="post-wrong-secret"),
        pytest.param({}, {"client_id": "rs"}, id="post-no-secret"),
        pytest.param({"Authorization": "Bearer abc"}, {}, id="bearer-scheme"),
    ],
)
async def test_authentication_required(
    client: QuartClient,
    caller: tuple[str, str],
    svc_secret: str,
    headers: dict[str, str],
    form: dict[str, str],
) -> None:
    """Missing or bad client credentials are 401 invalid_client with WWW-Authenticate."""
    token = await get_token(client, "svc", svc_secret)
    response = await client.post(INTROSPECT_PATH, form={"token": token, **form}, headers=headers)
    assert response.status_code == 401
    assert (await response.get_json())["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.headers["Cache-Control"] == "no-store"


async def test_disabled_caller_is_refused(
    client: QuartClient, register: Register, svc_secret: str
) -> None:
    """A disabled client cannot introspect, with the same 401 as a wrong secret."""
    secret = await register("off", disabled=True)
    token = await get_token(client, "svc", svc_secret)
    status, body, _ = await introspect(client, token, ("off", secret))
    assert status == 401
    assert body["error"] == "invalid_client"


async def test_basic_and_post_both_work(
    client: QuartClient, caller: tuple[str, str], svc_secret: str
) -> None:
    """The caller may authenticate with client_secret_basic or client_secret_post."""
    token = await get_token(client, "svc", svc_secret)
    by_basic = await client.post(INTROSPECT_PATH, form={"token": token}, headers=basic(*caller))
    by_post = await client.post(
        INTROSPECT_PATH, form={"token": token, "client_id": caller[0], "client_secret": caller[1]}
    )
    for response in (by_basic, by_post):
        assert response.status_code == 200
        assert (await response.get_json())["active"] is True


@pytest.mark.parametrize("form", [{}, {"token": ""}, {"token_type_hint": "access_token"}])
async def test_missing_token_is_invalid_request(
    client: QuartClient, caller: tuple[str, str], form: dict[str, str]
) -> None:
    """Without a token parameter (empty counts as absent) the answer is 400 invalid_request."""
    response = await client.post(INTROSPECT_PATH, form=form, headers=basic(*caller))
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_request"


# -- active tokens --------------------------------------------------------------------------


async def test_active_token(client: QuartClient, caller: tuple[str, str], svc_secret: str) -> None:
    """A valid token is active with every RFC 7662 member, equal to the token's claims."""
    token = await get_token(client, "svc", svc_secret, scope="read")
    _, claims = unverified(token)
    status, body, headers = await introspect(client, token, caller)
    assert status == 200
    assert set(body) == ACTIVE_MEMBERS
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert body["client_id"] == body["sub"] == "svc"
    assert body["iss"] == ISSUER
    assert body["scope"] == "read"
    for member in ("aud", "exp", "iat", "nbf", "jti"):
        assert body[member] == claims[member], member
    assert body["iat"] <= time.time() < body["exp"]
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("hint", ["access_token", "refresh_token", "no_such_type"])
async def test_token_type_hint_is_ignored(
    client: QuartClient, caller: tuple[str, str], svc_secret: str, hint: str
) -> None:
    """Any token_type_hint, known, wrong or unknown, changes nothing (RFC 7662 §2.1)."""
    token = await get_token(client, "svc", svc_secret)
    status, body, _ = await introspect(client, token, caller, token_type_hint=hint)
    assert status == 200 and body["active"] is True
    status, body, _ = await introspect(client, "garbage", caller, token_type_hint=hint)
    assert status == 200 and body == INACTIVE


async def test_client_may_introspect_its_own_token(client: QuartClient, svc_secret: str) -> None:
    """The token's own client is a registered client too, and may introspect it."""
    token = await get_token(client, "svc", svc_secret)
    status, body, _ = await introspect(client, token, ("svc", svc_secret))
    assert status == 200 and body["active"] is True


# -- inactive tokens -----------------------------------------------------------------------

MakeToken = Callable[[QuartClient, Dealer, str], Awaitable[str]]


async def _garbage(client: QuartClient, dealer: Dealer, secret: str) -> str:
    return "not-a-token"


async def _three_garbage_segments(client: QuartClient, dealer: Dealer, secret: str) -> str:
    return "eyJhbGciOiJub25lIn0.e30.c2ln"


async def _expired(client: QuartClient, dealer: Dealer, secret: str) -> str:
    # Issued two hours ago for one hour: far beyond the 30 s leeway.
    return await forge(dealer, now=time.time() - 7200, ttl=3600)


async def _wrong_issuer(client: QuartClient, dealer: Dealer, secret: str) -> str:
    return await forge(dealer, issuer="https://other.test")


async def _unsigned(client: QuartClient, dealer: Dealer, secret: str) -> str:
    _, claims = unverified(await forge(dealer))
    return jwt.encode(claims, None, algorithm="none", headers={"typ": "at+jwt"})


async def _unknown_key(client: QuartClient, dealer: Dealer, secret: str) -> str:
    stranger = foreign_key("not-our-kid")
    return mint(
        stranger,
        issuer=ISSUER,
        client_id="svc",
        audience=ISSUER,
        scopes=(),
        ttl=300,
        now=time.time(),
    ).access_token


async def _our_kid_other_key(client: QuartClient, dealer: Dealer, secret: str) -> str:
    active = dealer.keyset.active()
    assert active is not None
    impostor = foreign_key(active.kid)
    return mint(
        impostor,
        issuer=ISSUER,
        client_id="svc",
        audience=ISSUER,
        scopes=(),
        ttl=300,
        now=time.time(),
    ).access_token


async def _revoked(client: QuartClient, dealer: Dealer, secret: str) -> str:
    token = await get_token(client, "svc", secret)
    response = await client.post(
        "/oauth/revoke", form={"token": token}, headers=basic("svc", secret)
    )
    assert response.status_code == 200
    return token


async def _removed_client(client: QuartClient, dealer: Dealer, secret: str) -> str:
    token = await get_token(client, "svc", secret)
    await dealer.store.remove_client("svc")
    return token


INACTIVE_CASES: dict[str, MakeToken] = {
    "garbage": _garbage,
    "garbage-jws": _three_garbage_segments,
    "expired": _expired,
    "wrong-issuer": _wrong_issuer,
    "alg-none": _unsigned,
    "unknown-key": _unknown_key,
    "our-kid-other-key": _our_kid_other_key,
    "revoked": _revoked,
    "removed-client": _removed_client,
}


@pytest.mark.parametrize("make_token", INACTIVE_CASES.values(), ids=INACTIVE_CASES.keys())
async def test_inactive_tokens(
    client: QuartClient,
    dealer: Dealer,
    caller: tuple[str, str],
    svc_secret: str,
    make_token: MakeToken,
) -> None:
    """Every token that is not valid here is 200 with exactly {"active": false}, no-store."""
    token = await make_token(client, dealer, svc_secret)
    status, body, headers = await introspect(client, token, caller)
    assert status == 200
    assert body == INACTIVE
    assert headers["Cache-Control"] == "no-store"
    # The same verification core: /verify_token refuses it too.
    assert await verify_status(client, token) == 400


async def test_forged_tokens_would_be_active_if_honest(
    client: QuartClient, dealer: Dealer, caller: tuple[str, str], svc_secret: str
) -> None:
    """The helper that builds the expired and wrong-issuer cases makes valid tokens otherwise."""
    status, body, _ = await introspect(client, await forge(dealer), caller)
    assert status == 200 and body["active"] is True


async def test_removed_client_via_cli(
    client: QuartClient, settings: Settings, caller: tuple[str, str], svc_secret: str
) -> None:
    """After ``tokendealer clients remove``, the client's outstanding tokens are inactive."""
    token = await get_token(client, "svc", svc_secret)
    assert (await introspect(client, token, caller))[1]["active"] is True
    await asyncio.to_thread(CLI.for_settings(settings).ok, "clients", "remove", "svc")
    assert (await introspect(client, token, caller))[1] == INACTIVE
    assert await verify_status(client, token) == 400


async def test_token_of_removed_key_after_restart(settings: Settings) -> None:
    """A token signed by a key that was removed from the keys dir is inactive once restarted."""
    first = create_app(settings)
    async with first.test_app():
        client = first.test_client()
        dealer: Dealer = first.extensions["tokendealer"]
        await add_client(dealer, "svc", "svc-secret")
        await add_client(dealer, "rs", "rs-secret")
        old_token = await get_token(client, "svc", "svc-secret")
        assert (await introspect(client, old_token, ("rs", "rs-secret")))[1]["active"] is True

    old_kid = unverified(old_token)[0]["kid"]
    cli = CLI.for_settings(settings)
    await asyncio.to_thread(cli.ok, "keys", "rotate", "--activate-after", "0")
    await asyncio.to_thread(cli.ok, "keys", "remove", old_kid)
    assert not (settings.keys_dir / f"{old_kid}.pem").exists()

    async with running(settings) as client:
        status, body, _ = await introspect(client, old_token, ("rs", "rs-secret"))
        assert status == 200 and body == INACTIVE
        assert await verify_status(client, old_token) == 400
        new_token = await get_token(client, "svc", "svc-secret")
        assert unverified(new_token)[0]["kid"] != old_kid
        assert (await introspect(client, new_token, ("rs", "rs-secret")))[1]["active"] is True


# -- what RFC 7662 §4 adds: exact expiry, tokens for the caller's resource servers --------


async def test_expiry_is_exact_at_introspection(
    client: QuartClient, dealer: Dealer, caller: tuple[str, str]
) -> None:
    """A token 10 s past its exp is inactive (the server "MUST determine whether or not
    the token has expired", by its own clock); /verify_token keeps its leeway on exp."""
    await add_client(dealer, "svc", "s", created_at=time.time() - 3600)
    token = await forge(dealer, now=time.time() - 310, ttl=300)
    status, body, _ = await introspect(client, token, caller)
    assert (status, body) == (200, INACTIVE)
    assert await verify_status(client, token) == 200
    fresh = await forge(dealer, now=time.time() - 290, ttl=300)  # 10 s left
    assert (await introspect(client, fresh, caller))[1]["active"] is True


ORDERS, BILLING = "https://orders.test", "https://billing.test"


async def test_a_caller_sees_only_tokens_for_its_audiences(
    client: QuartClient, register: Register
) -> None:
    """RFC 7662 §4: the server "MUST determine whether or not the token can be used at the
    resource server making the introspection call". A caller sees its own tokens and tokens
    for an audience it is registered with; one registered with none is associated with the
    default audience (the issuer here)."""
    svc = ("svc", await register("svc", audiences=(ORDERS, BILLING)))
    plain = ("plain", await register("plain"))
    orders_rs = ("orders-rs", await register("orders-rs", audiences=(ORDERS,)))
    bare_rs = ("bare-rs", await register("bare-rs"))
    for_orders = await get_token(client, *svc, audience=ORDERS)
    for_billing = await get_token(client, *svc, audience=BILLING)
    for_default = await get_token(client, *plain)

    async def active(token: str, who: tuple[str, str]) -> bool:
        status, body, _ = await introspect(client, token, who)
        assert status == 200
        assert body == INACTIVE or body["active"] is True
        return bool(body["active"])

    assert await active(for_orders, orders_rs)
    assert not await active(for_billing, orders_rs)
    assert not await active(for_orders, bare_rs)
    assert await active(for_default, bare_rs)
    assert not await active(for_default, orders_rs)
    # A client always sees its own tokens, whatever their audience.
    assert await active(for_billing, svc)
    assert await active(for_default, plain)


#: Scopes whose full set makes a token between the form field cap (4096) and the token
#: cap (8192): about 5 KB.
MANY_SCOPES = tuple(f"scope.number.{i:02d}.with.a.fairly.long.name" for i in range(90))


async def test_long_tokens_introspect_and_revoke(client: QuartClient, register: Register) -> None:
    """A token of ours over 4096 characters is introspected and revoked like any other:
    the form field cap of the token endpoint does not apply to the token parameter."""
    big = ("big", await register("big", scopes=MANY_SCOPES))
    token = await get_token(client, *big)
    assert 4096 < len(token) <= 8192
    status, body, _ = await introspect(client, token, big)
    assert (status, body["active"]) == (200, True)
    response = await client.post("/oauth/revoke", form={"token": token}, headers=basic(*big))
    assert response.status_code == 200
    assert (await introspect(client, token, big))[1] == INACTIVE
    # Longer than any token of ours: inactive, not a malformed request.
    assert (await introspect(client, "x" * 20_000, big))[:2] == (200, INACTIVE)


async def test_a_token_too_large_to_verify_is_never_issued(
    client: QuartClient, register: Register
) -> None:
    """A client whose full scope set would make a token over 8192 characters (which every
    verifier refuses unread) gets 400 invalid_scope for it, and a token for fewer."""
    secret = await register("huge", scopes=MANY_SCOPES + tuple(s + ".x" for s in MANY_SCOPES))
    response = await request_token(client, "huge", secret)
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_scope"
    narrow = await get_token(client, "huge", secret, scope=" ".join(MANY_SCOPES[:3]))
    assert await verify_status(client, narrow) == 200


async def test_a_removed_clients_tokens_stay_dead_when_its_id_returns(
    client: QuartClient, dealer: Dealer, caller: tuple[str, str]
) -> None:
    """Tokens issued to a removed client do not verify again once the same id is
    registered anew (they predate the new registration); the new one's tokens do."""
    await add_client(dealer, "svc", "s1", created_at=time.time() - 3600)
    old = await forge(dealer, now=time.time() - 60)
    assert await verify_status(client, old) == 200
    await dealer.store.remove_client("svc")
    assert await verify_status(client, old) == 400
    await add_client(dealer, "svc", "s2")
    assert await verify_status(client, old) == 400
    assert (await introspect(client, old, caller))[1] == INACTIVE
    assert await verify_status(client, await get_token(client, "svc", "s2")) == 200
