"""The admin API, ``/admin/api/v1`` (JSON; described in openapi.yaml): clients, keys and
the audit trail, through the admin service. Limited per client address, like every Quart
route of the service; every answer is ``Cache-Control: no-store``."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from quart import Blueprint, Response, g, request

from tokendealer.admin import audit as admin_audit
from tokendealer.admin import clients as admin
from tokendealer.admin import keys as admin_keys
from tokendealer.admin.errors import Invalid
from tokendealer.http.admin.bearer import admin_caller
from tokendealer.http.current import dealer
from tokendealer.http.errors import to_response
from tokendealer.http.limits import KEY_GENERATION_LIMIT, limit_per_address, limit_view
from tokendealer.http.responses import NO_STORE, json_reply
from tokendealer.jsonbytes import DuplicateName, loads_strict
from tokendealer.keys.keyset import DEFAULT_ALG
from tokendealer.protocol.clients import CLIENT_SECRET, PRIVATE_KEY_JWT
from tokendealer.protocol.rates import ENFORCE
from tokendealer.protocol.times import iso
from tokendealer.settings import Settings

PREFIX = "/admin/api/v1"


def _json(body: Any, status: int = 200) -> Response:
    return to_response(json_reply(body, status, NO_STORE))


async def _authenticate() -> None:
    g.actor = await admin_caller()


async def _object(*, optional: bool = False) -> dict[str, Any]:
    """The JSON object of the body; ``optional``: an empty body is ``{}``."""
    data = await request.get_data()
    if optional and not data:
        return {}
    # JSON only: a form or text/plain body is what a cross-site form can send.
    if request.mimetype != "application/json":
        raise Invalid("the request body is JSON (Content-Type: application/json)")
    try:
        body = loads_strict(data)
    except DuplicateName:
        raise Invalid("the request body repeats a member") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Invalid("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Invalid("the request body is a JSON object")
    return body


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Invalid(f"{name} is an array of strings", name)
    return value


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise Invalid(f"{name} is an integer", name)
    return value


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise Invalid(f"{name} is a string", name)
    return value


def _mapping(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise Invalid(f"{name} is a JSON object", name)
    return value


def _only(body: dict[str, Any], *names: str) -> None:
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise Invalid(f"unknown member {unknown[0]!r}", unknown[0])


#: The members that say how a client authenticates (``POST /clients``); ``PATCH`` takes
#: the keys only.
AUTHENTICATION = ("auth_method", "jwks_uri", "jwks")
KEYS = ("jwks_uri", "jwks")
#: The methods a client is registered with here (openapi.yaml's ``ClientAuthMethod``).
AUTH_METHODS = (CLIENT_SECRET, PRIVATE_KEY_JWT)


def _keys(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """``jwks_uri`` and ``jwks`` (a JWK Set or a JWK, a JSON object) as the admin
    service checks them: the URL, and the keys as JSON text."""
    jwks = _mapping(body, "jwks")
    return _text(body, "jwks_uri"), None if jwks is None else json.dumps(jwks)


def _authentication(body: dict[str, Any]) -> admin.Authentication:
    """How a new client authenticates: ``auth_method`` (``client_secret`` when left
    out or null) and, for ``private_key_jwt``, one of ``jwks_uri`` and ``jwks``."""
    method = _text(body, "auth_method") or CLIENT_SECRET
    if method not in AUTH_METHODS:
        raise Invalid(f"auth_method is one of {', '.join(AUTH_METHODS)}", "auth_method")
    jwks_uri, jwk_text = _keys(body)
    if method == CLIENT_SECRET and jwk_text is not None:
        # Named here: the admin service names jwks_uri for either.
        raise Invalid("jwks is for private_key_jwt clients (auth_method)", "jwks")
    return admin.check_authentication(method, jwks_uri=jwks_uri, jwk_text=jwk_text)


# -- clients -------------------------------------------------------------------------------


async def list_clients() -> Response:
    found = await admin.listing(dealer().store)
    return _json([admin.describe(client) for client in found])


async def create_client() -> Response:
    body = await _object()
    _only(body, "client_id", *admin.POLICY, *AUTHENTICATION)
    client_id = _text(body, "client_id")
    if client_id is None:
        raise Invalid("client_id is required", "client_id")
    authentication = _authentication(body)
    registered = await admin.register(
        dealer().store,
        client_id,
        actor=g.actor,
        scopes=_strings(body, "scopes") or (),
        audiences=_strings(body, "audiences") or (),
        ttl=_integer(body, "ttl"),
        description=_text(body, "description") or "",
        claims=_mapping(body, "claims"),
        rate_limit=_text(body, "rate_limit"),
        rate_limit_mode=_text(body, "rate_limit_mode") or ENFORCE,
        authentication=authentication,
    )
    shown = admin.describe(registered.client)
    if registered.secret is not None:  # a private_key_jwt client has none
        shown["client_secret"] = registered.secret
    response = _json(shown, 201)
    # RFC 9110 §15.3.2: where the new resource is.
    response.headers["Location"] = f"{PREFIX}/clients/{quote(client_id, safe='')}"
    return response


async def show_client(client_id: str) -> Response:
    return _json(admin.describe(await admin.get(dealer().store, client_id)))


async def update_client(client_id: str) -> Response:
    body = await _object()
    _only(body, *admin.POLICY, *KEYS)
    jwks_uri, jwk_text = _keys(body)
    keys = None
    if jwks_uri is not None or jwk_text is not None:
        keys = admin.check_authentication(PRIVATE_KEY_JWT, jwks_uri=jwks_uri, jwk_text=jwk_text)
    changed = await admin.update(
        dealer().store,
        client_id,
        actor=g.actor,
        scopes=_strings(body, "scopes"),
        audiences=_strings(body, "audiences"),
        ttl=_integer(body, "ttl") if "ttl" in body else admin.UNSET,
        description=_text(body, "description"),
        claims=_mapping(body, "claims"),
        # null gives the client back the service-wide limit, as for ttl.
        rate_limit=_text(body, "rate_limit") if "rate_limit" in body else admin.UNSET,
        rate_limit_mode=_text(body, "rate_limit_mode"),
        keys=keys,
    )
    return _json(admin.describe(changed.client))


async def rotate_secret(client_id: str) -> Response:
    body = await _object(optional=True)
    _only(body, "grace")
    grace = _integer(body, "grace")
    rotated = await admin.rotate_secret(
        dealer().store, client_id, actor=g.actor, grace=0 if grace is None else grace
    )
    until = rotated.previous_valid_until
    return _json(
        {
            "client_id": client_id,
            "client_secret": rotated.secret,
            "previous_secret_valid_until": iso(until),
        }
    )


async def disable_client(client_id: str) -> Response:
    body = await _object(optional=True)
    _only(body, "revoke_tokens")
    revoke = body.get("revoke_tokens", False)
    if not isinstance(revoke, bool):
        raise Invalid("revoke_tokens is a boolean", "revoke_tokens")
    store = dealer().store
    await admin.disable(store, client_id, actor=g.actor, revoke_tokens=revoke)
    return _json(admin.describe(await admin.get(store, client_id)))


async def enable_client(client_id: str) -> Response:
    store = dealer().store
    await admin.enable(store, client_id, actor=g.actor)
    return _json(admin.describe(await admin.get(store, client_id)))


async def remove_client(client_id: str) -> Response:
    await admin.remove(dealer().store, client_id, actor=g.actor)
    return Response(b"", 204, headers=dict(NO_STORE))


# -- keys ------------------------------------------------------------------------------------


async def list_keys() -> Response:
    # Reading the key files validates every key: off the event loop.
    return _json(await admin_keys.listing(dealer().store, dealer().settings))


async def rotate_key() -> Response:
    body = await _object(optional=True)
    _only(body, "activate_after", "alg", "bits")
    d = dealer()
    alg = _text(body, "alg")
    rotation = await admin_keys.rotate(
        d.store,
        d.settings,
        actor=g.actor,
        activate_after=_integer(body, "activate_after"),
        alg=DEFAULT_ALG if alg is None else alg,
        # An RSA key's size (default 2048); refused for the other key types.
        bits=_integer(body, "bits"),
    )
    await d.refresh_keys()  # this worker publishes it at once; others within a second
    return _json(
        {
            "kid": rotation.kid,
            "activate_after": rotation.delay,
            "replaced": list(rotation.replaced),
            "keys": await admin_keys.listing(d.store, d.settings),
        }
    )


async def prune_keys() -> Response:
    body = await _object(optional=True)
    _only(body, "force")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise Invalid("force is a boolean", "force")
    d = dealer()
    pruned = await admin_keys.prune(d.store, d.settings, actor=g.actor, force=force)
    await d.refresh_keys()
    return _json(
        {
            "removed": list(pruned.removed),
            "kept": list(pruned.kept),
            "longest_token_lifetime": pruned.longest_lifetime,
        }
    )


# -- the audit trail -----------------------------------------------------------------------


async def audit() -> Response:
    args = request.args
    found = await admin_audit.events(
        dealer().store,
        actor=args.get("actor"),
        target=args.get("target"),
        action=args.get("action"),
        since=args.get("since"),
        limit=admin_audit.check_limit(args.get("limit")),
    )
    return _json([admin_audit.describe(event) for event in found])


ROUTES = (
    ("GET", "/clients", list_clients),
    ("POST", "/clients", create_client),
    ("GET", "/clients/<client_id>", show_client),
    ("PATCH", "/clients/<client_id>", update_client),
    ("POST", "/clients/<client_id>/rotate-secret", rotate_secret),
    ("POST", "/clients/<client_id>/disable", disable_client),
    ("POST", "/clients/<client_id>/enable", enable_client),
    ("DELETE", "/clients/<client_id>", remove_client),
    ("GET", "/keys", list_keys),
    ("POST", "/keys/rotate", rotate_key),
    ("POST", "/keys/prune", prune_keys),
    ("GET", "/audit", audit),
)


def admin_api(settings: Settings) -> Blueprint:
    """The API as a blueprint of its own for one app, limited per client address."""
    blueprint = Blueprint("admin_api", __name__, url_prefix=PREFIX)
    blueprint.before_request(_authenticate)
    for method, path, view in ROUTES:
        if view is rotate_key:
            view = limit_view(view, KEY_GENERATION_LIMIT)
        blueprint.add_url_rule(path, view_func=view, methods=[method])
    return limit_per_address(blueprint, settings)
