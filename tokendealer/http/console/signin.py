"""Signing in and out of the console.

One answer for an unknown name and a wrong password, after the same work (the admin
service's ``verify``). Attempts are limited per client address and, separately, per name
(``sign_in_limit``, through quart-rate-limiter): past either, the page is a 429 with
Retry-After, and no password is checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart import Response, g, request

from tokendealer.admin import accounts
from tokendealer.http.console import session
from tokendealer.http.console.render import page, see_other
from tokendealer.http.current import dealer
from tokendealer.http.exchange import scope_address
from tokendealer.http.limits import limit_view
from tokendealer.ratelimit.gcra import digest_key
from tokendealer.settings import Settings

FAILED = "Unknown name or wrong password."


async def _name_key() -> str:
    """The name a sign-in attempt is for (digested: it may be anything typed)."""
    form = await request.form
    return "sign-in-name:" + digest_key(form.get("username", "")[:256])


async def show() -> Response:
    if await session.current(dealer().store) is not None:
        return see_other("console.dashboard")
    return await page("login.html", title="Sign in")


async def submit() -> Response:
    form = await request.form
    name = form.get("username", "")
    password = form.get("password", "")
    store = dealer().store
    address = scope_address(request.scope, dealer().settings.trusted_proxies)
    admin = await accounts.verify(store, name, password, actor_address=address)
    if admin is None:
        return await page("login.html", 401, title="Sign in", error=FAILED, username=name)
    session.sign_in(admin)
    return see_other("console.dashboard")


async def sign_out() -> Response:
    d = dealer()
    await session.sign_out(d.store, g.console_session, d.settings.admin_session_ttl)
    return see_other("console.login", notice="signed-out")


def limited_submit(settings: Settings) -> Callable[[], Awaitable[Response]]:
    """``submit`` under the sign-in limits of ``settings``: per address and per name."""
    return limit_view(submit, settings.sign_in_limit, _name_key)
