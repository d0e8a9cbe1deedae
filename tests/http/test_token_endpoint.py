"""``POST /oauth/token``: the client credentials grant (RFC 6749 §2.3.1, §3.2, §4.4, §5).

Success responses and the tokens they carry (RFC 9068), the scope and audience policy,
client authentication, and a table of every bad request, each answered with an
RFC 6749 §5.2 error that never echoes the input and is never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from werkzeug.datastructures import Headers

from tests.support.apps import add_client
from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.tokens import (
    GRANT,
    TOKEN_PATH,
    basic,
    basic_credentials,
    get_token,
    request_token,
    rfc7638_thumbprint,
    unverified,
)
from tokendealer.http import create_app
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings

FORM = "application/x-www-form-urlencoded"
#: Put into inputs of error cases; an error response must never contain it.
MARKER = "Zq8echoMarker"
#: RFC 6749 §5.2: error and error_description "MUST NOT include characters outside the
#: set %x20-21 / %x23-5B / %x5D-7E".
ERROR_CHARSET = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]+")
INVALID_CLIENT_CHALLENGE = 'Basic realm="tokendealer"'


def basic_raw(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode("ascii")


async def post_form(
    client: QuartClient,
    body: bytes | str,
    *,
    authorization: str | None = None,
    content_type: str | None = FORM,
) -> Any:
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if authorization is not None:
        headers["Authorization"] = authorization
    data = body.encode("ascii") if isinstance(body, str) else body
    return await client.post(TOKEN_PATH, data=data, headers=headers)


async def assert_oauth_error(response: Any, status: int, error: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error: status, JSON body, charset, no-store, no echo of MARKER."""
    raw = await response.get_data()
    assert response.status_code == status, raw
    assert response.status_code != 500
    assert response.mimetype == "application/json"
    body = json.loads(raw)
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error
    assert ERROR_CHARSET.fullmatch(body["error"])
    assert ERROR_CHARSET.fullmatch(body["error_description"])
    assert MARKER.encode() not in raw
    assert MARKER.lower().encode() not in raw.lower()
    for name, value in response.headers.items():
        assert MARKER.lower() not in f"{name}: {value}".lower()
    if status == 401:
        assert response.headers["WWW-Authenticate"] == INVALID_CLIENT_CHALLENGE
    assert response.headers.get("Cache-Control") == "no-store"
    return body  # type: ignore[no-any-return]


# -- success -----------------------------------------------------------------------------


async def test_success_response_shape_and_headers(client: QuartClient, register: Register) -> None:
    """200 JSON with access_token, token_type Bearer, expires_in, scope; no-store, no refresh."""
    secret = await register("svc", scopes=("read", "write"))
    response = await request_token(client, "svc", secret)
    assert response.status_code == 200
    body = await response.get_json()
    assert response.mimetype == "application/json"
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600 and isinstance(body["expires_in"], int)
    assert body["scope"] == "read write"
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2
    assert "refresh_token" not in body
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


async def test_token_header_names_the_active_key(
    client: QuartClient, register: Register, dealer: Dealer
) -> None:
    """The JWT header is exactly alg RS512, typ at+jwt, kid = the key's RFC 7638 thumbprint."""
    secret = await register("svc")
    header, _ = unverified(await get_token(client, "svc", secret))
    key = dealer.keyset.active()
    assert key is not None
    assert header == {"alg": "RS512", "typ": "at+jwt", "kid": rfc7638_thumbprint(key.public_key)}


async def test_token_claims(client: QuartClient, register: Register, dealer: Dealer) -> None:
    """The claims are iss, sub, client_id, aud, iat, nbf, exp, jti, scope and the client's
    token epoch, correctly valued."""
    secret = await register("svc", scopes=("read", "write"), audiences=("https://api.test",))
    before = int(time.time())
    token = await get_token(client, "svc", secret, scope="write")
    after = int(time.time())
    key = dealer.keyset.active()
    assert key is not None
    claims = jwt.decode(
        token,
        key.public_key,
        algorithms=["RS512"],
        audience="https://api.test",
        issuer=ISSUER,
    )
    assert set(claims) == {
        "iss", "sub", "client_id", "aud", "iat", "nbf", "exp", "jti", "scope", "client_epoch"
    }  # fmt: skip
    record = await dealer.store.get_client("svc")
    assert record is not None and claims["client_epoch"] == record.token_epoch
    assert claims["iss"] == ISSUER
    assert claims["sub"] == claims["client_id"] == "svc"
    assert claims["aud"] == "https://api.test"
    assert before <= claims["iat"] <= after
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] == claims["iat"] + 3600
    assert claims["scope"] == "write"
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


async def test_jti_is_unique(client: QuartClient, register: Register) -> None:
    """Two tokens for the same client have different jti values."""
    secret = await register("svc")
    tokens = [await get_token(client, "svc", secret) for _ in range(2)]
    jtis = {unverified(token)[1]["jti"] for token in tokens}
    assert len(jtis) == 2


async def test_client_without_scopes_gets_no_scope(client: QuartClient, register: Register) -> None:
    """A client with no scopes gets a token with neither a scope member nor a scope claim."""
    secret = await register("svc")
    response = await request_token(client, "svc", secret)
    assert response.status_code == 200
    body = await response.get_json()
    assert "scope" not in body
    assert "scope" not in unverified(body["access_token"])[1]


@pytest.mark.parametrize(("ttl", "expected"), [(None, 3600), (60, 60), (86400, 86400)])
async def test_lifetime_default_and_per_client(
    client: QuartClient, register: Register, ttl: int | None, expected: int
) -> None:
    """expires_in and exp - iat are the client's ttl when set, else the default 3600 s."""
    secret = await register("svc", ttl=ttl)
    response = await request_token(client, "svc", secret)
    assert response.status_code == 200
    body = await response.get_json()
    claims = unverified(body["access_token"])[1]
    assert body["expires_in"] == expected
    assert claims["exp"] - claims["iat"] == expected


async def test_service_default_lifetime_follows_settings(settings: Settings) -> None:
    """A configured TOKEN_TTL is the lifetime of tokens for clients without their own."""
    app = create_app(dataclasses.replace(settings, token_ttl=120))
    async with app.test_app():
        secret = await add_client(app.extensions["tokendealer"])
        response = await request_token(app.test_client(), "svc", secret)
        body = await response.get_json()
    assert response.status_code == 200
    assert body["expires_in"] == 120


@pytest.mark.parametrize("threads", [0, 2])
async def test_tokens_signed_by_the_loop_or_by_signing_threads(
    settings: Settings, threads: int
) -> None:
    """``TOKENDEALER_SIGNING_THREADS``: concurrent requests are each answered with a valid
    token of its own, signed by a pool thread when there are threads (none otherwise),
    and the threads end with the app."""

    def signers() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("tokendealer-sign")}

    before = signers()
    app = create_app(dataclasses.replace(settings, signing_threads=threads))
    async with app.test_app():
        dealer: Dealer = app.extensions["tokendealer"]
        secret = await add_client(dealer, scopes=("read",))
        http = app.test_client()
        responses = await asyncio.gather(
            *(request_token(http, "svc", secret, scope="read") for _ in range(12))
        )
        tokens = [(await response.get_json())["access_token"] for response in responses]
        during = signers() - before
        for token in tokens:
            assert (await dealer.verify(token))["client_id"] == "svc"
    assert [response.status_code for response in responses] == [200] * 12
    assert len(set(tokens)) == 12
    assert (len(during) > 0) is (threads > 0) and len(during) <= threads
    for _ in range(100):  # shut down without waiting: the threads end at their next look
        if not signers() - before:
            break
        await asyncio.sleep(0.01)
    assert not signers() - before


# -- scope policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        (None, "read write admin"),
        ("read", "read"),
        ("write read", "write read"),
        ("read write admin", "read write admin"),
        ("read read", "read"),
    ],
)
async def test_scope_subset_is_granted(
    client: QuartClient, register: Register, requested: str | None, granted: str
) -> None:
    """A subset of the client's scopes is granted as asked; none requested means all of them."""
    secret = await register("svc", scopes=("read", "write", "admin"))
    response = await request_token(client, "svc", secret, scope=requested)
    assert response.status_code == 200
    body = await response.get_json()
    assert body["scope"] == granted
    assert unverified(body["access_token"])[1]["scope"] == granted


@pytest.mark.parametrize(
    "requested",
    [
        "delete",
        "read delete",
        "READ",
        f"read {MARKER}",
        "read  write",  # empty scope-token between two spaces
        " read",
        "read ",
        'read "write"',  # %x22 is outside scope-token
        "read\\write",  # %x5C too
        "read\twrite",
        "réad",
    ],
)
async def test_scope_not_allowed_or_malformed(
    client: QuartClient, register: Register, requested: str
) -> None:
    """A scope outside the client's set, or not RFC 6749 §3.3 syntax, is 400 invalid_scope."""
    secret = await register("svc", scopes=("read", "write"))
    response = await request_token(client, "svc", secret, scope=requested)
    await assert_oauth_error(response, 400, "invalid_scope")


# -- audience policy ---------------------------------------------------------------------

AUDIENCES = ("https://api-a.test", "https://api-b.test/v1")


@pytest.mark.parametrize("resource", ["urn:example:orders", "https://api.test/v1?x=1"])
async def test_resource_takes_any_absolute_uri(
    client: QuartClient, register: Register, resource: str
) -> None:
    """RFC 8707 §2: any absolute URI (RFC 3986 §4.3) is a resource, a URN included."""
    secret = await register("svc", audiences=(resource,))
    token = await get_token(client, "svc", secret, resource=resource)
    assert unverified(token)[1]["aud"] == resource


@pytest.mark.parametrize("parameter", ["audience", "resource"])
@pytest.mark.parametrize("requested", AUDIENCES)
async def test_requested_audience_is_granted(
    client: QuartClient, register: Register, parameter: str, requested: str
) -> None:
    """audience (or RFC 8707 resource) naming one of the client's audiences becomes aud."""
    secret = await register("svc", audiences=AUDIENCES)
    token = await get_token(client, "svc", secret, **{parameter: requested})
    assert unverified(token)[1]["aud"] == requested


async def test_no_audience_requested_gives_the_first(
    client: QuartClient, register: Register
) -> None:
    """Without audience or resource, the token's aud is the client's first audience."""
    secret = await register("svc", audiences=AUDIENCES)
    assert unverified(await get_token(client, "svc", secret))[1]["aud"] == AUDIENCES[0]


async def test_client_without_audiences_gets_the_issuer(
    client: QuartClient, register: Register, settings: Settings
) -> None:
    """A client with no audiences gets settings.audience, which defaults to the issuer."""
    assert settings.default_audience is None and settings.audience == ISSUER
    secret = await register("svc")
    assert unverified(await get_token(client, "svc", secret))[1]["aud"] == ISSUER
    token = await get_token(client, "svc", secret, resource=ISSUER)
    assert unverified(token)[1]["aud"] == ISSUER


async def test_configured_default_audience(settings: Settings) -> None:
    """With DEFAULT_AUDIENCE set, clients without audiences get it, and only it."""
    app = create_app(dataclasses.replace(settings, default_audience="https://default.test"))
    async with app.test_app():
        secret = await add_client(app.extensions["tokendealer"])
        client = app.test_client()
        token = await get_token(client, "svc", secret)
        assert unverified(token)[1]["aud"] == "https://default.test"
        refused = await request_token(client, "svc", secret, audience=ISSUER)
        await assert_oauth_error(refused, 400, "invalid_target")


@pytest.mark.parametrize(
    "params",
    [
        {"audience": "https://other.test"},
        {"audience": f"https://{MARKER}.test"},
        {"audience": AUDIENCES[0] + "/"},
        {"audience": AUDIENCES[0].upper()},
        {"resource": "https://other.test"},
        {"resource": "api-a"},  # not an absolute URI
        {"resource": "/relative/path"},
        {"resource": "https://api-a.test#fragment"},
        {"resource": f"{MARKER}:"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
async def test_audience_not_allowed(
    client: QuartClient, register: Register, params: dict[str, str]
) -> None:
    """An audience or resource the client may not have, or a non-absolute resource, is 400
    invalid_target (RFC 8707 §2)."""
    secret = await register("svc", audiences=AUDIENCES)
    response = await request_token(client, "svc", secret, **params)
    await assert_oauth_error(response, 400, "invalid_target")


@pytest.mark.parametrize("audience", ["api-a", "urn-less:", "https://api-a.test#fragment"])
async def test_resource_must_be_an_absolute_uri(
    client: QuartClient, register: Register, audience: str
) -> None:
    """RFC 8707 §2: resource must be an absolute URI without fragment, even when the same
    string is an audience the client may ask for with the audience parameter."""
    secret = await register("svc", audiences=(audience,))
    assert (await request_token(client, "svc", secret, audience=audience)).status_code == 200
    response = await request_token(client, "svc", secret, resource=audience)
    await assert_oauth_error(response, 400, "invalid_target")


async def test_audience_and_resource_together(client: QuartClient, register: Register) -> None:
    """Both audience and resource in one request is 400 invalid_request."""
    secret = await register("svc", audiences=AUDIENCES)
    response = await request_token(
        client, "svc", secret, audience=AUDIENCES[0], resource=AUDIENCES[0]
    )
    await assert_oauth_error(response, 400, "invalid_request")


# -- client authentication ---------------------------------------------------------------


async def test_client_secret_post(client: QuartClient, register: Register) -> None:
    """client_id and client_secret in the form body authenticate the client."""
    secret = await register("svc")
    token = await get_token(client, "svc", secret, method="post")
    assert unverified(token)[1]["client_id"] == "svc"


async def test_client_secret_basic_with_redundant_body_client_id(
    client: QuartClient, register: Register
) -> None:
    """Basic plus the same client_id in the body (one method, repeated id) is accepted."""
    secret = await register("svc")
    response = await client.post(
        TOKEN_PATH,
        form={**GRANT, "client_id": "svc"},
        headers=basic("svc", secret),
    )
    assert response.status_code == 200


@pytest.mark.parametrize("client_id", ["team:svc", "svc@example.org", "a:b@c:d", "x.y-z_1"])
async def test_client_secret_basic_form_urlencodes_id(
    client: QuartClient, register: Register, client_id: str
) -> None:
    """Ids with ':' or '@' work in Basic when form-urlencoded (%3A, %40) per RFC 6749 App. B."""
    secret = await register(client_id)
    authorization = basic_credentials(client_id, secret)
    if ":" in client_id:
        assert "%3A" in base64.b64decode(authorization.split()[1]).decode()
    if "@" in client_id:
        assert "%40" in base64.b64decode(authorization.split()[1]).decode()
    claims = unverified(await get_token(client, client_id, secret))[1]
    assert claims["client_id"] == claims["sub"] == client_id


async def test_client_secret_post_with_special_id(client: QuartClient, register: Register) -> None:
    """An id with ':' and '@' also authenticates with client_secret_post."""
    secret = await register("team:svc@example.org")
    response = await request_token(client, "team:svc@example.org", secret, method="post")
    assert response.status_code == 200


async def test_basic_with_unencoded_colon_in_id_still_works(
    client: QuartClient, register: Register
) -> None:
    """Clients that skip App. B encoding (Authlib, httpx) still authenticate an id with
    ':': the split is at the last colon, and generated secrets never contain one."""
    secret = await register("team:svc")
    response = await post_form(
        client,
        "grant_type=client_credentials",
        authorization=basic_raw(f"team:svc:{secret}".encode()),
    )
    assert response.status_code == 200
    wrong = await post_form(
        client,
        "grant_type=client_credentials",
        authorization=basic_raw(f"team:svc:{secret}x".encode()),
    )
    await assert_oauth_error(wrong, 401, "invalid_client")


async def test_basic_with_plus_encoded_space(client: QuartClient, register: Register) -> None:
    """'+' in a Basic part decodes to a space (unquote_plus), so a raw '+' is not a literal '+'."""
    secret = await register("svc")
    # 'svc' with a trailing '+' decodes to 'svc ', an unknown client.
    response = await post_form(
        client, "grant_type=client_credentials", authorization=basic_raw(f"svc+:{secret}".encode())
    )
    await assert_oauth_error(response, 401, "invalid_client")


async def test_both_methods_at_once(client: QuartClient, register: Register) -> None:
    """Basic and client_secret in the body together is 400 invalid_request (RFC 6749 §2.3)."""
    secret = await register("svc")
    response = await client.post(
        TOKEN_PATH,
        form={**GRANT, "client_id": "svc", "client_secret": secret},
        headers=basic("svc", secret),
    )
    await assert_oauth_error(response, 400, "invalid_request")


async def _failure_kinds(register: Register) -> dict[str, tuple[str, str]]:
    good = await register("svc")
    disabled_secret = await register("off", disabled=True)
    return {
        "unknown client": ("nobody", good),
        "wrong secret": ("svc", generate_secret()),
        "disabled client": ("off", disabled_secret),
    }


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_authentication_failures_are_identical(
    client: QuartClient, register: Register, method: str
) -> None:
    """Unknown client, wrong secret and disabled client give byte-identical 401 responses
    (each with the request id it was sent with)."""
    answers = []
    for client_id, secret in (await _failure_kinds(register)).values():
        response = await request_token(
            client, client_id, secret, method=method, headers={"X-Request-ID": "same-id"}
        )
        await assert_oauth_error(response, 401, "invalid_client")
        answers.append(
            (
                response.status_code,
                await response.get_data(),
                sorted((k.lower(), v) for k, v in response.headers.items()),
            )
        )
    assert answers[0] == answers[1] == answers[2]


async def test_disabled_then_enabled_client(
    client: QuartClient, register: Register, dealer: Dealer
) -> None:
    """A disabled client is refused and is served again once enabled."""
    secret = await register("svc", disabled=True)
    assert (await request_token(client, "svc", secret)).status_code == 401
    await dealer.store.set_disabled("svc", False)
    assert (await request_token(client, "svc", secret)).status_code == 200


async def test_secret_rotation_grace(
    client: QuartClient, register: Register, dealer: Dealer
) -> None:
    """Within the grace period after a rotation both the old and the new secret work."""
    old = await register("svc")
    new = generate_secret()
    await dealer.store.rotate_secret("svc", digest_secret(new), time.time() + 60)
    assert (await request_token(client, "svc", old)).status_code == 200
    assert (await request_token(client, "svc", new)).status_code == 200
    response = await request_token(client, "svc", generate_secret())
    await assert_oauth_error(response, 401, "invalid_client")


async def test_secret_rotation_after_grace(
    client: QuartClient, register: Register, dealer: Dealer
) -> None:
    """Once the grace period has ended the old secret gets the same 401 as any wrong secret."""
    old = await register("svc")
    new = generate_secret()
    await dealer.store.rotate_secret("svc", digest_secret(new), time.time() - 1)
    response = await request_token(client, "svc", old)
    await assert_oauth_error(response, 401, "invalid_client")
    assert (await request_token(client, "svc", new)).status_code == 200


async def test_second_rotation_drops_the_first_secret(
    client: QuartClient, register: Register, dealer: Dealer
) -> None:
    """Only the secret just replaced gets a grace period, not every earlier one."""
    first = await register("svc")
    second, third = generate_secret(), generate_secret()
    await dealer.store.rotate_secret("svc", digest_secret(second), time.time() + 60)
    await dealer.store.rotate_secret("svc", digest_secret(third), time.time() + 60)
    assert (await request_token(client, "svc", first)).status_code == 401
    assert (await request_token(client, "svc", second)).status_code == 200
    assert (await request_token(client, "svc", third)).status_code == 200


# -- the error table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad request; ``{secret}`` in body or authorization is the client's secret."""

    body: bytes | str
    status: int
    error: str
    authorization: str | Callable[[str], str] | None = field(
        default=lambda secret: basic_credentials("svc", secret)
    )
    content_type: str | None = FORM


GRANT_BODY = "grant_type=client_credentials"
BIG = 64 * 1024 + 1

ERROR_TABLE: dict[str, Bad] = {
    # grant_type
    "missing grant_type": Bad("scope=read", 400, "invalid_request"),
    "empty grant_type": Bad("grant_type=", 400, "invalid_request"),
    "empty body": Bad("", 400, "invalid_request"),
    "password grant": Bad("grant_type=password", 400, "unsupported_grant_type"),
    "authorization_code grant": Bad(
        "grant_type=authorization_code&code=x", 400, "unsupported_grant_type"
    ),
    "grant with marker": Bad(f"grant_type={MARKER}", 400, "unsupported_grant_type"),
    "grant_type case": Bad("grant_type=Client_Credentials", 400, "unsupported_grant_type"),
    # The grant is checked before the client: a request that could never get a token
    # costs no secret check and counts no authentication failure.
    "password grant, wrong secret": Bad(
        "grant_type=password",
        400,
        "unsupported_grant_type",
        lambda _: basic_credentials("svc", "wrong"),
    ),
    "no grant_type, no credentials": Bad("scope=read", 400, "invalid_request", None),
    # repeated parameters (RFC 6749 §3.2 / §3.1: MUST NOT be included more than once)
    "grant_type twice": Bad(f"{GRANT_BODY}&{GRANT_BODY}", 400, "invalid_request"),
    "grant_type twice, one empty": Bad(f"{GRANT_BODY}&grant_type=", 400, "invalid_request"),
    "scope twice": Bad(f"{GRANT_BODY}&scope=read&scope=read", 400, "invalid_request"),
    "audience twice": Bad(
        f"{GRANT_BODY}&audience={MARKER}&audience={MARKER}", 400, "invalid_request"
    ),
    "unknown parameter twice": Bad(f"{GRANT_BODY}&x={MARKER}&x=2", 400, "invalid_request"),
    "client_id twice (post)": Bad(
        GRANT_BODY + "&client_id=svc&client_id=svc&client_secret={secret}",
        400,
        "invalid_request",
        authorization=None,
    ),
    "client_secret twice (post)": Bad(
        GRANT_BODY + "&client_id=svc&client_secret={secret}&client_secret={secret}",
        400,
        "invalid_request",
        authorization=None,
    ),
    "too many parameters": Bad(
        GRANT_BODY + "".join(f"&p{i}={MARKER}" for i in range(40)), 400, "invalid_request"
    ),
    # content types
    "JSON body": Bad(
        json.dumps({"grant_type": "client_credentials", "scope": MARKER}),
        400,
        "invalid_request",
        content_type="application/json",
    ),
    "text/plain": Bad(
        f"{GRANT_BODY}&scope={MARKER}", 400, "invalid_request", content_type="text/plain"
    ),
    "no content type": Bad(
        f"{GRANT_BODY}&scope={MARKER}", 400, "invalid_request", content_type=None
    ),
    "multipart": Bad(
        f'--b\r\nContent-Disposition: form-data; name="grant_type"\r\n\r\n{MARKER}\r\n--b--\r\n',
        400,
        "invalid_request",
        content_type="multipart/form-data; boundary=b",
    ),
    # encoding
    "raw invalid UTF-8": Bad(GRANT_BODY.encode() + b"&scope=\xff\xfe", 400, "invalid_request"),
    "raw valid UTF-8 (not urlencoded)": Bad(
        (GRANT_BODY + "&scope=réad").encode(), 400, "invalid_request"
    ),
    "%FF in a value": Bad(f"{GRANT_BODY}&scope=%FF{MARKER}", 400, "invalid_request"),
    "%C3%28 in a value": Bad(f"{GRANT_BODY}&scope=%C3%28", 400, "invalid_request"),
    "%FF in grant_type": Bad("grant_type=%FF", 400, "invalid_request"),
    "%FF in a name": Bad(f"{GRANT_BODY}&%FF=1", 400, "invalid_request"),
    # lengths: capped before any hashing
    "value over the cap": Bad(f"{GRANT_BODY}&scope={MARKER * 400}", 400, "invalid_request"),
    "name over the cap": Bad(f"{GRANT_BODY}&{MARKER * 10}=1", 400, "invalid_request"),
    "client_id over 128 (post)": Bad(
        GRANT_BODY + f"&client_id={MARKER * 20}&client_secret=" + "{secret}",
        401,
        "invalid_client",
        authorization=None,
    ),
    "client_secret over 512 (post)": Bad(
        GRANT_BODY + f"&client_id=svc&client_secret={MARKER * 60}",
        401,
        "invalid_client",
        authorization=None,
    ),
    "body over 64 KiB": Bad(f"{GRANT_BODY}&scope=" + "a" * BIG, 413, "invalid_request"),
    # client authentication
    "no authentication": Bad(GRANT_BODY, 401, "invalid_client", authorization=None),
    "client_id only (post)": Bad(
        f"{GRANT_BODY}&client_id=svc", 401, "invalid_client", authorization=None
    ),
    "client_secret only (post)": Bad(
        GRANT_BODY + "&client_secret={secret}", 401, "invalid_client", authorization=None
    ),
    "basic and client_secret": Bad(GRANT_BODY + "&client_secret={secret}", 400, "invalid_request"),
    "basic and another client_id": Bad(f"{GRANT_BODY}&client_id={MARKER}", 400, "invalid_request"),
    "basic without colon": Bad(
        GRANT_BODY, 401, "invalid_client", authorization=basic_raw(MARKER.encode())
    ),
    "basic bad base64": Bad(GRANT_BODY, 401, "invalid_client", authorization=f"Basic {MARKER}!!*"),
    "basic base64 with junk after padding": Bad(
        GRANT_BODY, 401, "invalid_client", authorization=basic_raw(b"svc:x") + "AAAA=="
    ),
    "basic non-UTF-8 after base64": Bad(
        GRANT_BODY,
        401,
        "invalid_client",
        authorization=basic_raw(b"svc\xff:\xfe" + MARKER.encode()),
    ),
    "basic %FF in id": Bad(
        GRANT_BODY, 401, "invalid_client", authorization=basic_raw(f"%FF{MARKER}:x".encode())
    ),
    "basic empty": Bad(GRANT_BODY, 401, "invalid_client", authorization="Basic "),
    "basic scheme only": Bad(GRANT_BODY, 401, "invalid_client", authorization="Basic"),
    "basic empty id and secret": Bad(
        GRANT_BODY, 401, "invalid_client", authorization=basic_raw(b":")
    ),
    "bearer scheme": Bad(GRANT_BODY, 401, "invalid_client", authorization=f"Bearer {MARKER}"),
    "digest scheme": Bad(
        GRANT_BODY, 401, "invalid_client", authorization=f'Digest username="{MARKER}"'
    ),
    "scheme without credentials": Bad(GRANT_BODY, 401, "invalid_client", authorization=MARKER),
    "oversized authorization header": Bad(
        GRANT_BODY, 401, "invalid_client", authorization=basic_raw(MARKER.encode() * 400)
    ),
    "basic id over 128": Bad(
        GRANT_BODY,
        401,
        "invalid_client",
        authorization=lambda secret: basic_credentials(MARKER * 20, secret),
    ),
    "basic secret over 512": Bad(
        GRANT_BODY,
        401,
        "invalid_client",
        authorization=lambda _: basic_credentials("svc", MARKER * 60),
    ),
    # policy
    "scope not allowed": Bad(f"{GRANT_BODY}&scope={MARKER}", 400, "invalid_scope"),
    "scope malformed": Bad(f"{GRANT_BODY}&scope=read%20%20{MARKER}", 400, "invalid_scope"),
    "audience not allowed": Bad(
        f"{GRANT_BODY}&audience=https%3A%2F%2F{MARKER}.test", 400, "invalid_target"
    ),
    "resource not absolute": Bad(f"{GRANT_BODY}&resource={MARKER}", 400, "invalid_target"),
    "resource not allowed": Bad(
        f"{GRANT_BODY}&resource=https%3A%2F%2F{MARKER}.test", 400, "invalid_target"
    ),
}


@pytest.mark.parametrize("case", ERROR_TABLE.values(), ids=ERROR_TABLE.keys())
async def test_error_table(client: QuartClient, register: Register, case: Bad) -> None:
    """Each bad request gets its RFC 6749 §5.2 error and status, in the §5.2 charset, without
    echoing its input, and never a 500."""
    secret = await register("svc", scopes=("read",), audiences=("https://api.test",))
    body = case.body
    if isinstance(body, str):
        body = body.replace("{secret}", secret).encode("ascii")
    authorization = case.authorization
    if callable(authorization):
        authorization = authorization(secret)
    response = await post_form(
        client, body, authorization=authorization, content_type=case.content_type
    )
    await assert_oauth_error(response, case.status, case.error)


def test_error_table_bodies_are_otherwise_valid() -> None:
    """The oversized cases really exceed their caps (the table tests what it claims)."""
    assert len(ERROR_TABLE["body over 64 KiB"].body) > 64 * 1024
    assert len(MARKER * 400) > 4096
    assert len(MARKER * 20) > 128
    assert len(MARKER * 60) > 512


async def test_error_table_control_succeeds(client: QuartClient, register: Register) -> None:
    """The table's baseline (same client, Basic header, form body) does get a token."""
    secret = await register("svc", scopes=("read",), audiences=("https://api.test",))
    response = await post_form(
        client, f"{GRANT_BODY}&scope=read", authorization=basic_credentials("svc", secret)
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [FORM, f"{FORM}; charset=utf-8", f"{FORM}; charset=UTF-8", "Application/X-WWW-Form-Urlencoded"],
)
async def test_form_content_type_variants(
    client: QuartClient, register: Register, content_type: str
) -> None:
    """The form media type is matched case-insensitively, with parameters allowed."""
    secret = await register("svc")
    response = await post_form(
        client,
        GRANT_BODY,
        authorization=basic_credentials("svc", secret),
        content_type=content_type,
    )
    assert response.status_code == 200


async def test_empty_parameters_count_as_omitted(client: QuartClient, register: Register) -> None:
    """RFC 6749 §3.1: scope= and audience= without a value are as if omitted."""
    secret = await register("svc", scopes=("read",), audiences=AUDIENCES)
    response = await post_form(
        client, f"{GRANT_BODY}&scope=&audience=", authorization=basic_credentials("svc", secret)
    )
    assert response.status_code == 200
    claims = unverified((await response.get_json())["access_token"])[1]
    assert claims["scope"] == "read" and claims["aud"] == AUDIENCES[0]


#: Client ids no client can have: each is answered 401 invalid_client, never looked up.
IMPOSSIBLE_IDS = ["a\x00b", "a\x01b", "caf\u00e9", "\U0001f600", "a b", "a" * 129, "x" * 4000]


async def test_impossible_client_ids_are_invalid_client_on_every_store(
    settings: Settings, database_url: str
) -> None:
    """Ids outside the registration rule (NUL, which PostgreSQL refuses in text, control
    characters, non-ASCII, over 128 characters) are 401 invalid_client on SQLite and
    PostgreSQL alike: a client error, never a 503 "store unavailable"."""
    # Every attempt here fails authentication from one address: lift that limit.
    relaxed = dataclasses.replace(
        settings, database_url=database_url, auth_failure_limit=Rate(10_000, 60)
    )
    app = create_app(relaxed)
    async with app.test_app():
        client = app.test_client()
        secret = await add_client(app.extensions["tokendealer"])
        for client_id in IMPOSSIBLE_IDS:
            for path, extra in ((TOKEN_PATH, GRANT), ("/oauth/introspect", {"token": "x"})):
                form = {**extra, "client_id": client_id, "client_secret": secret}
                response = await client.post(path, form=form)
                assert response.status_code == 401, (path, client_id[:10])
                assert (await response.get_json())["error"] == "invalid_client"
            response = await request_token(client, client_id, secret)
            assert response.status_code == 401, client_id[:10]
        assert (await request_token(client, "svc", secret)).status_code == 200


@pytest.mark.parametrize("path", [TOKEN_PATH, "/oauth/introspect", "/oauth/revoke"])
async def test_two_authorization_headers_are_refused(
    client: QuartClient, register: Register, path: str
) -> None:
    """Two Authorization headers, even both valid, are 400 invalid_request on every
    endpoint where clients authenticate: which one counts must not depend on who reads."""
    secret = await register("svc")
    other = await register("other")
    headers = Headers(
        [
            ("Authorization", basic_credentials("svc", secret)),
            ("Authorization", basic_credentials("other", other)),
        ]
    )
    body = {**GRANT, "token": "x"} if path != TOKEN_PATH else GRANT
    response = await client.post(path, form=body, headers=headers)
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_request"
    # One of them alone is accepted: the refusal is for the pair.
    alone = await client.post(path, form=body, headers=basic("svc", secret))
    assert alone.status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods(client: QuartClient, method: str) -> None:
    """Any method but POST is 405 with Allow: POST and a JSON error body."""
    response = await client.open(TOKEN_PATH, method=method)
    raw = await response.get_data()
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.mimetype == "application/json"
    body = json.loads(raw)
    assert set(body) == {"error", "error_description"}
    assert ERROR_CHARSET.fullmatch(body["error_description"])


@pytest.mark.parametrize("path", ["/nope", f"/oauth/{MARKER}", "/oauth/token/x", "/oauth/token2"])
async def test_unknown_path(client: QuartClient, path: str) -> None:
    """An unknown path is 404 with a JSON error body that does not repeat the path."""
    response = await client.post(path, form=GRANT)
    raw = await response.get_data()
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    body = json.loads(raw)
    assert set(body) == {"error", "error_description"}
    assert ERROR_CHARSET.fullmatch(body["error_description"])
    assert MARKER.encode() not in raw


async def test_last_token_time_is_noted_once_a_minute(
    client: QuartClient, register: Register, dealer: Dealer
) -> None:
    """A token notes the client's last-token time in the store, in the background and at
    most once a minute per process: the second token a second later writes nothing."""
    secret = await register("svc")
    before = time.time()
    await get_token(client, "svc", secret)
    await dealer.activity.drain()
    noted = await dealer.store.get_client("svc")
    assert noted is not None and noted.last_token_at is not None
    assert before - 1 <= noted.last_token_at <= time.time()
    writes: list[str] = []
    original = dealer.store.record_token_issued

    async def counting(client_id: str, at: float, *, every: float) -> None:
        writes.append(client_id)
        await original(client_id, at, every=every)

    dealer.store.record_token_issued = counting  # type: ignore[method-assign]
    await get_token(client, "svc", secret)
    await dealer.activity.drain()
    assert writes == []
