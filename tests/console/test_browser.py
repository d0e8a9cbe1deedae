"""The web console in a real browser: headless Chromium, driven by Playwright, on a real
``tokendealer serve``, where an administrator made with the CLI signs in through the form.

One server and one browser serve the module. Each test has browser contexts of its own
(cookies, so sessions, of its own); most start signed in to one session opened once for
the module, the sign-in and sign-out tests open their own. The issuer is https, so the
session cookie is ``Secure``: Chromium keeps such a cookie from http://127.0.0.1, a secure
context. The lock-out test starts a second server on the same store with a low sign-in
limit, so that the attempts it fails lock nobody out of the first.

The server caches client records for a minute (``TOKENDEALER_CLIENT_CACHE_TTL``): what
"the next token has the new policy" checks is then the console's change reaching the
worker that made it, whatever the timing, not a cache that happened to expire.

Without Chromium or Playwright the tests skip, saying why; under CI (``CI=true``) they
fail instead, because CI installs both.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.cli import CLI
from tests.support.console import PASSWORD
from tests.support.environment import ISSUER, unavailable
from tests.support.servers import ServerProcess, run_server
from tests.support.tokens import VERIFY_PATH, post_token, unverified

try:
    from playwright.sync_api import Browser, BrowserContext, Page, Response, expect, sync_playwright
except ImportError as error:  # skipped (or failed, under CI) by the browser fixture
    PLAYWRIGHT_MISSING: ImportError | None = error
else:
    PLAYWRIGHT_MISSING = None

pytestmark = pytest.mark.e2e

T = TypeVar("T")

ADMIN = "alice"
COOKIE = "tokendealer_console"
#: How long a browser action or assertion may wait for the page.
TIMEOUT_MS = 5000

#: Reports every CSP violation of every page of a context to ``reportViolation`` (a
#: binding, so the reports survive navigation). Playwright adds it outside the page's CSP.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.lastReport = window.reportViolation(
    `${location.pathname}: ${event.violatedDirective} ${event.blockedURI}`
  );
});
"""


def _off_the_loop(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call`` in a thread of its own: Playwright's sync API keeps an event loop running
    in this one, where a CLI command, which runs a loop of its own, cannot."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call, *args, **kwargs).result()


def _cli(server: ServerProcess, *args: str) -> Any:
    """``tokendealer ARGS... --json`` with the server's environment: what it printed."""
    return _off_the_loop(server.cli, *args, "--json").json()


def _add_client(server: ServerProcess, client_id: str, *args: str) -> str:
    """CLIENT_ID registered with the CLI; its secret."""
    secret: str = _off_the_loop(server.add_client, client_id, *args)
    return secret


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Browser]:
    if PLAYWRIGHT_MISSING is not None:
        unavailable("Playwright", f"not installed: {PLAYWRIGHT_MISSING}")
    executable = shutil.which("chromium")
    if executable is None:
        unavailable("Chromium", "no chromium on PATH")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(name="server", scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The dealer, with the administrator ADMIN made by the CLI as an operator would."""
    workdir = tmp_path_factory.mktemp("console")
    env = {
        "TOKENDEALER_ISSUER": ISSUER,
        # Every test signs in once or more, all from 127.0.0.1.
        "TOKENDEALER_SIGN_IN_LIMIT": "1000/minute",
        "TOKENDEALER_CLIENT_CACHE_TTL": "60",
    }
    with run_server(workdir, env=env) as server:
        cli = CLI(server.env, cwd=workdir)
        _off_the_loop(cli.ok, "admins", "add", ADMIN, "--password-stdin", input=PASSWORD + "\n")
        yield server


@dataclass
class Console:
    """One browser context on a server: its page, and what the browser reported."""

    server: ServerProcess
    context: BrowserContext
    page: Page
    violations: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, server: ServerProcess, **options: Any) -> Console:
        """A new context (``options``: Playwright's), its CSP violations and script errors
        recorded."""
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        violations: list[str] = []
        context.expose_binding("reportViolation", lambda _source, text: violations.append(text))
        context.add_init_script(REPORT_VIOLATIONS)
        console = cls(server, context, context.new_page(), violations)
        console.page.on("pageerror", lambda error: console.page_errors.append(str(error)))
        return console

    def close(self) -> None:
        self.context.close()

    def goto(self, path: str) -> Response:
        response = self.page.goto(self.server.url + path)
        assert response is not None, path
        return response

    def click(self, name: str, within: str = "main") -> Response:
        """Click the button, or else the link, ``name`` in ``within``; the answer of the
        page it leads to (after redirects)."""
        area = self.page.locator(within)
        target = area.get_by_role("button", name=name, exact=True)
        if target.count() == 0:
            target = area.get_by_role("link", name=name, exact=True)
        with self.page.expect_navigation() as navigation:
            target.click()
        response: Response = navigation.value
        return response

    def sign_in(self, name: str = ADMIN, password: str = PASSWORD) -> Response:
        self.goto("/admin/login")
        self.page.fill("#username", name)
        self.page.fill("#password", password)
        return self.click("Sign in")

    def register(self, client_id: str, scopes: str, description: str = "", go: bool = True) -> str:
        """Register CLIENT_ID through the form (on it already unless ``go``); the secret
        the page shows."""
        if go:
            self.goto("/admin/clients/new")
        self.page.fill("#client_id", client_id)
        self.page.fill("#description", description)
        self.page.fill("#scopes", scopes)
        response = self.click("Register")
        assert response.status == 200, self.page.inner_text("main")
        assert f"Client {client_id} is registered." in self.notice()
        return self.secret()

    def open_client(self, client_id: str) -> None:
        self.goto(f"/admin/clients/{client_id}")
        assert self.heading() == client_id

    def secret(self) -> str:
        secret = self.page.locator("#client-secret").inner_text().strip()
        assert secret
        return secret

    def notice(self) -> str:
        return self.page.locator("main .notice").inner_text()

    def heading(self) -> str:
        return self.page.locator("main h1").inner_text()

    def state(self) -> str:
        return self.page.locator("#state").inner_text()

    def path(self) -> str:
        url = self.page.url
        assert url.startswith(self.server.url), url
        return url[len(self.server.url) :]

    def rows(self, table: str) -> list[list[str]]:
        """The cells of each body row of ``table``."""
        rows = self.page.locator(f"{table} tbody tr")
        return [
            [cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()]
            for i in range(rows.count())
        ]

    def session_cookies(self) -> list[Any]:
        return [cookie for cookie in self.context.cookies() if cookie["name"] == COOKIE]

    def assert_clean(self) -> None:
        """No page broke its CSP or raised a script error."""
        assert self.violations == []
        assert self.page_errors == []


@pytest.fixture(name="session_state", scope="module")
def _session_state(browser: Browser, server: ServerProcess) -> dict[str, Any]:
    """The cookies of one session, signed in through the form once for the module."""
    console = Console.open(browser, server)
    try:
        assert console.sign_in().status == 200
        state: dict[str, Any] = dict(console.context.storage_state())
        return state
    finally:
        console.close()


@pytest.fixture(name="fresh")
def _fresh(browser: Browser, server: ServerProcess) -> Iterator[Console]:
    """A context with no session."""
    console = Console.open(browser, server)
    try:
        yield console
    finally:
        console.close()


@pytest.fixture(name="console")
def _console(
    browser: Browser, server: ServerProcess, session_state: dict[str, Any]
) -> Iterator[Console]:
    """A context signed in as ADMIN."""
    console = Console.open(browser, server, storage_state=session_state)
    try:
        yield console
    finally:
        console.close()


@pytest.fixture(name="http", scope="module")
def _http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


@dataclass
class Tokens:
    """The server's token endpoint and /verify_token, from a service's point of view."""

    server: ServerProcess
    http: httpx.Client

    def status(self, client_id: str, secret: str, **params: str) -> int:
        return post_token(self.server.url, client_id, secret, http=self.http, **params).status_code

    def get(self, client_id: str, secret: str, scope: str) -> str:
        return self.server.token(client_id, secret, http=self.http, scope=scope)

    def scopes(self, client_id: str, secret: str, scope: str) -> set[str]:
        """The scopes of a token got with ``secret``, asking for ``scope``."""
        return set(unverified(self.get(client_id, secret, scope))[1]["scope"].split())

    def honoured(self, token: str) -> bool:
        """Whether the dealer still honours ``token``."""
        response = self.http.post(self.server.url + VERIFY_PATH, data={"access_token": token})
        assert response.status_code in (200, 400), response.text
        return response.status_code == 200


@pytest.fixture(name="tokens")
def _tokens(server: ServerProcess, http: httpx.Client) -> Tokens:
    return Tokens(server, http)


def _shown(server: ServerProcess, client_id: str) -> dict[str, Any]:
    """The client as the CLI shows it."""
    shown: dict[str, Any] = _cli(server, "clients", "show", client_id)
    return shown


# -- signing in and out --------------------------------------------------------------------


def test_sign_in_through_the_form(fresh: Console) -> None:
    """A wrong password gets the one answer and no session; the right one lands on the
    dashboard, with a session cookie the browser holds HttpOnly, SameSite=Strict, Secure,
    for /admin only."""
    first = fresh.goto("/admin/")
    assert fresh.path() == "/admin/login"
    assert first.request.redirected_from is not None  # /admin/ sent it here

    refused = fresh.sign_in(password="not the password at all")
    assert refused.status == 401
    assert fresh.page.locator("main .error").inner_text() == "Unknown name or wrong password."
    assert fresh.page.input_value("#username") == ADMIN
    assert fresh.session_cookies() == []

    response = fresh.sign_in()
    assert response.status == 200
    assert fresh.path() == "/admin/"
    assert fresh.heading() == "Dashboard"
    assert fresh.page.locator("header .who").inner_text() == ADMIN
    assert fresh.page.locator("#active-clients").inner_text().isdigit()

    [cookie] = fresh.session_cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is True
    assert cookie["path"] == "/admin"
    assert cookie["domain"] == "127.0.0.1"
    assert fresh.page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    fresh.assert_clean()


def test_sign_out_ends_the_session_and_its_copies(fresh: Console) -> None:
    fresh.sign_in()
    [cookie] = fresh.session_cookies()

    fresh.click("Sign out", within="header")
    assert fresh.path() == "/admin/login?notice=signed-out"
    assert fresh.notice() == "You are signed out."
    assert fresh.session_cookies() == []

    fresh.goto("/admin/")
    assert fresh.path() == "/admin/login"
    # The cookie as it was before signing out, put back: refused all the same.
    fresh.context.add_cookies([cookie])
    fresh.goto("/admin/clients")
    assert fresh.path() == "/admin/login"
    assert fresh.heading() == "Sign in"
    fresh.assert_clean()


# -- a client's life -----------------------------------------------------------------------


def test_a_client_registered_in_the_browser_gets_tokens_with_the_secret_shown(
    console: Console, server: ServerProcess, tokens: Tokens
) -> None:
    """The secret is on the page once, with a copy button (hidden until console.js shows
    it) that puts it on the clipboard; a token request with it gets the client's scopes;
    the list shows the client."""
    client_id = "billing.browser"
    console.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    console.goto("/admin/clients")
    console.click("Register a client")
    assert console.path() == "/admin/clients/new"
    secret = console.register(client_id, "invoices:read invoices:write", "Billing", go=False)

    button = console.page.locator("main button.copy")
    expect(button).to_be_visible()
    button.click()
    expect(button).to_have_text("Copied")
    assert console.page.evaluate("navigator.clipboard.readText()") == secret

    assert tokens.scopes(client_id, secret, "invoices:read invoices:write") == {
        "invoices:read",
        "invoices:write",
    }
    console.click(f"Go to {client_id}")
    assert console.path() == f"/admin/clients/{client_id}"
    assert console.state() == "active"
    console.click("Clients", within="header nav")
    [row] = [row for row in console.rows("#clients") if row[0] == client_id]
    assert row[1:3] == ["Billing", "invoices:read invoices:write"]
    console.assert_clean()


def test_edited_scopes_are_in_the_next_token(console: Console, tokens: Tokens) -> None:
    client_id = "reports.browser"
    secret = console.register(client_id, "reports:read")
    assert tokens.scopes(client_id, secret, "reports:read") == {"reports:read"}

    console.open_client(client_id)
    console.page.fill("#scopes", "reports:export")
    console.click("Save")
    assert console.notice() == "The client was updated."
    assert console.page.input_value("#scopes") == "reports:export"

    assert tokens.scopes(client_id, secret, "reports:export") == {"reports:export"}
    assert tokens.status(client_id, secret, scope="reports:read") == 400
    console.assert_clean()


def test_a_secret_rotated_without_grace_replaces_the_old_one_at_once(
    console: Console, tokens: Tokens
) -> None:
    """Grace 0: the new secret works; the old one, and the tokens got with it, stop."""
    client_id = "rotated.browser"
    secret = console.register(client_id, "read")
    token = tokens.get(client_id, secret, "read")
    assert tokens.honoured(token)

    console.open_client(client_id)
    console.page.fill("#grace", "0")
    console.click("Rotate the secret")
    assert f"Client {client_id} has a new secret." in console.notice()
    new_secret = console.secret()
    assert new_secret != secret

    assert tokens.status(client_id, new_secret) == 200
    assert tokens.status(client_id, secret) == 401
    assert not tokens.honoured(token)
    console.assert_clean()


def test_a_secret_rotated_with_grace_keeps_the_old_one_for_a_while(
    console: Console, tokens: Tokens
) -> None:
    client_id = "graceful.browser"
    secret = console.register(client_id, "read")
    token = tokens.get(client_id, secret, "read")

    console.open_client(client_id)
    console.page.fill("#grace", "3600")
    console.click("Rotate the secret")
    new_secret = console.secret()
    assert "The previous secret keeps working until" in console.page.inner_text("main")

    assert tokens.status(client_id, new_secret) == 200
    assert tokens.status(client_id, secret) == 200
    assert tokens.honoured(token)
    console.assert_clean()


def test_a_disabled_client_gets_no_token_until_enabled(console: Console, tokens: Tokens) -> None:
    """Disabled with its tokens revoked: no new token, the one it had refused; enabled
    again: tokens again."""
    client_id = "disabled.browser"
    secret = console.register(client_id, "read")
    token = tokens.get(client_id, secret, "read")

    console.open_client(client_id)
    console.page.locator("#disable").get_by_label("also revoke its tokens").check()
    console.click("Disable")
    assert console.notice() == "The client is disabled and its tokens are revoked."
    assert console.state() == "disabled"
    assert tokens.status(client_id, secret) == 401
    assert not tokens.honoured(token)

    console.click("Enable")
    assert console.notice() == "The client is enabled."
    assert console.state() == "active"
    assert tokens.status(client_id, secret) == 200
    console.assert_clean()


def test_the_audit_trail_shows_each_change_by_the_administrator(console: Console) -> None:
    client_id = "audited.browser"
    console.register(client_id, "read")
    console.open_client(client_id)
    console.page.fill("#scopes", "read write")
    console.click("Save")
    console.page.fill("#grace", "60")
    console.click("Rotate the secret")
    console.open_client(client_id)
    console.click("Disable")
    console.click("Enable")

    console.click("Audit", within="header nav")
    assert any(row[2] == "admin.sign_in" for row in console.rows("table.events"))
    console.page.fill("#target", f"client:{client_id}")
    console.click("Filter")
    assert console.page.input_value("#target") == f"client:{client_id}"
    rows = console.rows("table.events")
    assert [row[2] for row in rows] == [
        "client.enable",
        "client.disable",
        "client.rotate_secret",
        "client.update",
        "client.create",
    ]
    assert {(row[1], row[3]) for row in rows} == {(f"admin:{ADMIN}", f"client:{client_id}")}
    console.assert_clean()


# -- refusals ------------------------------------------------------------------------------


def test_a_form_without_the_sessions_csrf_token_is_refused(
    browser: Browser, console: Console, server: ServerProcess
) -> None:
    """Without its token, or with another session's, a form is refused (400) and changes
    nothing; the same form with its own token goes through."""
    client_id = "csrf.browser"
    _add_client(server, client_id, "--scope", "read")
    other = Console.open(browser, server)
    try:
        other.sign_in()
        other.open_client(client_id)
        other_token = other.page.locator("#disable input[type=hidden]").input_value()
    finally:
        other.close()

    # The policy form without its token.
    console.open_client(client_id)
    console.page.evaluate("document.querySelector('#edit input[type=hidden]').remove()")
    console.page.fill("#scopes", "read tokendealer:admin")
    refused = console.click("Save")
    assert refused.status == 400
    assert console.heading() == "Form refused"
    assert _shown(server, client_id)["scopes"] == ["read"]

    # The disable form with the token of another session of the same administrator.
    console.open_client(client_id)
    token_input = console.page.locator("#disable input[type=hidden]")
    assert token_input.input_value() not in ("", other_token)
    token_input.evaluate("(input, token) => { input.value = token; }", other_token)
    refused = console.click("Disable")
    assert refused.status == 400
    assert console.heading() == "Form refused"
    assert _shown(server, client_id)["disabled"] is False

    # The same form as the page gives it.
    console.open_client(client_id)
    done = console.click("Disable")
    assert done.status == 200
    assert console.notice() == "The client is disabled."
    assert _shown(server, client_id)["disabled"] is True
    console.assert_clean()


def test_sign_in_locks_out_after_failed_attempts(browser: Browser, server: ServerProcess) -> None:
    """Past TOKENDEALER_SIGN_IN_LIMIT attempts, the page is a 429 whatever the password:
    per address (any name from there) and per name (from any address); an address and a
    name not locked out still get an answer."""
    env = {
        "TOKENDEALER_ISSUER": ISSUER,
        "TOKENDEALER_SIGN_IN_LIMIT": "2/minute",
        # Each context says which address it is (X-Forwarded-For), as a proxy would.
        "TOKENDEALER_TRUSTED_PROXIES": "1",
    }
    with run_server(server.log_path.parent, env=env) as locking:
        first = Console.open(browser, locking, extra_http_headers={"X-Forwarded-For": "192.0.2.1"})
        second = Console.open(browser, locking, extra_http_headers={"X-Forwarded-For": "192.0.2.2"})
        try:
            assert first.sign_in(password="wrong password, once").status == 401
            first.page.fill("#password", "wrong password, twice")
            assert first.click("Sign in").status == 401
            assert (
                first.page.locator("main .error").inner_text() == "Unknown name or wrong password."
            )

            first.page.fill("#password", PASSWORD)
            locked = first.click("Sign in")
            assert locked.status == 429
            assert locked.headers["retry-after"].isdigit()
            assert first.heading() == "Too Many Requests"
            assert "Too many attempts: try again in" in first.page.inner_text("main")
            assert first.session_cookies() == []
            _assert_security_headers(locked)
            # The address is locked out, whoever signs in from it.
            assert first.sign_in(name="bob").status == 429

            # The name is locked out from another address; that address is not.
            assert second.sign_in().status == 429
            assert second.session_cookies() == []
            assert second.sign_in(name="bob").status == 401
            first.assert_clean()
            second.assert_clean()
        finally:
            first.close()
            second.close()

    failed = _cli(server, "audit", "--action", "admin.sign_in_failed", "--target", f"admin:{ADMIN}")
    assert {event["details"].get("address") for event in failed} >= {"192.0.2.1"}


# -- headers and the content security policy -----------------------------------------------


def _assert_security_headers(response: Response) -> None:
    headers = response.headers
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in headers["content-security-policy"].split(";")
        if directive.strip()
    }
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["form-action"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"


def test_every_page_has_the_security_headers_and_keeps_its_policy(
    fresh: Console, server: ServerProcess
) -> None:
    """Pages, error pages and the refusal of a form all carry the headers; the pages load
    their stylesheet and script without a CSP violation, and the policy does hold: an
    injected inline script does not run, and is reported."""
    client_id = "headers.browser"
    _add_client(server, client_id, "--scope", "read")
    seen = [fresh.goto("/admin/login"), fresh.sign_in()]
    for path in ("/admin/clients", f"/admin/clients/{client_id}", "/admin/keys", "/admin/audit"):
        seen.append(fresh.goto(path))
    assert [response.status for response in seen] == [200] * len(seen)
    missing = fresh.goto("/admin/clients/no.such.client")
    assert missing.status == 404
    assert fresh.heading() == "Not Found"
    fresh.open_client(client_id)
    fresh.page.evaluate("document.querySelector('#edit input[type=hidden]').remove()")
    refused = fresh.click("Save")
    assert refused.status == 400
    for response in [*seen, missing, refused]:
        _assert_security_headers(response)

    assert fresh.page.evaluate(
        "[...document.styleSheets].some((sheet) => sheet.href.endsWith('/console.css'))"
    )
    assert fresh.page.evaluate(
        "[...document.scripts].some((script) => script.src.endsWith('/console.js'))"
    )
    fresh.assert_clean()

    directive = fresh.page.evaluate(
        """async () => {
            const violation = new Promise((resolve) => {
                document.addEventListener(
                    "securitypolicyviolation", (event) => resolve(event.violatedDirective)
                );
                setTimeout(() => resolve(null), 5000);
            });
            const script = document.createElement("script");
            script.textContent = "window.injected = true";
            document.body.append(script);
            const directive = await violation;
            await window.lastReport;  // the report has reached the test
            return directive;
        }"""
    )
    assert directive is not None
    assert directive.startswith("script-src")
    assert fresh.page.evaluate("window.injected") is None
    assert fresh.violations == [f"{fresh.path()}: {directive} inline"]
