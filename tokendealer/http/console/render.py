"""Pages of the console: the dealer they act on, and templates rendered with what every
page shows (the signed-in administrator, the CSRF token of the session, a notice)."""

from __future__ import annotations

from typing import Any

from quart import Response, g, render_template, request, url_for

from tokendealer.http.console.session import CSRF_FIELD

#: What a page may say after a change (``?notice=``): fixed texts, never an echo of input.
NOTICES = {
    "signed-out": "You are signed out.",
    "updated": "The client was updated.",
    "registered-keyed": "The client is registered. It has no secret: it signs its "
    "assertions with its own private key, checked with the public keys below.",
    "keys-replaced": "The client's keys were replaced: assertions signed with the old "
    "ones no longer authenticate it.",
    "unchanged": "Nothing changed.",
    "disabled": "The client is disabled.",
    "disabled-revoked": "The client is disabled and its tokens are revoked.",
    "enabled": "The client is enabled.",
    "removed": "The client was removed.",
    "rotated": "A new signing key was added.",
    "pruned": "Retired keys past their tokens' lifetime were removed.",
    "nothing-pruned": "No key could be pruned yet.",
}


def see_other(endpoint: str, **values: Any) -> Response:
    """303 to ``endpoint``: after a form post, the browser gets the page that shows it."""
    return Response("", 303, {"Location": url_for(endpoint, **values)})


async def page(template: str, status: int = 200, **context: Any) -> Response:
    session = g.get("console_session")
    html = await render_template(
        f"console/{template}",
        session=session,
        csrf_field=CSRF_FIELD,
        csrf_token=session.csrf_token if session is not None else "",
        notice=NOTICES.get(request.args.get("notice", "")),
        **context,
    )
    return Response(html, status, content_type="text/html; charset=utf-8")
