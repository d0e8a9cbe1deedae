"""The web console (``/admin/``) through the test client: sessions, CSRF, the security
headers, and each page's changes made through the admin service and audited as the
signed-in administrator. The browser drives it end to end in tests/console."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from quart import Quart

from tests.support.apps import fresh_address, running
from tests.support.console import PASSWORD, Console, add_admin, cheap_passwords
from tests.support.environment import ISSUER, QuartClient
from tests.support.keyserver import public_jwk
from tests.support.tokens import basic, get_token, request_token, unverified
from tokendealer.admin import accounts
from tokendealer.http.console import SECURITY_HEADERS
from tokendealer.http.console.session import COOKIE
from tokendealer.http.limits import KEY_GENERATION_LIMIT
from tokendealer.keys.secret import FILE as SECRET_FILE
from tokendealer.library.jwk import thumbprint_kid
from tokendealer.protocol.assertions import ASSERTION_TYPE
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Rate, Settings
from tokendealer.store import StoreUnavailable


@pytest.fixture(autouse=True)
def _cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap_passwords(monkeypatch)


@pytest.fixture(name="console")
async def _console(app: Quart) -> Console:
    await add_admin(app)
    console = Console(app)
    assert (await console.sign_in()).status == 303
    return console


async def _events(dealer: Dealer, **filters: Any) -> list[Any]:
    return list(await dealer.store.audit_events(**filters))


# -- sessions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/clients", "/admin/clients/new", "/admin/keys", "/admin/audit"]
)
async def test_pages_without_a_session_redirect_to_sign_in(app: Quart, path: str) -> None:
    page = await Console(app).get(path)
    assert page.status == 303
    assert page.location == "/admin/login"


async def test_the_console_root_without_its_slash_never_redirects_to_the_host_sent(
    console: Console,
) -> None:
    """``/admin`` leads to ``/admin/`` by a relative reference, never by an absolute URL
    built from the request's Host header (which the client chooses): signed out (to the
    sign-in page) and signed in."""
    signed_out = await Console(console.app).get("/admin", headers={"Host": "evil.example"})
    assert signed_out.status == 303 and signed_out.location == "/admin/login"
    page = await console.get("/admin", headers={"Host": "evil.example"})
    assert page.status == 308 and page.location == "admin/", page.location
    assert "evil.example" not in page.text
    assert (await console.get("/admin/")).status == 200


async def test_a_post_without_a_session_changes_nothing(app: Quart, dealer: Dealer) -> None:
    page = await Console(app).post("/admin/clients", client_id="sneaky")
    assert page.status == 303 and page.location == "/admin/login"
    assert await dealer.store.get_client("sneaky") is None


async def test_sign_in_sets_a_strict_httponly_secure_cookie(app: Quart, dealer: Dealer) -> None:
    await add_admin(app)
    page = await Console(app, peer="192.0.2.7").sign_in()
    assert page.status == 303 and page.location == "/admin/"
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith(COOKIE + "=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/admin"):
        assert attribute in cookie
    # A browser session cookie: the idle timeout is in the signed value, not in Max-Age.
    assert "Max-Age" not in cookie and "Expires" not in cookie
    (event,) = await _events(dealer, action="admin.sign_in")
    assert (event.actor, event.target) == ("admin:alice", "admin:alice")
    assert event.details == {"address": "192.0.2.7"}


async def test_the_cookie_is_not_secure_for_an_http_issuer(settings: Settings) -> None:
    http = dataclasses.replace(settings, issuer="http://dealer.test")
    app_settings = http
    async with running(app_settings) as client:
        await add_admin(client.app)
        response = await client.post(
            "/admin/login", form={"username": "alice", "password": PASSWORD}
        )
        assert response.status_code == 303
        assert "Secure" not in response.headers["Set-Cookie"]


async def test_unknown_name_and_wrong_password_get_one_answer(app: Quart, dealer: Dealer) -> None:
    await add_admin(app)
    wrong = await Console(app).sign_in("alice", "not the password at all")
    unknown = await Console(app).sign_in("mallory", PASSWORD)
    assert wrong.status == unknown.status == 401
    assert (
        "Unknown name or wrong password." in wrong and "Unknown name or wrong password." in unknown
    )
    assert "Set-Cookie" not in wrong.headers
    assert PASSWORD not in unknown.text  # the password typed is not echoed
    failures = await _events(dealer, action="admin.sign_in_failed")
    assert {event.target for event in failures} == {"admin:alice", "admin:mallory"}
    assert all(event.actor == "anonymous" for event in failures)


async def test_sign_in_is_limited_per_address_and_per_name(settings: Settings) -> None:
    limited = dataclasses.replace(settings, sign_in_limit=Rate(3, 300))
    async with running(limited) as client:
        app = client.app
        await add_admin(app)
        attacker = Console(app, peer=fresh_address())
        for _ in range(3):
            assert (await attacker.sign_in("alice", "wrong password, again")).status == 401
        locked = await attacker.sign_in("alice", PASSWORD)  # even the right password
        assert locked.status == 429
        assert int(locked.headers["Retry-After"]) > 0
        assert "<html" in locked.text
        assert f"try again in {locked.headers['Retry-After']} seconds" in locked
        # Per name: from another address, the name is still locked out...
        assert (await Console(app, peer=fresh_address()).sign_in()).status == 429
        # ...and per address: another name from the attacker's address too.
        await add_admin(app, "bob")
        assert (await attacker.sign_in("bob", PASSWORD)).status == 429
        # Someone else, elsewhere, signs in.
        assert (await Console(app, peer=fresh_address()).sign_in("bob")).status == 303


async def test_a_session_ends_after_the_idle_timeout(app: Quart, settings: Settings) -> None:
    await add_admin(app)
    console = Console(app)
    await console.sign_in()
    value = console.cookie

    auth = app.extensions["QUART_AUTH"][0]
    auth_id = auth.load_token(value, app)
    assert auth_id is not None and auth_id.startswith("alice ")

    class Then(auth.serializer_class):  # type: ignore[name-defined, misc]
        """quart-auth's serializer, signing as if ``age`` seconds ago."""

        age = 0

        def make_signer(self, salt: Any = None) -> Any:
            signer = super().make_signer(salt)
            signer.get_timestamp = lambda: int(time.time()) - self.age
            return signer

    ttl = settings.admin_session_ttl
    for age, status in ((ttl - 5, 200), (ttl + 1, 303)):
        Then.age = age
        old = Then(app.secret_key, auth.salt).dumps(auth_id)
        response = await app.test_client().get(
            "/admin/", scheme="https", headers={"Cookie": f"{COOKIE}={old}"}
        )
        assert response.status_code == status
    # A live session is renewed by each request: a fresh signature restarts the clock.
    response = await console.client.get("/admin/", scheme="https")
    assert COOKIE + "=" in response.headers["Set-Cookie"]


async def test_sign_out_ends_the_session_and_every_copy_of_it(console: Console) -> None:
    cookie = console.cookie
    page = await console.post("/admin/logout")
    assert page.status == 303 and page.location == "/admin/login?notice=signed-out"
    assert (
        "Max-Age=0" in page.headers["Set-Cookie"]
        or "Expires=Thu, 01 Jan 1970" in page.headers["Set-Cookie"]
    )
    replay = await console.app.test_client().get(
        "/admin/", scheme="https", headers={"Cookie": f"{COOKIE}={cookie}"}
    )
    assert replay.status_code == 303


async def test_a_new_password_or_a_removed_account_ends_its_sessions(
    console: Console, dealer: Dealer
) -> None:
    assert (await console.get("/admin/")).status == 200
    await accounts.set_password(dealer.store, "alice", "another long password", "cli:test")
    assert (await console.get("/admin/")).status == 303
    await console.sign_in("alice", "another long password")
    assert (await console.get("/admin/")).status == 200
    await accounts.remove(dealer.store, "alice", "cli:test")
    assert (await console.get("/admin/")).status == 303


async def test_the_session_secret_is_generated_private_and_shared(
    settings: Settings, app: Quart
) -> None:
    path = settings.keys_dir / SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert app.secret_key == path.read_text().strip()
    # Another worker on the same keys directory signs with the same secret.
    async with running(settings) as other:
        assert other.app.secret_key == app.secret_key
    # A configured secret wins over the file.
    configured = dataclasses.replace(settings, session_secret="s" * 40)
    async with running(configured) as third:
        assert third.app.secret_key == "s" * 40


# -- CSRF and headers ----------------------------------------------------------------------


async def test_a_form_without_the_csrf_token_is_refused_and_changes_nothing(
    console: Console, dealer: Dealer
) -> None:
    missing = await console.post("/admin/clients", csrf=False, client_id="svc")
    forged = await console.post("/admin/clients", csrf_token="0" * 64, client_id="svc")
    assert missing.status == forged.status == 400
    assert "not from your current session" in missing
    assert await dealer.store.get_client("svc") is None
    # The token of another session is no good in this one.
    await add_admin(console.app, "bob")
    other = Console(console.app)
    await other.sign_in("bob")
    stolen = await console.post("/admin/clients", csrf_token=other.csrf_token, client_id="svc")
    assert stolen.status == 400
    assert await dealer.store.get_client("svc") is None


@pytest.mark.parametrize(
    "path", ["/admin/login", "/admin/", "/admin/clients/nobody", "/admin/api/v1/clients"]
)
async def test_every_admin_answer_carries_the_security_headers(console: Console, path: str) -> None:
    response = await console.client.get(path, scheme="https")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]


async def test_pages_hold_no_inline_script_or_style(console: Console) -> None:
    for path in ("/admin/", "/admin/clients", "/admin/clients/new", "/admin/keys", "/admin/audit"):
        page = await console.get(path)
        assert page.status == 200
        assert (
            "<script>" not in page.text and "<style" not in page.text and " style=" not in page.text
        )
        assert " on" + "click=" not in page.text


# -- clients -------------------------------------------------------------------------------


async def test_register_shows_the_secret_once_and_it_gets_tokens(
    console: Console, client: QuartClient, dealer: Dealer
) -> None:
    page = await console.post(
        "/admin/clients",
        client_id="billing",
        scopes="invoices:read, invoices:write",
        audiences="https://api.test",
        ttl="600",
        description="Billing service",
    )
    assert page.status == 200
    secret = page.secret
    assert page.headers["Cache-Control"] == "no-store"
    token = await get_token(client, "billing", secret, scope="invoices:read")
    _, claims = unverified(token)
    assert claims["aud"] == "https://api.test" and claims["exp"] - claims["iat"] == 600
    shown = await console.get("/admin/clients/billing")
    assert secret not in shown.text and "Billing service" in shown
    listing = await console.get("/admin/clients?q=INVOICES")
    assert "billing" in listing and "Billing service" in listing
    assert "billing" not in (await console.get("/admin/clients?q=nomatch")).text.split("<tbody>")[1]
    (event,) = await _events(dealer, action="client.create")
    assert (event.actor, event.target) == ("admin:alice", "client:billing")
    assert secret not in str(event.details)


async def test_a_bad_field_is_shown_next_to_it_with_what_was_typed(
    console: Console, dealer: Dealer
) -> None:
    page = await console.post("/admin/clients", client_id="svc", ttl="soon", scopes="a b")
    assert page.status == 400
    assert page.field_error("ttl") == "The token lifetime must be a whole number"
    assert 'value="soon"' in page.text and 'value="a b"' in page.text
    duplicate = await console.post("/admin/clients", client_id="svc")
    assert duplicate.status == 200
    again = await console.post("/admin/clients", client_id="svc")
    assert again.status == 409 and again.field_error("client_id") == "client 'svc' already exists"
    bad_id = await console.post("/admin/clients", client_id="<script>")
    assert bad_id.status == 400 and "<script>" not in bad_id.text  # escaped, never raw
    assert [c.client_id for c in await dealer.store.list_clients()] == ["svc"]


async def test_edit_changes_the_next_token_and_is_audited(
    console: Console, client: QuartClient, dealer: Dealer
) -> None:
    secret = (await console.post("/admin/clients", client_id="svc", scopes="read")).secret
    before = await get_token(client, "svc", secret)
    page = await console.post(
        "/admin/clients/svc", scopes="read write", audiences="", ttl="", description="edited"
    )
    assert page.status == 303 and page.location == "/admin/clients/svc?notice=updated"
    assert "The client was updated." in await console.get(page.location)
    after = await get_token(client, "svc", secret)
    assert unverified(before)[1]["scope"] == "read"
    assert unverified(after)[1]["scope"] == "read write"
    (event,) = await _events(dealer, action="client.update")
    assert event.actor == "admin:alice"
    assert event.details["changed"]["scopes"] == {"from": ["read"], "to": ["read", "write"]}
    same = await console.post(
        "/admin/clients/svc", scopes="read write", audiences="", ttl="", description="edited"
    )
    assert same.location == "/admin/clients/svc?notice=unchanged"


async def test_a_clients_own_rate_limit_is_set_edited_and_shown_with_the_one_in_force(
    console: Console, client: QuartClient, dealer: Dealer
) -> None:
    """Registered with 2/minute (its third token request 429), the client's page shows
    its limit, its own; in monitor mode, that the service's is the one enforced; emptied,
    the service default. A bad value is shown next to its field, with what was typed, and
    changes nothing; each change is audited as the administrator."""
    default = "1200/minute"
    new = await console.get("/admin/clients/new")
    assert 'name="rate_limit"' in new.text and 'name="rate_limit_mode"' in new.text
    assert f"empty: the service default ({default})" in new
    registered = await console.post("/admin/clients", client_id="svc", rate_limit="2/minute")
    assert registered.status == 200
    statuses = [(await request_token(client, "svc", registered.secret)).status_code for _ in "abc"]
    assert statuses == [200, 200, 429]
    page = await console.get("/admin/clients/svc")
    assert "2/minute (its own, enforced)" in page and 'value="2/minute"' in page.text

    edited = await console.post(
        "/admin/clients/svc", rate_limit="3/minute", rate_limit_mode="monitor"
    )
    assert edited.location == "/admin/clients/svc?notice=updated"
    page = await console.get("/admin/clients/svc")
    assert f"{default} (the service default); its own 3/minute is monitored" in page

    bad = await console.post(
        "/admin/clients/svc", rate_limit="3 a minute", rate_limit_mode="monitor"
    )
    assert bad.status == 400 and 'value="3 a minute"' in bad.text
    assert "a rate limit is COUNT/UNIT" in (bad.field_error("rate_limit") or "")
    wrong_mode = await console.post("/admin/clients/svc", rate_limit_mode="loud")
    assert wrong_mode.status == 400 and wrong_mode.field_error("rate_limit_mode")
    bad_new = await console.post("/admin/clients", client_id="other", rate_limit="many")
    assert bad_new.status == 400 and bad_new.field_error("rate_limit")
    assert await dealer.store.get_client("other") is None
    stored = await dealer.store.get_client("svc")
    assert stored is not None
    assert (stored.rate_limit, stored.rate_limit_mode) == (Rate(3, 60), "monitor")

    emptied = await console.post("/admin/clients/svc", rate_limit="", rate_limit_mode="enforce")
    assert emptied.location == "/admin/clients/svc?notice=updated"
    assert f"{default} (the service default)</dd>" in (await console.get("/admin/clients/svc")).text
    last, *_ = await _events(dealer, action="client.update")
    assert last.actor == "admin:alice"
    assert last.details["changed"]["rate_limit"] == {"from": "3/minute", "to": None}


async def test_a_clients_page_shows_its_early_token_requests(
    console: Console, dealer: Dealer
) -> None:
    await console.post("/admin/clients", client_id="wasteful")
    page = await console.get("/admin/clients/wasteful")
    assert '<dd id="early-token-requests">0</dd>' in page.text
    await dealer.store.add_early_token_requests({"wasteful": 12})
    page = await console.get("/admin/clients/wasteful")
    assert '<dd id="early-token-requests">12 <small>' in page.text
    assert "more than half its lifetime left" in page


async def test_rotate_disable_enable_and_remove(
    console: Console, client: QuartClient, dealer: Dealer
) -> None:
    old = (await console.post("/admin/clients", client_id="svc")).secret
    rotated = await console.post("/admin/clients/svc/rotate-secret", grace="600")
    new = rotated.secret
    assert new != old and "previous secret keeps working until" in rotated
    await get_token(client, "svc", new)
    await get_token(client, "svc", old)  # within the grace period

    page = await console.post("/admin/clients/svc/disable", revoke_tokens="on")
    assert page.location == "/admin/clients/svc?notice=disabled-revoked"
    assert (await request_token(client, "svc", new)).status_code == 401
    assert "disabled" in await console.get("/admin/clients/svc")
    await console.post("/admin/clients/svc/enable")
    await get_token(client, "svc", new)

    confirm = await console.get("/admin/clients/svc/remove")
    assert "Type svc to confirm" in confirm
    wrong = await console.post("/admin/clients/svc/remove", confirm="sv")
    assert wrong.status == 400 and wrong.field_error("confirm")
    assert await dealer.store.get_client("svc") is not None
    removed = await console.post("/admin/clients/svc/remove", confirm="svc")
    assert removed.location == "/admin/clients?notice=removed"
    assert await dealer.store.get_client("svc") is None
    actions = [event.action for event in await _events(dealer, actor="admin:alice")]
    assert actions[:5] == [
        "client.remove",
        "client.enable",
        "client.disable",
        "client.rotate_secret",
        "client.create",
    ]


#: A private_key_jwt client's key, and the one that replaces it.
KEY = ec.generate_private_key(ec.SECP256R1())
NEW_KEY = ec.generate_private_key(ec.SECP256R1())


def _pem(key: Any, private: bool = False) -> str:
    if private:
        encoded = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        encoded = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return str(encoded.decode())


async def _signed_token(client: QuartClient, client_id: str, key: Any, kid: str) -> int:
    """The status of a token request authenticated by an ES256 assertion of ``key``."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now, "exp": now + 60}
    claims["jti"] = secrets.token_urlsafe(12)
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid}),
    }
    response = await client.post("/oauth/token", form=form)
    return response.status_code


async def test_a_private_key_jwt_client_registered_lands_on_its_page_without_a_secret(
    console: Console, client: QuartClient, dealer: Dealer
) -> None:
    """Registered with its public keys, the client has no secret: the form redirects to
    its page, which shows its method and kids and offers no secret rotation; its key gets
    tokens, no secret does."""
    page = await console.post(
        "/admin/clients",
        client_id="signer",
        scopes="jobs",
        auth_method="private_key_jwt",
        jwks_uri="",
        jwks=json.dumps({"keys": [public_jwk(KEY, "k1")]}, indent=2),
    )
    assert page.status == 303
    assert page.location == "/admin/clients/signer?notice=registered-keyed"
    shown = await console.get(page.location)
    assert shown.status == 200 and "It has no secret" in shown
    assert 'id="client-secret"' not in shown.text and "Rotate the secret" not in shown
    assert '<dd id="auth-method">Private key JWT</dd>' in shown.text
    assert '<dd id="kids">k1</dd>' in shown.text and "Replace the keys" in shown
    assert await _signed_token(client, "signer", KEY, "k1") == 200
    assert await _signed_token(client, "signer", NEW_KEY, "k1") == 401
    refused = await client.post(
        "/oauth/token", form={"grant_type": "client_credentials"}, headers=basic("signer", "")
    )
    assert refused.status_code == 401
    (event,) = await _events(dealer, action="client.create")
    assert event.actor == "admin:alice" and event.details["auth_method"] == "private_key_jwt"


async def test_keys_may_be_a_pem_public_key_or_a_url(console: Console, client: QuartClient) -> None:
    page = await console.post(
        "/admin/clients", client_id="pem", auth_method="private_key_jwt", jwks=_pem(KEY)
    )
    assert page.status == 303
    kid = thumbprint_kid(public_jwk(KEY, "-"))
    assert f'<dd id="kids">{kid}</dd>' in (await console.get(page.location)).text
    assert await _signed_token(client, "pem", KEY, kid) == 200
    url = "https://fetcher.test/jwks.json"
    page = await console.post(
        "/admin/clients", client_id="fetcher", auth_method="private_key_jwt", jwks_uri=url
    )
    assert page.status == 303
    shown = await console.get(page.location)
    assert f'<dd id="jwks-uri">{url}</dd>' in shown.text and 'id="kids"' not in shown.text
    secret = await console.post("/admin/clients", client_id="svc", auth_method="client_secret")
    assert secret.status == 200 and secret.secret
    shown = await console.get("/admin/clients/svc")
    assert '<dd id="auth-method">Client secret</dd>' in shown.text
    assert "Rotate the secret" in shown and "Replace the keys" not in shown


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"auth_method": "private_key_jwt"}, "jwks", "a jwks_uri or keys (one of them)"),
        (
            {"auth_method": "private_key_jwt", "jwks_uri": "https://k.test/", "jwks": "{}"},
            "jwks",
            "a jwks_uri or keys (one of them)",
        ),
        ({"auth_method": "private_key_jwt", "jwks": _pem(KEY, private=True)}, "jwks", "private"),
        ({"auth_method": "private_key_jwt", "jwks": "not a key"}, "jwks", "keys: not a JWK"),
        ({"auth_method": "private_key_jwt", "jwks_uri": "ftp://k.test/"}, "jwks_uri", "http(s)"),
        ({"auth_method": "client_secret", "jwks": _pem(KEY)}, "jwks", "private key JWT"),
        ({"jwks_uri": "https://k.test/"}, "jwks_uri", "private key JWT"),
        ({"auth_method": "federated"}, "auth_method", "Choose one of"),
    ],
    ids=[
        "no keys",
        "both",
        "a private key",
        "not a key",
        "not http",
        "keys for a secret client",
        "a URL for a secret client",
        "another method",
    ],
)
async def test_bad_keys_are_shown_next_to_their_field(
    console: Console, dealer: Dealer, form: dict[str, str], field: str, message: str
) -> None:
    page = await console.post("/admin/clients", client_id="signer", **form)
    assert page.status == 400
    assert message in (page.field_error(field) or ""), page.text
    typed = form.get("jwks_uri")
    if typed:
        assert f'value="{typed}"' in page.text  # what was typed is kept
    assert await dealer.store.list_clients() == []


async def test_replacing_the_keys_through_the_form_ends_the_old_ones(
    console: Console, client: QuartClient, dealer: Dealer
) -> None:
    await console.post(
        "/admin/clients",
        client_id="signer",
        auth_method="private_key_jwt",
        jwks=json.dumps(public_jwk(KEY, "k1")),
    )
    await console.get("/admin/clients/signer")
    bad = await console.post("/admin/clients/signer/keys", jwks_uri="keys.test/jwks", jwks="")
    assert bad.status == 400 and "http(s)" in (bad.field_error("jwks_uri") or "")
    assert 'value="keys.test/jwks"' in bad.text
    page = await console.post(
        "/admin/clients/signer/keys", jwks_uri="", jwks=json.dumps(public_jwk(NEW_KEY, "k2"))
    )
    assert page.status == 303
    assert page.location == "/admin/clients/signer?notice=keys-replaced"
    shown = await console.get(page.location)
    assert "keys were replaced" in shown and '<dd id="kids">k2</dd>' in shown.text
    assert await _signed_token(client, "signer", NEW_KEY, "k2") == 200
    assert await _signed_token(client, "signer", KEY, "k1") == 401
    same = await console.post(
        "/admin/clients/signer/keys", jwks=json.dumps({"keys": [public_jwk(NEW_KEY, "k2")]})
    )
    assert same.location == "/admin/clients/signer?notice=unchanged"
    (event,) = await _events(dealer, action="client.update")
    assert event.actor == "admin:alice" and list(event.details["changed"]) == ["keys"]

    # A secret client keeps its method: the refusal is at the top of its page.
    await console.post("/admin/clients", client_id="svc")
    refused = await console.post("/admin/clients/svc/keys", jwks=_pem(KEY))
    assert refused.status == 400 and "a client keeps the method" in refused
    assert '<p class="error" role="alert">' in refused.text
    stored = await dealer.store.get_client("svc")
    assert stored is not None and stored.jwks is None
    # ...and a private_key_jwt client has no secret to rotate.
    rotate = await console.post("/admin/clients/signer/rotate-secret", grace="0")
    assert rotate.status == 409 and 'id="client-secret"' not in rotate.text


async def test_an_unknown_client_is_a_404_page(console: Console) -> None:
    for path in ("/admin/clients/nobody", "/admin/clients/nobody/remove"):
        page = await console.get(path)
        assert page.status == 404
        assert "no client 'nobody'" in page and "<html" in page.text
    posted = await console.post("/admin/clients/nobody", scopes="x")
    assert posted.status == 404
    unrouted = await console.get("/admin/no/such/page")
    assert unrouted.status == 404 and "<html" in unrouted.text
    api = await console.client.get("/admin/api/v1/nothing", scheme="https")
    assert api.status_code == 404 and (await api.get_json())["error"] == "not_found"


# -- keys and the audit trail ----------------------------------------------------------------


async def test_keys_rotate_and_prune(console: Console, dealer: Dealer) -> None:
    page = await console.get("/admin/keys")
    assert page.text.count('<span class="badge active">') == 1
    refused = await console.post("/admin/keys/rotate", activate_after="soon")
    assert refused.status == 400 and refused.field_error("activate_after")
    done = await console.post("/admin/keys/rotate", activate_after="3600")
    assert done.location == "/admin/keys?notice=rotated"
    after = await console.get(done.location)
    assert '<span class="badge next">' in after.text and "A new signing key was added." in after
    pruned = await console.post("/admin/keys/prune")
    assert pruned.location == "/admin/keys?notice=nothing-pruned"
    (event,) = await _events(dealer, action="key.rotate")
    assert event.actor == "admin:alice" and event.details["activate_after"] == 3600


async def test_keys_rotate_to_another_algorithm(console: Console, dealer: Dealer) -> None:
    """The rotate form offers every algorithm, RS512 chosen; an unknown one is refused
    next to its field, and a chosen one makes the next key of that type."""
    page = await console.get("/admin/keys")
    assert '<option value="RS512" selected>' in page.text
    for alg in ("RS256", "PS512", "ES256", "ES384", "EdDSA"):
        assert f'<option value="{alg}"' in page.text
    refused = await console.post("/admin/keys/rotate", activate_after="3600", alg="HS256")
    assert refused.status == 400 and "alg is one of" in (refused.field_error("alg") or "")
    assert '<option value="RS512" selected>' not in refused.text  # what was chosen is kept
    done = await console.post("/admin/keys/rotate", activate_after="3600", alg="ES384")
    assert done.location == "/admin/keys?notice=rotated"
    after = await console.get(done.location)
    assert "<td>ES384</td><td>384</td>" in after.text
    (pending,) = [key for key in dealer.keyset.keys if dealer.keyset.state(key) == "next"]
    assert pending.alg == "ES384"


async def test_key_rotations_are_limited_in_the_console_too(console: Console) -> None:
    for _ in range(KEY_GENERATION_LIMIT.count):
        assert (await console.post("/admin/keys/rotate", activate_after="x")).status == 400
    limited = await console.post("/admin/keys/rotate", activate_after="3600")
    assert limited.status == 429 and "Too many attempts: try again in" in limited
    assert limited.text.count('<span class="badge next">') == 0
    assert (await console.get("/admin/keys")).text.count('<span class="badge next">') == 0


async def test_the_audit_page_filters(console: Console) -> None:
    await console.post("/admin/clients", client_id="one")
    await console.post("/admin/clients", client_id="two")
    page = await console.get("/admin/audit?action=client.create&target=client:two")
    rows = page.text.split("<tbody>")[1]
    assert "client:two" in rows and "client:one" not in rows
    bad = await console.get("/admin/audit?since=yesterday")
    assert bad.status == 400 and "ISO 8601" in (bad.field_error("since") or "")
    assert "client.create" in await console.get("/admin/")  # the dashboard's recent changes


# -- the API with a console session ---------------------------------------------------------


async def test_the_api_takes_a_session_with_its_csrf_header(
    console: Console, dealer: Dealer
) -> None:
    without = await console.api("GET", "/clients")
    assert without.status_code == 403
    assert (await without.get_json())["error"] == "invalid_request"
    created = await console.api(
        "POST", "/clients", json={"client_id": "svc"}, headers={"X-CSRF-Token": console.csrf_token}
    )
    assert created.status_code == 201
    (event,) = await _events(dealer, action="client.create")
    assert event.actor == "admin:alice"
    # No session: the bearer challenge, as before.
    response = await Console(console.app).api("GET", "/clients")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_admin_off_means_no_console(settings: Settings) -> None:
    async with running(dataclasses.replace(settings, admin=False)) as client:
        for path in ("/admin/", "/admin/login", "/admin/static/console.css"):
            assert (await client.get(path)).status_code == 404
    assert ISSUER.startswith("https:")


async def test_an_outage_is_a_page_that_says_so(console: Console, dealer: Dealer) -> None:
    """A 503 page says the service is unavailable for a moment, not that the user tried
    too often, and keeps Retry-After."""

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("database unavailable: test")

    dealer.store.list_clients = down  # type: ignore[method-assign]
    page = await console.get("/admin/clients")
    assert page.status == 503 and int(page.headers["Retry-After"]) > 0
    assert f"unavailable for a moment: try again in {page.headers['Retry-After']} seconds" in page
    assert "Too many attempts" not in page


async def test_a_body_too_large_closes_the_connection_on_a_page_too(console: Console) -> None:
    """What the error mapping says about the connection holds for the console's pages."""
    big = "x" * (console.app.config["MAX_CONTENT_LENGTH"] + 1)
    page = await console.post("/admin/clients", client_id="svc", description=big)
    assert page.status == 413 and page.headers["Connection"] == "close"
