"""End to end: real ``tokendealer serve`` processes, real clients, the real CLI.

One uvicorn server with two workers serves the whole module (started on an empty
directory); a Hypercorn server joins it on the same store and keys for one test.
"""

from __future__ import annotations

import base64
import json
import socket
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from jwt import PyJWKClient

from tests.support.servers import ServerProcess, run_server, wait_until
from tests.support.tokens import (
    GRANT,
    TOKEN_PATH,
    basic,
    fetch_token,
    post_token,
    tamper,
    token_request_parts,
)
from tokendealer.settings import Settings

with warnings.catch_warnings():
    # Authlib warns at import that it falls back to httpx when httpx2 is not installed;
    # the fallback is the httpx-based client these tests mean to exercise.
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuth2Client

pytestmark = pytest.mark.e2e

AUDIENCE = "https://api.e2e.test"
OTHER_AUDIENCE = "https://reports.e2e.test"
#: Authlib (1.x) and httpx send Basic credentials without RFC 6749 App. B's form-encoding,
#: so this id has only characters that encoding leaves alone (the Node test covers ':').
CLIENT_ID = "svc.e2e@team-example"
#: How soon a running server must see a CLI change (the issue says "a second or two").
PROPAGATION_SECONDS = 2.0
#: How long each worker of the module's server caches a client record. Shorter than the
#: default, which the propagation test checks against PROPAGATION_SECONDS, so that the
#: test does not spend a second waiting out each of its six changes.
CLIENT_CACHE_TTL = 0.2


@pytest.fixture(name="server", scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("e2e")
    assert list(workdir.iterdir()) == []
    # The access log is on here so the "no secrets in the log" test sees request lines.
    # Many tests here fail authentication on purpose, all from 127.0.0.1: the failed-auth
    # limit (tests/http/test_ratelimit.py) is raised so that it does not answer them 429.
    env = {
        "TOKENDEALER_ACCESS_LOG": "true",
        "TOKENDEALER_AUTH_FAILURE_LIMIT": "10000/minute",
        "TOKENDEALER_CLIENT_CACHE_TTL": str(CLIENT_CACHE_TTL),
    }
    with run_server(workdir, workers=2, env=env) as server:
        yield server


@pytest.fixture(name="secret", scope="module")
def _secret(server: ServerProcess) -> str:
    """CLIENT_ID registered through the CLI with two scopes and two audiences."""
    return server.add_client(
        CLIENT_ID,
        "--scope",
        "read",
        "--scope",
        "write",
        "--audience",
        AUDIENCE,
        "--audience",
        OTHER_AUDIENCE,
    )


@pytest.fixture(name="http", scope="module")
def _http() -> Iterator[httpx.Client]:
    """One client; ``Connection: close`` so successive requests reach either worker."""
    with httpx.Client(timeout=10, headers={"Connection": "close"}) as http:
        yield http


def _verify_with_pyjwt(server: ServerProcess, token: str, audience: str) -> dict[str, object]:
    jwks = PyJWKClient(server.url + "/.well-known/jwks.json", cache_keys=False)
    signing_key = jwks.get_signing_key_from_jwt(token)
    claims: dict[str, object] = jwt.decode(
        token,
        signing_key,
        algorithms=["RS512"],
        audience=audience,
        issuer=server.env["TOKENDEALER_ISSUER"],
        options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]},
    )
    return claims


def test_fresh_directory_start(server: ServerProcess) -> None:
    """Serving from an empty directory creates the store and exactly one 0600 signing key."""
    workdir = server.log_path.parent
    assert (workdir / "td.db").is_file()
    pems = sorted((workdir / "keys").glob("*.pem"))
    assert len(pems) == 1
    assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600
    # Two workers started, yet the first key was created once, by the parent.
    assert server.log().count('"signing_key_created"') == 1
    listed = json.loads(server.cli("keys", "list", "--json").stdout)
    assert [key["kid"] for key in listed] == [pems[0].stem]
    jwks = httpx.get(server.url + "/.well-known/jwks.json").json()
    assert [key["kid"] for key in jwks["keys"]] == [pems[0].stem]
    assert (workdir / "td.db").read_bytes().startswith(b"SQLite format 3\x00")
    assert isinstance(json.loads(server.cli("clients", "list", "--json").stdout), list)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_client_gets_a_token_pyjwt_verifies(
    server: ServerProcess, secret: str, method: str
) -> None:
    """Authlib's httpx OAuth2Client gets a token by either auth method; PyJWT verifies it."""
    with OAuth2Client(CLIENT_ID, secret, token_endpoint_auth_method=method, scope="read") as oauth:
        token = oauth.fetch_token(server.url + "/oauth/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "read"
    assert 3590 <= token["expires_in"] <= 3600
    header = jwt.get_unverified_header(token["access_token"])
    assert header["alg"] == "RS512" and header["typ"] == "at+jwt"
    claims = _verify_with_pyjwt(server, token["access_token"], AUDIENCE)
    assert claims["sub"] == claims["client_id"] == CLIENT_ID
    assert claims["aud"] == AUDIENCE
    assert claims["scope"] == "read"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_async_authlib_client_gets_a_token(
    server: ServerProcess, secret: str, method: str
) -> None:
    """Authlib's AsyncOAuth2Client gets a token for a requested audience that PyJWT verifies."""
    async with AsyncOAuth2Client(CLIENT_ID, secret, token_endpoint_auth_method=method) as oauth:
        token = await oauth.fetch_token(
            server.url + "/oauth/token",
            grant_type="client_credentials",
            audience=OTHER_AUDIENCE,
        )
    claims = _verify_with_pyjwt(server, token["access_token"], OTHER_AUDIENCE)
    assert claims["aud"] == OTHER_AUDIENCE
    assert claims["scope"] == token["scope"] == "read write"
    with pytest.raises(jwt.InvalidAudienceError):
        _verify_with_pyjwt(server, token["access_token"], AUDIENCE)


def test_authlib_client_wrong_secret_is_rejected(server: ServerProcess, secret: str) -> None:
    """A wrong secret makes Authlib's fetch_token fail with the server's invalid_client."""
    from authlib.integrations.base_client import OAuthError

    with (
        OAuth2Client(CLIENT_ID, secret[:-2] + "xx") as oauth,
        pytest.raises(OAuthError) as raised,
    ):
        oauth.fetch_token(server.url + "/oauth/token", grant_type="client_credentials")
    assert raised.value.error == "invalid_client"


def test_verify_token_over_http(server: ServerProcess, secret: str, http: httpx.Client) -> None:
    """/verify_token on the real server accepts a dealer token and rejects a forged one."""
    token = server.token(CLIENT_ID, secret, http=http, scope="write")
    url = server.url + "/verify_token"
    valid = http.post(url, data={"access_token": token, "audience": AUDIENCE})
    assert valid.status_code == 200
    assert valid.json()["client_id"] == CLIENT_ID
    assert valid.json()["scope"] == "write"
    assert http.post(url, json={"access_token": token}).status_code == 200
    for form in (
        {"access_token": tamper(token, client_id="admin", sub="admin")},
        {"access_token": token, "audience": "https://elsewhere.test"},
        {"access_token": token + "x"},
    ):
        rejected = http.post(url, data=form)
        assert rejected.status_code == 400
        assert rejected.json()["error"] == "invalid_token"


def _settles(check: Callable[[], bool], streak: int = 6) -> None:
    """``check`` holds ``streak`` times in a row, from a moment within PROPAGATION_SECONDS.

    Only the start of the run counts against the deadline, so a slow machine answering
    the confirming requests slowly does not fail the test.
    """
    start = time.monotonic()
    while True:
        began = time.monotonic() - start
        if began > PROPAGATION_SECONDS:
            pytest.fail(f"the running server did not see the change within {began:.1f} s")
        if all(check() for _ in range(streak)):
            return
        time.sleep(0.02)


def test_cli_changes_reach_the_running_server(server: ServerProcess, http: httpx.Client) -> None:
    """Clients added, disabled, enabled, rotated and removed by the CLI take effect live."""
    # The server caches for less than the default; the default must meet the bound too.
    assert Settings().client_cache_ttl < PROPAGATION_SECONDS
    client_id = "live-changes"

    def answer(secret: str) -> int:
        return post_token(server.url, client_id, secret, http=http).status_code

    def status(secret: str) -> Callable[[int], bool]:
        return lambda expected: answer(secret) == expected

    # Unknown first, so a cached miss must not outlive the registration.
    assert answer("not-yet") == 401
    first = server.add_client(client_id)
    _settles(lambda: status(first)(200))

    server.cli("clients", "disable", client_id)
    _settles(lambda: status(first)(401))
    server.cli("clients", "enable", client_id)
    _settles(lambda: status(first)(200))

    rotated = json.loads(
        server.cli("clients", "rotate-secret", client_id, "--grace", "60", "--json").stdout
    )
    second = rotated["client_secret"]
    _settles(lambda: status(second)(200) and status(first)(200))

    rotated = json.loads(
        server.cli("clients", "rotate-secret", client_id, "--grace", "0", "--json").stdout
    )
    third = rotated["client_secret"]
    _settles(lambda: status(third)(200) and status(second)(401) and status(first)(401))

    server.cli("clients", "remove", client_id)
    _settles(lambda: status(third)(401))


def _raw_request(server: ServerProcess, head: bytes) -> int:
    """Send raw bytes (no body) and return the response status code."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        first_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(first_line.split()[1])


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


FORM = {"Content-Type": "application/x-www-form-urlencoded"}

#: (name, method, path, headers, body, acceptable statuses)
BAD_REQUESTS: list[tuple[str, str, str, dict[str, str], bytes, set[int]]] = [
    ("huge body", "POST", "/oauth/token", FORM, b"a=" + b"b" * (1 << 20), {413}),
    ("huge verify body", "POST", "/verify_token", FORM, b"a" * (1 << 20), {413}),
    ("GET token", "GET", "/oauth/token", {}, b"", {405}),
    ("GET verify", "GET", "/verify_token", {}, b"", {405}),
    ("Basic nothing", "POST", "/oauth/token", {**FORM, "Authorization": "Basic"}, b"", {400, 401}),
    (
        "Basic not base64",
        "POST",
        "/oauth/token",
        {**FORM, "Authorization": "Basic !!!*"},
        b"grant_type=client_credentials",
        {400, 401},
    ),
    (
        "Basic no colon",
        "POST",
        "/oauth/token",
        {**FORM, **_basic(b"nocolon")},
        b"grant_type=client_credentials",
        {400, 401},
    ),
    (
        "Basic not UTF-8",
        "POST",
        "/oauth/token",
        {**FORM, **_basic(b"\xff\xfe:\xc3\x28")},
        b"grant_type=client_credentials",
        {400, 401},
    ),
    (
        "Basic bad percent",
        "POST",
        "/oauth/token",
        {**FORM, **_basic(b"%FF:%")},
        b"grant_type=client_credentials",
        {400, 401},
    ),
    (
        "Basic very long",
        "POST",
        "/oauth/token",
        {**FORM, **_basic(b"a" * 5000 + b":" + b"b" * 5000)},
        b"grant_type=client_credentials",
        {400, 401},
    ),
    ("invalid UTF-8 body", "POST", "/oauth/token", FORM, b"grant_type=\xff\xfe", {400}),
    ("JSON body", "POST", "/oauth/token", {"Content-Type": "application/json"}, b"{}", {400}),
]


def assert_never_5xx(server: ServerProcess) -> None:
    """Every bad request gets its 4xx answer; the server then still issues tokens."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for name, method, path, headers, body, allowed in BAD_REQUESTS:
            response = http.request(method, path, headers=headers, content=body)
            assert response.status_code in allowed, (name, response.status_code, response.text)
            assert response.json()["error"] in (
                "invalid_request",
                "invalid_client",
                "unsupported_grant_type",
            ), name
    # A declared body far over the limit is refused without waiting for it.
    status = _raw_request(
        server,
        b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 1000000000000\r\nConnection: close\r\n\r\n",
    )
    assert status == 413
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_bad_requests_never_5xx(server: ServerProcess) -> None:
    """Huge bodies, malformed Basic headers and GETs are 4xx on the real uvicorn server."""
    assert_never_5xx(server)
    assert server.proc.poll() is None


def test_hypercorn_shares_store_and_keys(
    server: ServerProcess, secret: str, http: httpx.Client
) -> None:
    """A Hypercorn server on the same store and keys issues tokens PyJWT and uvicorn accept."""
    workdir = server.log_path.parent
    issuer = {"TOKENDEALER_ISSUER": server.env["TOKENDEALER_ISSUER"]}
    with run_server(workdir, server="hypercorn", env=issuer) as hyper:
        token = hyper.token(CLIENT_ID, secret, http=http)
        claims = _verify_with_pyjwt(hyper, token, AUDIENCE)
        assert claims["client_id"] == CLIENT_ID
        # Both servers publish the same key set and accept each other's tokens.
        assert (
            http.get(hyper.url + "/.well-known/jwks.json").json()
            == http.get(server.url + "/.well-known/jwks.json").json()
        )
        verified = http.post(server.url + "/verify_token", data={"access_token": token})
        assert verified.status_code == 200
        assert_never_5xx(hyper)
        assert hyper.proc.poll() is None
    # Only one first key, although two servers started on this directory.
    assert len(list((workdir / "keys").glob("*.pem"))) == 1


def test_no_secret_or_token_in_server_log(server: ServerProcess, secret: str) -> None:
    """After successful and failed requests of every kind, the log holds no secret or token."""
    fresh = server.add_client("log-check", "--scope", "read")
    logged_before = len(server.log())
    tokens = []
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for client_id, client_secret in ((CLIENT_ID, secret), ("log-check", fresh)):
            for method in ("basic", "post"):
                tokens.append(
                    fetch_token(server.url, client_id, client_secret, http=http, method=method)
                )
            # Failures carrying the secret: in the query, twice (body and header), with a
            # bad scope.
            assert http.post(
                TOKEN_PATH, params={"client_secret": client_secret}, data=GRANT
            ).status_code in (400, 401)
            in_body, _ = token_request_parts(client_id, client_secret, "post")
            twice = http.post(TOKEN_PATH, data=in_body, headers=basic(client_id, client_secret))
            assert twice.status_code in (400, 401)
            bad_scope = post_token(server.url, client_id, client_secret, http=http, scope="nope")
            assert bad_scope.status_code == 400
        for token in tokens:
            assert http.post("/verify_token", data={"access_token": token}).status_code == 200
            as_admin = tamper(token, client_id="admin", sub="admin")
            tampered = http.post("/verify_token", data={"access_token": as_admin})
            assert tampered.status_code == 400
            assert http.get("/healthz", params={"access_token": token}).status_code == 200

    def logged(path: str) -> int:
        return server.log()[logged_before:].count(f'"path":"{path}"')

    # A worker writes a request's line after answering it: wait for all of them. The log
    # is not empty: it did record these requests (path and status only).
    wait_until(
        lambda: logged(TOKEN_PATH) >= 10 and logged("/verify_token") >= 8,
        timeout=10,
        what="the access log lines of this test's requests",
    )
    assert (logged(TOKEN_PATH), logged("/verify_token")) == (10, 8)
    log = server.log()
    for value in (secret, fresh, *tokens):
        assert value not in log
        # Nor any recognisable part of it (a JWT's signature, a secret's tail).
        assert value[-20:] not in log
    # The store keeps digests only.
    stored = b"".join(p.read_bytes() for p in Path(server.log_path.parent).glob("td.db*"))
    for value in (secret, fresh):
        assert value.encode() not in stored
