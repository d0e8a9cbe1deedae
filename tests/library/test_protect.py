"""tokendealer.library.protect: RFC 6750 answers from the Quart decorator and the plain ASGI
middleware."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from quart import Quart, g, jsonify, websocket
from quart.testing import WebsocketResponseError

from tests.support.environment import ISSUER, QuartClient
from tests.support.issuer import AUDIENCE, KEYS, FakeIssuer
from tokendealer.library.protect import (
    BearerAuthMiddleware,
    bearer_token,
    require_token,
    token_claims,
)
from tokendealer.library.verify import TokenVerifier

REALM = 'Bearer realm="orders-api"'


@pytest.fixture(name="issuer")
def _issuer() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture(name="verifier")
async def _verifier(issuer: FakeIssuer) -> AsyncIterator[TokenVerifier]:
    async with issuer.async_client() as http:
        yield TokenVerifier(ISSUER, AUDIENCE, http_client=http)


@pytest.fixture(name="service")
def _service(verifier: TokenVerifier) -> QuartClient:
    app = Quart("orders")

    @app.get("/items")
    @require_token(verifier, scopes=["read"])
    async def list_items() -> Any:
        return jsonify(sub=token_claims()["sub"], scope=g.token_claims["scope"])

    @app.post("/items")
    @require_token(verifier, scopes=["write"])
    async def add_item() -> Any:
        return jsonify(added=True, by=g.token_claims["client_id"]), 201

    @app.get("/any")
    @require_token(verifier)
    async def any_token() -> Any:
        return jsonify(jti=token_claims()["jti"])

    @app.websocket("/ws")
    @require_token(verifier, scopes=["read"])
    async def feed() -> None:
        await websocket.accept()
        await websocket.send(token_claims()["sub"])

    return app.test_client()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_token_reaches_handler_with_claims(
    service: QuartClient, issuer: FakeIssuer
) -> None:
    """A token with the needed scope is served; the handler reads its verified claims."""
    response = await service.get("/items", headers=_bearer(issuer.token(scope="read")))
    assert response.status_code == 200
    assert await response.get_json() == {"sub": "worker", "scope": "read"}
    response = await service.post("/items", headers=_bearer(issuer.token(scope="write")))
    assert response.status_code == 201
    assert (await response.get_json())["by"] == "worker"


async def test_no_token_is_401_without_error_code(service: QuartClient) -> None:
    """RFC 6750 §3.1: a request without credentials gets a bare Bearer challenge."""
    response = await service.get("/items")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == REALM
    assert "error" not in await response.get_json()


@pytest.mark.parametrize("value", ["Basic d29ya2VyOnNlY3JldA==", "Token abc", "Digest x=1"])
async def test_other_schemes_are_no_bearer_credentials(service: QuartClient, value: str) -> None:
    """Another auth scheme counts as no bearer token: 401 without error code."""
    response = await service.get("/items", headers={"Authorization": value})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == REALM


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_scheme_is_case_insensitive(
    service: QuartClient, issuer: FakeIssuer, scheme: str
) -> None:
    """RFC 7235 §2.1: the auth-scheme matches case-insensitively."""
    response = await service.get("/any", headers={"Authorization": f"{scheme} {issuer.token()}"})
    assert response.status_code == 200


async def test_several_spaces_after_scheme_are_allowed(
    service: QuartClient, issuer: FakeIssuer
) -> None:
    """RFC 6750 §2.1: 1*SP separates the scheme from the token."""
    response = await service.get("/any", headers={"Authorization": f"Bearer   {issuer.token()}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "value",
    [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer tok!en",
        "Bearer tok,en",
        'Bearer "quoted"',
        "Bearer =abc",
        "Bearer\tabc",
        "Bearer ab=c",
        "(Bearer) abc",
    ],
)
async def test_malformed_bearer_credentials_are_invalid_request(
    service: QuartClient, value: str
) -> None:
    """A Bearer header whose token is not a b64token is 400 invalid_request."""
    response = await service.get("/items", headers={"Authorization": value})
    assert response.status_code == 400
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]
    assert (await response.get_json())["error"] == "invalid_request"


async def test_two_authorization_headers_are_invalid_request(
    service: QuartClient, issuer: FakeIssuer
) -> None:
    """More than one Authorization header is refused, even if one of them is valid."""
    headers = [("Authorization", f"Bearer {issuer.token()}"), ("Authorization", "Bearer x")]
    response = await service.get("/any", headers=headers)
    assert response.status_code == 400


async def test_token_in_query_string_is_refused(service: QuartClient, issuer: FakeIssuer) -> None:
    """RFC 6750 §2.3 is not supported: access_token in the URI is 400, even with a header."""
    token = issuer.token()
    response = await service.get("/any", query_string={"access_token": token})
    assert response.status_code == 400
    response = await service.get(
        "/any", query_string={"access_token": token}, headers=_bearer(token)
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("make", "description"),
    [
        (lambda i: "abc", "malformed"),
        (lambda i: "abc==", "malformed"),
        (lambda i: i.token(exp=int(time.time()) - 3600), "expired"),
        (lambda i: i.token(aud="billing-api"), "audience"),
        (lambda i: i.token(key=KEYS[2], kid=i.kid), "signature"),
        (lambda i: i.token(kid="unknown"), "unknown key"),
        (lambda i: i.token(headers={"typ": "JWT"}), "at+jwt"),
    ],
)
async def test_bad_tokens_are_401_invalid_token(
    service: QuartClient, issuer: FakeIssuer, make: Any, description: str
) -> None:
    """A token that does not verify is 401 error="invalid_token" with a safe description."""
    response = await service.get("/items", headers=_bearer(make(issuer)))
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(REALM + ', error="invalid_token", error_description="')
    assert description in challenge
    assert (await response.get_json())["error"] == "invalid_token"


async def test_missing_scope_is_403_insufficient_scope(
    service: QuartClient, issuer: FakeIssuer
) -> None:
    """RFC 6750 §3.1: a valid token without the scope is 403 naming the required scope."""
    response = await service.post("/items", headers=_bearer(issuer.token(scope="read")))
    assert response.status_code == 403
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and challenge.endswith('scope="write"')
    assert (await response.get_json())["error"] == "insufficient_scope"


async def test_scopes_given_as_a_string_are_space_separated(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """require_token(scopes="write") requires the scope write (not w, r, i, t, e), and the
    403 challenge names it so."""
    app = Quart("orders")

    @app.post("/items")
    @require_token(verifier, scopes="write")
    async def add_item() -> Any:
        return jsonify(added=True)

    client = app.test_client()
    ok = await client.post("/items", headers=_bearer(issuer.token(scope="read write")))
    assert ok.status_code == 200
    refused = await client.post("/items", headers=_bearer(issuer.token(scope="read")))
    assert refused.status_code == 403
    assert refused.headers["WWW-Authenticate"].endswith('scope="write"')


async def test_unreachable_keys_are_503_not_401() -> None:
    """When the issuer's keys cannot be fetched the service answers 503 with Retry-After."""
    issuer = FakeIssuer(jwks_status=500)
    async with issuer.async_client() as http:
        verifier = TokenVerifier(ISSUER, AUDIENCE, http_client=http)
        app = Quart("orders")

        @app.get("/any")
        @require_token(verifier, realm="orders")
        async def any_token() -> str:
            return "ok"

        response = await app.test_client().get("/any", headers=_bearer(issuer.token()))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "WWW-Authenticate" not in response.headers


async def test_websocket_route_is_protected(service: QuartClient, issuer: FakeIssuer) -> None:
    """A websocket without a token is refused with 401; with one it is accepted."""
    with pytest.raises(WebsocketResponseError) as excinfo:
        async with service.websocket("/ws") as ws:
            await ws.receive()
    assert excinfo.value.response.status_code == 401
    async with service.websocket("/ws", headers=_bearer(issuer.token(scope="read"))) as ws:
        assert await ws.receive() == "worker"


def test_bearer_token_parser() -> None:
    """bearer_token returns the b64token, None without bearer credentials."""
    assert bearer_token(["Bearer abc.DEF-_~+/=="]) == "abc.DEF-_~+/=="
    assert bearer_token([]) is None
    assert bearer_token(["Basic abc"]) is None
    assert bearer_token(["Bearer abc"], b"x=1&y=2") == "abc"


# -- plain ASGI ----------------------------------------------------------------------------------


class BareApp:
    """The smallest ASGI app: records the scope it was called with, answers 200."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


async def _call(
    app: Any, path: str = "/data", headers: list[tuple[bytes, bytes]] = (), **extra: Any
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": list(headers),
        **extra,
    }
    await app(scope, receive, send)
    return sent


def _headers(message: dict[str, Any]) -> dict[bytes, bytes]:
    return dict(message["headers"])


async def test_middleware_passes_claims_in_scope_state(
    verifier: TokenVerifier, issuer: FakeIssuer
) -> None:
    """A valid token reaches the app with its claims in scope["state"]["token_claims"]."""
    inner = BareApp()
    app = BearerAuthMiddleware(inner, verifier, scopes=["read"])
    shared_state = {"db": "pool"}
    sent = await _call(
        app,
        headers=[(b"authorization", f"Bearer {issuer.token()}".encode())],
        state=shared_state,
    )
    assert sent[0]["status"] == 200
    state = inner.scopes[0]["state"]
    assert state["token_claims"]["sub"] == "worker" and state["db"] == "pool"
    assert shared_state == {"db": "pool"}  # the server's dict is not modified


@pytest.mark.parametrize(
    ("headers", "status", "challenge"),
    [
        ([], 401, REALM.encode()),
        ([(b"authorization", b"Bearer nope")], 401, b'error="invalid_token"'),
        ([(b"authorization", b"Bearer a b")], 400, b'error="invalid_request"'),
    ],
)
async def test_middleware_answers_rfc_6750(
    verifier: TokenVerifier,
    headers: list[tuple[bytes, bytes]],
    status: int,
    challenge: bytes,
) -> None:
    """The middleware refuses like the decorator and never calls the app."""
    inner = BareApp()
    sent = await _call(BearerAuthMiddleware(inner, verifier), headers=headers)
    assert sent[0]["status"] == status
    response_headers = _headers(sent[0])
    assert challenge in response_headers[b"www-authenticate"]
    assert int(response_headers[b"content-length"]) == len(sent[1]["body"])
    assert json.loads(sent[1]["body"])["error_description"]
    assert inner.scopes == []


async def test_middleware_scope_check_is_403(verifier: TokenVerifier, issuer: FakeIssuer) -> None:
    """A token without the middleware's scope is 403 insufficient_scope."""
    sent = await _call(
        BearerAuthMiddleware(BareApp(), verifier, scopes=["admin"]),
        headers=[(b"Authorization", f"bearer {issuer.token()}".encode())],
    )
    assert sent[0]["status"] == 403
    assert b'scope="admin"' in _headers(sent[0])[b"www-authenticate"]


async def test_middleware_exempt_paths_and_lifespan_pass_through(verifier: TokenVerifier) -> None:
    """Exempt paths and lifespan events reach the app without a token."""
    inner = BareApp()
    app = BearerAuthMiddleware(inner, verifier, exempt_paths={"/healthz"})
    assert (await _call(app, path="/healthz"))[0]["status"] == 200
    assert (await _call(app, path="/healthz/x"))[0]["status"] == 401
    await app({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert [scope["type"] for scope in inner.scopes] == ["http", "lifespan"]


async def test_middleware_closes_unauthorised_websockets(verifier: TokenVerifier) -> None:
    """A websocket without a valid token is closed with 1008 before it is accepted."""
    inner = BareApp()
    sent = await _call(BearerAuthMiddleware(inner, verifier), type="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert inner.scopes == []


async def test_middleware_over_real_http(issuer: FakeIssuer, verifier: TokenVerifier) -> None:
    """Through httpx's ASGI transport the middleware behaves as over the network."""
    app = BearerAuthMiddleware(BareApp(), verifier)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc"
    ) as http:
        assert (await http.get("/data")).status_code == 401
        assert (await http.get("/data", headers=_bearer(issuer.token()))).status_code == 200
        assert (await http.get(f"/data?access_token={issuer.token()}")).status_code == 400
