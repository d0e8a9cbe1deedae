"""The web console, ``/admin/``: server-rendered pages over the admin service, usable
without JavaScript (a copy button is the only script, from a file of its own).

- ``session``: sign-in sessions (quart-auth) and their CSRF tokens;
- ``signin``: the sign-in form, limited per address and per name, and sign-out;
- ``pages``: dashboard, clients, keys, audit trail;
- ``render``: templates with what every page shows; ``forms``: form fields read.

Every page needs a session but the sign-in page and the static files; every form post
needs the session's CSRF token (400 without it, and nothing changes). Every answer under
``/admin`` carries the security headers (``SECURITY_HEADERS``). Errors are the one
mapping's (``tokendealer.http.errors.describe_error``), rendered as a page.
"""

from __future__ import annotations

from http import HTTPStatus

from quart import Blueprint, Quart, Response, request
from werkzeug.exceptions import NotFound

from tokendealer.http.console import pages, session, signin
from tokendealer.http.console.render import page, see_other
from tokendealer.http.current import dealer
from tokendealer.http.errors import describe_error, error_reply, to_response
from tokendealer.http.limits import KEY_GENERATION_LIMIT, limit_per_address, limit_view
from tokendealer.keys.secret import session_secret
from tokendealer.settings import Settings

PREFIX = "/admin"
#: The admin API's paths, under the console's (JSON answers, its own blueprint).
API_PREFIX = PREFIX + "/api"

#: Sent with every answer under /admin (the API's too).
SECURITY_HEADERS = {
    # No inline script or style, nothing from elsewhere, no framing, forms post here only.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

ROUTES = (
    ("GET", "/", "dashboard", pages.dashboard),
    ("GET", "/login", "login", signin.show),
    ("POST", "/logout", "logout", signin.sign_out),
    ("GET", "/clients", "clients", pages.clients),
    ("GET", "/clients/new", "new_client", pages.new_client),
    ("POST", "/clients", "create_client", pages.create_client),
    ("GET", "/clients/<client_id>", "show_client", pages.show_client),
    ("POST", "/clients/<client_id>", "update_client", pages.update_client),
    ("POST", "/clients/<client_id>/rotate-secret", "rotate_secret", pages.rotate_secret),
    ("POST", "/clients/<client_id>/keys", "replace_keys", pages.replace_keys),
    ("POST", "/clients/<client_id>/disable", "disable_client", pages.disable_client),
    ("POST", "/clients/<client_id>/enable", "enable_client", pages.enable_client),
    ("GET", "/clients/<client_id>/remove", "confirm_removal", pages.confirm_removal),
    ("POST", "/clients/<client_id>/remove", "remove_client", pages.remove_client),
    ("GET", "/keys", "keys", pages.keys),
    ("POST", "/keys/rotate", "rotate_key", pages.rotate_key),
    ("POST", "/keys/prune", "prune_keys", pages.prune_keys),
    ("GET", "/audit", "audit", pages.audit),
)

#: Endpoints open without a session.
_OPEN = frozenset({"console.login", "console.sign_in", "console.static"})


async def _guard() -> Response | None:
    """A session for every page but the open ones; the CSRF token for every post."""
    if request.endpoint in _OPEN:
        return None
    current = await session.current(dealer().store)
    if current is None:
        return see_other("console.login")
    if request.method == "POST":
        form = await request.form
        if not session.csrf_matches(current, form.get(session.CSRF_FIELD)):
            return await page(
                "error.html",
                400,
                title="Form refused",
                message="This form is not from your current session: reload the page and "
                "try again.",
            )
    return None


async def _error_page(error: Exception) -> Response:
    problem = describe_error(error, request.path)
    message = problem.description
    # A person does not see Retry-After: the page says it.
    wait = problem.headers.get("Retry-After")
    if problem.status == 429:
        message = f"Too many attempts: try again in {wait} seconds."
    elif problem.status == 503 and wait:
        message = f"The service is unavailable for a moment: try again in {wait} seconds."
    response = await page(
        "error.html", problem.status, title=HTTPStatus(problem.status).phrase, message=message
    )
    response.headers.update(problem.headers)
    return response


def _under(prefix: str) -> bool:
    return request.path == prefix or request.path.startswith(prefix + "/")


async def _to_root() -> Response:
    return Response("", 308, {"Location": PREFIX.rsplit("/", 1)[-1] + "/"})


def console(settings: Settings) -> Blueprint:
    """The console's pages as a blueprint, limited per client address like every Quart
    route; the sign-in post also per name (``signin``)."""
    blueprint = Blueprint(
        "console",
        __name__,
        url_prefix=PREFIX,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    # "/admin" to "/admin/" by a relative reference ("admin/", RFC 3986 §5.2), where
    # the router's own redirect would be an absolute URL built from the request's Host
    # header (which a client chooses), and right behind a proxy that adds a path too.
    blueprint.add_url_rule("", "root", view_func=_to_root, methods=["GET"])
    blueprint.before_request(_guard)
    blueprint.register_error_handler(Exception, _error_page)
    for method, path, name, view in ROUTES:
        if view is pages.rotate_key:
            view = limit_view(view, KEY_GENERATION_LIMIT)
        blueprint.add_url_rule(path, name, view_func=view, methods=[method])
    blueprint.add_url_rule(
        "/login", "sign_in", view_func=signin.limited_submit(settings), methods=["POST"]
    )
    return limit_per_address(blueprint, settings)


def install(app: Quart, settings: Settings) -> None:
    """The console on ``app``: its pages, sessions, the security headers under /admin, and
    the session secret read (or made) as the app starts."""
    app.register_blueprint(console(settings))
    session.install(app, settings)

    @app.before_serving
    async def _secret() -> None:
        app.secret_key = session_secret(settings)

    @app.errorhandler(NotFound)
    async def _not_found(error: NotFound) -> Response:
        # A path under /admin that no route answers: a page too (the API's are JSON).
        if _under(PREFIX) and not _under(API_PREFIX):
            return await _error_page(error)
        return to_response(error_reply(error, request.path))

    @app.after_request
    async def _headers(response: Response) -> Response:
        if _under(PREFIX):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response
