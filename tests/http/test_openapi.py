"""openapi.yaml is a valid OpenAPI 3.1 document that matches the app.

Three things must hold: the document validates; its (path, method) pairs are exactly the
app's routes, so a route added without its description (or the reverse) fails here; and
real responses, obtained through the Quart test client, match the status codes, media
types, headers and body schemas the document declares for them (``SpecChecker``, in
``tests.support.openapi``; the admin API's exchanges are checked in
``test_admin_api_spec``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from quart import Quart

from tests.support.apps import running
from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.openapi import HTTP_METHODS, Mismatch, SpecChecker, call, load_spec
from tests.support.tokens import get_token
from tokendealer.http import create_app
from tokendealer.http.app import routes
from tokendealer.keys.keyset import generate_key
from tokendealer.protocol.clients import Client
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings
from tokendealer.store import SQLStore, StoreUnavailable

#: Added by the framework to every route; not part of the described API.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(name="spec", scope="module")
def _spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture(name="checker", scope="module")
def _checker(spec: dict[str, Any]) -> SpecChecker:
    return SpecChecker(spec)


# -- the document ----------------------------------------------------------------------


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    """openapi.yaml is an OpenAPI 3.1 document that openapi-spec-validator accepts."""
    assert spec["openapi"].startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)


def test_component_schemas_are_valid_json_schema(spec: dict[str, Any]) -> None:
    """Every component schema is a valid schema of the OpenAPI 3.1 JSON Schema dialect."""
    schemas = spec["components"]["schemas"]
    assert {"ErrorResponse", "TokenResponse", "JWKSet", "AccessTokenClaims"} <= set(schemas)
    for schema in schemas.values():
        OAS31Validator.check_schema(schema)


def app_routes(app: Quart) -> set[tuple[str, str]]:
    """(OpenAPI path template, method) for every route of the app, the pipeline's and
    Quart's, but the console's pages: HTML for a browser, not an API (tests/http/
    test_console.py and tests/console check them)."""
    operations = set()
    for path, methods in routes(app):
        if path == CONSOLE or (path.startswith(CONSOLE + "/") and not path.startswith(API)):
            continue
        # Werkzeug's <converter:name> / <name> become OpenAPI's {name}.
        template = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", path)
        for method in methods - IMPLICIT_METHODS:
            operations.add((template, method.lower()))
    return operations


CONSOLE = "/admin"
API = "/admin/api/"


def spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_spec_operations_equal_app_routes(settings: Settings, spec: dict[str, Any]) -> None:
    """Every app route is described, and every described operation is an app route."""
    served = app_routes(create_app(settings))
    assert ("/oauth/token", "post") in served
    described = spec_operations(spec)
    assert not served - described, f"routes missing from openapi.yaml: {served - described}"
    assert not described - served, f"openapi.yaml describes no such route: {described - served}"


def test_checker_refuses_what_the_spec_does_not_allow(checker: SpecChecker) -> None:
    """The response checker is not vacuous: bodies, headers and statuses off-spec fail."""
    good = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    token = b'{"access_token":"a.b.c","token_type":"Bearer","expires_in":60}'
    checker.check_response("/oauth/token", "POST", 200, good, "application/json", token)
    cases: list[tuple[int, dict[str, str], str, bytes]] = [
        (200, good, "application/json", b'{"token_type":"Bearer","expires_in":60}'),
        (200, good, "application/json", token.replace(b"Bearer", b"bearer")),
        (200, {"Pragma": "no-cache"}, "application/json", token),
        (200, good, "text/plain", token),
        (418, good, "application/json", token),
        (400, good, "application/json", b'{"error":"invalid_client"}'),
        (400, good, "application/json", b'{"error":"invalid_request","extra":1}'),
        (401, good, "application/json", b'{"error":"invalid_client"}'),
    ]
    for status, headers, media_type, body in cases:
        with pytest.raises(Mismatch):
            checker.check_response("/oauth/token", "POST", status, headers, media_type, body)
    with pytest.raises(Mismatch):
        checker.check_response("/nowhere", "GET", 200, {}, "application/json", b"{}")


# -- responses of the running app ------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_token_success_matches_spec(
    checker: SpecChecker, client: QuartClient, register: Register, method: str
) -> None:
    """A token response, with either authentication method, matches the 200 schema."""
    secret = await register("svc", scopes=("read", "write"), audiences=("https://api.test",))
    form = {"grant_type": "client_credentials", "scope": "read", "audience": "https://api.test"}
    kwargs: dict[str, Any] = {}
    if method == "client_secret_basic":
        kwargs["auth"] = ("svc", secret)
    else:
        form |= {"client_id": "svc", "client_secret": secret}
    checker.check_request("/oauth/token", "POST", FORM, form)
    status, body = await call(checker, client, "POST", "/oauth/token", form=form, **kwargs)
    assert status == 200
    assert body["scope"] == "read"


def _form(**params: str) -> dict[str, Any]:
    return {"form": {"grant_type": "client_credentials", **params}}


#: (case, request for a client "svc" with scope "read" and this secret, status, error)
TOKEN_ERRORS: list[tuple[str, Callable[[str], dict[str, Any]], int, str]] = [
    (
        "no grant_type",
        lambda s: {"form": {"scope": "read"}, "auth": ("svc", s)},
        400,
        "invalid_request",
    ),
    (
        "other grant",
        lambda s: {**_form(grant_type="password"), "auth": ("svc", s)},
        400,
        "unsupported_grant_type",
    ),
    (
        "JSON body",
        lambda s: {"json": {"grant_type": "client_credentials"}, "auth": ("svc", s)},
        400,
        "invalid_request",
    ),
    (
        "scope not allowed",
        lambda s: {**_form(scope="admin"), "auth": ("svc", s)},
        400,
        "invalid_scope",
    ),
    (
        "audience not allowed",
        lambda s: {**_form(audience="https://other"), "auth": ("svc", s)},
        400,
        "invalid_target",
    ),
    (
        "two auth methods",
        lambda s: {**_form(client_secret=s), "auth": ("svc", s)},
        400,
        "invalid_request",
    ),
    ("wrong secret", lambda s: {**_form(), "auth": ("svc", "wrong")}, 401, "invalid_client"),
    ("unknown client", lambda s: {**_form(), "auth": ("nobody", s)}, 401, "invalid_client"),
    ("no credentials", lambda s: _form(), 401, "invalid_client"),
    (
        "body over 64 KiB",
        lambda s: {
            "data": b"scope=" + b"a" * 70_000,
            "headers": {"Content-Type": FORM},
            "auth": ("svc", s),
        },
        413,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("make_request", "status", "error"),
    [case[1:] for case in TOKEN_ERRORS],
    ids=[case[0] for case in TOKEN_ERRORS],
)
async def test_token_errors_match_spec(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    make_request: Callable[[str], dict[str, Any]],
    status: int,
    error: str,
) -> None:
    """Each token error has the status, headers and error object the spec declares."""
    secret = await register("svc", scopes=("read",))
    got_status, body = await call(checker, client, "POST", "/oauth/token", **make_request(secret))
    assert (got_status, body["error"]) == (status, error)


async def test_jwks_matches_spec(checker: SpecChecker, client: QuartClient) -> None:
    """The JWK Set is served as application/jwk-set+json and matches the JWKSet schema."""
    status, body = await call(checker, client, "GET", "/.well-known/jwks.json")
    assert status == 200
    assert len(body["keys"]) >= 1


async def test_a_key_set_of_every_type_matches_spec(
    checker: SpecChecker, client: QuartClient, dealer: Dealer, settings: Settings
) -> None:
    """RSA, EC and OKP keys side by side: the JWK Set matches its per-type schemas, and
    the metadata's access_token_signing_alg_values_supported the SigningAlgorithm enum."""
    for alg in ("PS256", "ES256", "ES384", "EdDSA"):
        generate_key(settings.keys_dir, alg=alg)
    assert await dealer.refresh_keys()
    status, body = await call(checker, client, "GET", "/.well-known/jwks.json")
    assert status == 200
    assert sorted(key["kty"] for key in body["keys"]) == ["EC", "EC", "OKP", "RSA", "RSA"]
    status, metadata = await call(checker, client, "GET", METADATA)
    assert status == 200
    assert metadata["access_token_signing_alg_values_supported"] == [
        "ES256",
        "ES384",
        "EdDSA",
        "PS256",
        "RS512",
    ]


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_verify_success_matches_spec(
    checker: SpecChecker, client: QuartClient, register: Register, encoding: str
) -> None:
    """/verify_token answers a valid token, form or JSON, with claims matching the spec."""
    token = await get_token(client, "svc", await register("svc", scopes=("read",)))
    payload = {"access_token": token, "audience": ISSUER}
    media_type = FORM if encoding == "form" else "application/json"
    checker.check_request("/verify_token", "POST", media_type, payload)
    status, claims = await call(checker, client, "POST", "/verify_token", **{encoding: payload})
    assert status == 200
    assert claims["client_id"] == "svc" and claims["scope"] == "read"


def _tampered(token: str) -> str:
    """The token with the last characters of its signature changed."""
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


#: (case, request for a valid token of client "svc", error)
VERIFY_ERRORS: list[tuple[str, Callable[[str], dict[str, Any]], str]] = [
    ("garbage token", lambda t: {"form": {"access_token": "not-a-jwt"}}, "invalid_token"),
    ("bad signature", lambda t: {"json": {"access_token": _tampered(t)}}, "invalid_token"),
    (
        "wrong audience",
        lambda t: {"form": {"access_token": t, "audience": "https://x"}},
        "invalid_token",
    ),
    ("no access_token", lambda t: {"form": {"audience": ISSUER}}, "invalid_request"),
    ("JSON array", lambda t: {"json": [t]}, "invalid_request"),
    (
        "text body",
        lambda t: {"data": t.encode(), "headers": {"Content-Type": "text/plain"}},
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("make_request", "error"),
    [case[1:] for case in VERIFY_ERRORS],
    ids=[case[0] for case in VERIFY_ERRORS],
)
async def test_verify_failure_matches_spec(
    checker: SpecChecker,
    client: QuartClient,
    register: Register,
    make_request: Callable[[str], dict[str, Any]],
    error: str,
) -> None:
    """Every refusal of /verify_token is a 400 whose error object matches the spec."""
    token = await get_token(client, "svc", await register("svc"))
    status, body = await call(checker, client, "POST", "/verify_token", **make_request(token))
    assert (status, body["error"]) == (400, error)


async def test_introspection_and_revocation_match_spec(
    checker: SpecChecker, client: QuartClient, register: Register
) -> None:
    """Introspection (active, then inactive after revocation) and revocation match the spec."""
    secret = await register("svc", scopes=("read",))
    token = await get_token(client, "svc", secret)
    auth = ("svc", secret)
    checker.check_request("/oauth/introspect", "POST", FORM, {"token": token})
    status, body = await call(
        checker, client, "POST", "/oauth/introspect", form={"token": token}, auth=auth
    )
    assert (status, body["active"], body["client_id"]) == (200, True, "svc")

    status, body = await call(
        checker, client, "POST", "/oauth/revoke", form={"token": token}, auth=auth
    )
    assert (status, body) == (200, None)

    status, body = await call(
        checker, client, "POST", "/oauth/introspect", form={"token": token}, auth=auth
    )
    assert (status, body) == (200, {"active": False})

    status, body = await call(checker, client, "POST", "/oauth/introspect", form={}, auth=auth)
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = await call(
        checker, client, "POST", "/oauth/revoke", form={"token": token}, auth=("svc", "wrong")
    )
    assert (status, body["error"]) == (401, "invalid_client")

    # Another client's valid token: refused with invalid_grant, as the spec says.
    other = await register("other")
    foreign = await get_token(client, "svc", secret)
    status, body = await call(
        checker, client, "POST", "/oauth/revoke", form={"token": foreign}, auth=("other", other)
    )
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_rate_limited_answers_match_spec(settings: Settings, checker: SpecChecker) -> None:
    """A 429 from each limited route (failed authentications at the client endpoints,
    requests per address at /verify_token) is described by the spec."""
    limited = dataclasses.replace(
        settings, auth_failure_limit=Rate(1, 60), verify_rate_limit=Rate(1, 60)
    )
    async with running(limited) as client:
        for path, form in (
            ("/oauth/token", {"grant_type": "client_credentials"}),
            ("/oauth/introspect", {"token": "x"}),
            ("/oauth/revoke", {"token": "x"}),
        ):
            statuses = [
                (await call(checker, client, "POST", path, form=form, auth=("nobody", "x")))[0]
                for _ in range(2)
            ]
            # The failed-auth limit is per address too: after the first route's failure,
            # the others answer 429 from their first request.
            assert statuses[1] == 429 and statuses[0] in (401, 429), path
        statuses = [
            (await call(checker, client, "POST", "/verify_token", form={"access_token": "x"}))[0]
            for _ in range(2)
        ]
        assert statuses == [400, 429]


def test_spec_takes_empty_parameters_and_long_tokens(checker: SpecChecker) -> None:
    """What the server accepts, the spec allows: empty parameters (treated as omitted,
    RFC 6749 §3.1) and introspection tokens longer than any of ours (answered inactive)."""
    checker.check_request(
        "/oauth/token",
        "POST",
        FORM,
        {"grant_type": "client_credentials", "scope": "", "client_id": ""},
    )
    checker.check_request("/oauth/introspect", "POST", FORM, {"token": "a" * 20_000})


METADATA = "/.well-known/oauth-authorization-server"


@pytest.mark.parametrize(
    ("issuer", "path", "status"),
    [
        (ISSUER, METADATA, 200),
        (ISSUER, METADATA + "/tenant", 404),
        (ISSUER + "/tenant/eu", METADATA + "/tenant/eu", 200),
        (ISSUER + "/tenant/eu", METADATA + "/tenant", 404),
    ],
)
async def test_metadata_matches_spec(
    checker: SpecChecker, settings: Settings, issuer: str, path: str, status: int
) -> None:
    """The RFC 8414 document, at its locations, matches the spec; other suffixes are 404."""
    async with running(dataclasses.replace(settings, issuer=issuer)) as client:
        got_status, body = await call(checker, client, "GET", path)
    if status == 200:
        assert (got_status, body["issuer"]) == (200, issuer)
    else:
        assert (got_status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_match_spec(checker: SpecChecker, client: QuartClient, path: str) -> None:
    """The liveness and readiness probes answer 200 as the spec describes."""
    status, body = await call(checker, client, "GET", path)
    expected = {"status": "ok"}
    if path == "/readyz":
        expected["checks"] = {"store": "ok", "keys": "ok"}
    assert (status, body) == (200, expected)


#: A value for each path parameter of the spec, to request its paths with.
PATH_EXAMPLES = {"{issuer_path}": "tenant", "{client_id}": "svc"}


def _undescribed_methods(spec: dict[str, Any]) -> Iterator[tuple[str, str, set[str]]]:
    for template, item in spec["paths"].items():
        described = {m.upper() for m in item if m in HTTP_METHODS}
        path = template
        for parameter, value in PATH_EXAMPLES.items():
            path = path.replace(parameter, value)
        assert "{" not in path, f"give {template} an example value in PATH_EXAMPLES"
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            if method not in described:
                yield path, method, described


async def test_other_methods_are_405_as_the_spec_says(
    checker: SpecChecker, client: QuartClient, spec: dict[str, Any]
) -> None:
    """Every undescribed method on a described path is a 405 whose Allow lists the spec's."""
    for path, method, described in _undescribed_methods(spec):
        response = await client.open(path, method=method)
        assert response.status_code == 405, (method, path)
        # The 405 is declared on the path's own operation(s): check it against each.
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
        assert allowed - IMPLICIT_METHODS == described, (method, path)


class FailingStore(SQLStore):
    """A real SQLite store whose client and deny-list reads fail with ``failure``."""

    def __init__(self, url: str, failure: Exception) -> None:
        super().__init__(url)
        self.failure = failure

    async def get_client(self, client_id: str) -> Client | None:
        raise self.failure

    async def is_revoked(self, jti: str) -> bool:
        raise self.failure

    async def ping(self) -> None:
        raise self.failure


@pytest.fixture(name="failing_app")
async def _failing_app(
    settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Quart, str]]:
    """An app on a store that fails; also a token minted by it, to verify and introspect."""
    failure: Exception = request.param
    app = create_app(settings, store=FailingStore(settings.sqlalchemy_url, failure))
    async with app.test_app():
        dealer: Dealer = app.extensions["tokendealer"]
        client = Client(client_id="svc", secret_digest="x")
        token = (await dealer.issue(client, (), ISSUER)).access_token
        yield app, token


@pytest.mark.parametrize(
    ("failing_app", "status", "error"),
    [
        (StoreUnavailable("database unavailable: test"), 503, "temporarily_unavailable"),
        (RuntimeError("boom"), 500, "server_error"),
    ],
    indirect=["failing_app"],
    ids=["store unavailable", "unexpected error"],
)
async def test_store_failures_match_spec(
    checker: SpecChecker, failing_app: tuple[Quart, str], status: int, error: str
) -> None:
    """A store outage is a 503 with Retry-After, an unexpected error a 500 with a request id
    (and one log entry each, naming the error; an outage is logged by the store, once)."""
    app, token = failing_app
    client = app.test_client()
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/oauth/token", {"form": {"grant_type": "client_credentials"}, "auth": ("svc", "x")}),
        ("/verify_token", {"form": {"access_token": token}}),
        ("/oauth/introspect", {"form": {"token": token}, "auth": ("svc", "x")}),
    ]
    # Captured, not rendered: the console renderer's traceback takes half a second each.
    with structlog.testing.capture_logs() as logs:
        for path, kwargs in calls:
            got_status, body = await call(checker, client, "POST", path, **kwargs)
            assert (got_status, body["error"]) == (status, error), path
        got_status, body = await call(checker, client, "GET", "/readyz")
    if status == 503:  # readiness names the failed check
        assert (got_status, body["checks"]) == (503, {"store": "unavailable", "keys": "ok"})
    else:
        assert (got_status, body["error"]) == (status, error)
    errors = [entry for entry in logs if entry["event"] == "unhandled_error"]
    expected = 0 if status == 503 else len(calls) + 1
    assert [entry["error_type"] for entry in errors] == ["RuntimeError"] * expected
