"""The console through Quart's test client, as a browser would use it: pages over https
(the session cookie is ``Secure`` when the issuer is), forms posted with the CSRF token
the page carries, redirects followed by hand where a test looks at them.

    console = Console(app)
    await console.sign_in("alice", PASSWORD)
    page = await console.post("/admin/clients", client_id="svc", scopes="read")
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import pytest
from argon2 import PasswordHasher
from quart import Quart

from tests.support import leaks
from tests.support.environment import QuartClient
from tokendealer.admin import accounts
from tokendealer.http.console.session import COOKIE

#: A password good enough for the console's rules (12 characters at least).
PASSWORD = "correct horse battery staple"
leaks.remember(PASSWORD)

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_SECRET = re.compile(r'<output id="client-secret">([^<]+)</output>')


@dataclass
class Page:
    status: int
    text: str
    headers: Any

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    @property
    def csrf_token(self) -> str:
        match = _CSRF.search(self.text)
        assert match is not None, "the page carries no CSRF token"
        return match.group(1)

    @property
    def secret(self) -> str:
        match = _SECRET.search(self.text)
        assert match is not None, "the page shows no secret"
        return html.unescape(match.group(1))

    def field_error(self, name: str) -> str | None:
        match = re.search(rf'<p class="field-error" id="{name}-error">([^<]*)</p>', self.text)
        return html.unescape(match.group(1)) if match else None

    def __contains__(self, text: str) -> bool:
        return text in html.unescape(self.text)


#: argon2id at its cheapest: what these tests check is the console, not the KDF's cost
#: (tests/unit/test_accounts.py checks that).
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "HASHER", CHEAP_HASHER)


async def add_admin(app: Quart, name: str = "alice", password: str = PASSWORD) -> None:
    await accounts.add(app.extensions["tokendealer"].store, name, password, "cli:test")


class Console:
    def __init__(self, app: Quart, *, peer: str | None = None) -> None:
        self.app = app
        self.client: QuartClient = app.test_client()
        self.peer = peer
        self.csrf_token = ""

    def _base(self) -> dict[str, Any] | None:
        return {"client": (self.peer, 40000)} if self.peer else None

    async def _page(self, response: Any) -> Page:
        page = Page(response.status_code, await response.get_data(as_text=True), response.headers)
        # Every form that posts carries the session's token, the same one (a form that
        # rendered it empty would be refused in a browser); the sign-in form has none.
        tokens = set()
        for form in re.findall(r'<form[^>]*method="post"(.*?)</form>', page.text, re.S):
            if 'action="/admin/login"' not in form:
                found = _CSRF.findall(form)
                assert found and found[0], f"a form without the CSRF token: {form[:200]}"
                tokens.update(found)
        assert len(tokens) <= 1, f"CSRF fields of {tokens}"
        if tokens:
            self.csrf_token = tokens.pop()
        return page

    async def get(self, path: str, **kwargs: Any) -> Page:
        response = await self.client.get(path, scheme="https", scope_base=self._base(), **kwargs)
        return await self._page(response)

    async def post(self, path: str, *, csrf: bool = True, **form: str) -> Page:
        """Post ``form`` with the session's CSRF token (read from the last page) unless
        ``csrf`` is false."""
        if csrf and "csrf_token" not in form:
            form["csrf_token"] = self.csrf_token
        response = await self.client.post(path, form=form, scheme="https", scope_base=self._base())
        return await self._page(response)

    async def sign_in(self, name: str = "alice", password: str = PASSWORD) -> Page:
        page = await self.post("/admin/login", csrf=False, username=name, password=password)
        if page.status == 303:
            await self.get("/admin/")  # the dashboard: the session's CSRF token
        return page

    @property
    def cookie(self) -> str:
        """The session cookie's value, as the browser holds it."""
        jar = self.client.cookie_jar
        assert jar is not None
        for cookie in jar:
            if cookie.name == COOKIE and cookie.value:
                return cookie.value
        raise AssertionError("no session cookie")

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.client.open(
            "/admin/api/v1" + path, method=method, scheme="https", **kwargs
        )
