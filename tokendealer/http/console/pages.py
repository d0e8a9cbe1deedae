"""The console's pages: dashboard, clients, keys and the audit trail.

Each page reads or changes through the admin service, as the signed-in administrator
(``admin:NAME`` in the audit trail). A refused change shows the form again, with the
message next to its field and what was typed kept; a change done redirects (303) to the
page that shows it, with a fixed notice.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response, g, request

from tokendealer.admin import audit as admin_audit
from tokendealer.admin import clients as admin
from tokendealer.admin import keys as admin_keys
from tokendealer.admin.errors import AdminError, Invalid, NotFound
from tokendealer.http.console.forms import (
    checked,
    json_object,
    optional,
    text,
    whole_number,
    words,
)
from tokendealer.http.console.render import page, see_other
from tokendealer.http.current import dealer
from tokendealer.http.errors import describe_error
from tokendealer.keys.keyset import DEFAULT_ALG, DEFAULT_KEY_BITS
from tokendealer.library.algorithms import ALGORITHMS, SIGNING_ALGORITHMS
from tokendealer.library.jwk import thumbprint_kid
from tokendealer.protocol.audit import ACTIONS
from tokendealer.protocol.clients import CLIENT_SECRET, PRIVATE_KEY_JWT
from tokendealer.protocol.rates import ENFORCE, MONITOR, rate_text
from tokendealer.store.audit import MAX_EVENTS

#: Recent changes on the dashboard.
RECENT = 10
CLAIMS_LABEL = "The claims"
#: The ways a client is registered here, as the register form names them.
METHODS = {CLIENT_SECRET: "Client secret", PRIVATE_KEY_JWT: "Private key JWT"}
#: What a client's own rate limit does, as the forms name it.
RATE_LIMIT_MODES = {
    ENFORCE: "Enforce: refuse requests over it (429)",
    MONITOR: "Monitor: log requests over it, refuse none",
}


def _algorithm_label(alg: str) -> str:
    algorithm = ALGORITHMS[alg]
    if algorithm.kty == "RSA":
        padding = "PKCS#1 v1.5" if alg.startswith("RS") else "PSS"
        return f"{alg}: RSA {DEFAULT_KEY_BITS} bits, {padding}"
    return f"{alg}: {'EC ' if algorithm.kty == 'EC' else ''}{algorithm.crv}"


#: The rotate form's algorithms, each with the key it makes.
ALGORITHM_CHOICES = {alg: _algorithm_label(alg) for alg in SIGNING_ALGORITHMS}


def _actor() -> str:
    return str(g.console_session.actor)


def _status(error: AdminError) -> int:
    return describe_error(error, request.path).status


def _errors(error: AdminError, fields: tuple[str, ...] | None = None) -> dict[str, str]:
    """The message next to its field; at the top of the page when the field is not one
    of the form's ``fields`` (all, when not given)."""
    field = error.field if fields is None or error.field in fields else None
    return {field or "form": str(error)}


# -- dashboard -----------------------------------------------------------------------------


async def dashboard() -> Response:
    d = dealer()
    clients = await admin.listing(d.store)
    keys = await admin_keys.listing(d.store, d.settings)
    recent = await admin_audit.events(d.store, limit=RECENT)
    disabled = sum(client.disabled for client in clients)
    return await page(
        "dashboard.html",
        title="Dashboard",
        active_clients=len(clients) - disabled,
        disabled_clients=disabled,
        keys=keys,
        events=[admin_audit.describe(event) for event in recent],
    )


# -- clients -------------------------------------------------------------------------------


def _matches(shown: dict[str, Any], query: str) -> bool:
    fields = [shown["client_id"], shown["description"], *shown["scopes"], *shown["audiences"]]
    return any(query in str(value).casefold() for value in fields)


async def clients() -> Response:
    query = request.args.get("q", "").strip()
    shown = [admin.describe(client) for client in await admin.listing(dealer().store)]
    if query:
        shown = [row for row in shown if _matches(row, query.casefold())]
    return await page("clients.html", title="Clients", clients=shown, query=query)


async def new_client() -> Response:
    return await _new_client_page(200, values={}, errors={})


async def _new_client_page(status: int, **context: Any) -> Response:
    return await page(
        "client_new.html",
        status,
        title="Register a client",
        methods=METHODS,
        rate_limit_modes=RATE_LIMIT_MODES,
        default_rate_limit=rate_text(dealer().settings.rate_limit),
        **context,
    )


def _authentication(form: Any) -> admin.Authentication:
    """How the client being registered authenticates: its secret, or a private key JWT
    checked with the keys at a URL or given (a JWK, a JWK Set or a PEM public key)."""
    method = text(form, "auth_method") or CLIENT_SECRET
    if method not in METHODS:
        raise Invalid(f"Choose one of: {', '.join(METHODS.values())}.", "auth_method")
    jwks_uri, jwk_text = optional(form, "jwks_uri"), optional(form, "jwks")
    if method == CLIENT_SECRET and (jwks_uri or jwk_text):
        raise Invalid(
            "Keys are for a client that authenticates with a private key JWT: choose it "
            "under Authentication, or leave this empty.",
            "jwks" if jwk_text else "jwks_uri",
        )
    return admin.check_authentication(method, jwks_uri=jwks_uri, jwk_text=jwk_text)


async def create_client() -> Response:
    form = await request.form
    try:
        authentication = _authentication(form)
        registered = await admin.register(
            dealer().store,
            text(form, "client_id").strip(),
            actor=_actor(),
            scopes=words(form, "scopes"),
            audiences=words(form, "audiences"),
            ttl=whole_number(form, "ttl", label="The token lifetime"),
            description=text(form, "description"),
            claims=json_object(form, "claims", label=CLAIMS_LABEL),
            rate_limit=optional(form, "rate_limit"),
            rate_limit_mode=text(form, "rate_limit_mode") or ENFORCE,
            authentication=authentication,
        )
    except AdminError as error:
        return await _new_client_page(_status(error), values=form, errors=_errors(error))
    if registered.secret is None:  # nothing to show once: the client's own page
        return see_other(
            "console.show_client", notice="registered-keyed", client_id=registered.client.client_id
        )
    return await page(
        "client_secret.html",
        title="Client secret",
        client=admin.describe(registered.client),
        secret=registered.secret,
        registered=True,
    )


async def _client_page(client_id: str, status: int = 200, **context: Any) -> Response:
    d = dealer()
    record = await admin.get(d.store, client_id)
    client = admin.describe(record)
    context.setdefault("values", {})
    context.setdefault("errors", {})
    claims = client["claims"]
    # The claims as an administrator edits them: JSON, one claim a line.
    claims_text = json.dumps(claims, indent=2, ensure_ascii=False) if claims else ""
    return await page(
        "client.html",
        status,
        title=client_id,
        client=client,
        claims_text=claims_text,
        method=METHODS.get(client["auth_method"], client["auth_method"]),
        kids=_kids(client["jwks"]),
        rate_limit=admin.effective_rate_limit(record, d.settings.rate_limit),
        rate_limit_modes=RATE_LIMIT_MODES,
        default_rate_limit=rate_text(d.settings.rate_limit),
        **context,
    )


def _kids(jwks: dict[str, Any] | None) -> list[str]:
    """The registered keys by kid (a key without one: its RFC 7638 thumbprint)."""
    kids = []
    for key in (jwks or {}).get("keys", []):
        kid = key.get("kid")
        if kid is None:
            try:
                kid = thumbprint_kid(key)
            except (KeyError, TypeError):  # not a key of the kinds registered here
                kid = "(no kid)"
        kids.append(str(kid))
    return kids


async def show_client(client_id: str) -> Response:
    return await _client_page(client_id)


async def update_client(client_id: str) -> Response:
    form = await request.form
    try:
        updated = await admin.update(
            dealer().store,
            client_id,
            actor=_actor(),
            scopes=words(form, "scopes"),
            audiences=words(form, "audiences"),
            ttl=whole_number(form, "ttl", label="The token lifetime"),
            description=text(form, "description"),
            claims=json_object(form, "claims", label=CLAIMS_LABEL),
            # Empty: back to the service's limit; a form without the field keeps it.
            rate_limit=optional(form, "rate_limit") if "rate_limit" in form else admin.UNSET,
            rate_limit_mode=optional(form, "rate_limit_mode"),
        )
    except NotFound:
        raise
    except AdminError as error:
        return await _client_page(client_id, _status(error), values=form, errors=_errors(error))
    notice = "updated" if updated.changes else "unchanged"
    return see_other("console.show_client", notice=notice, client_id=client_id)


async def rotate_secret(client_id: str) -> Response:
    form = await request.form
    try:
        grace = whole_number(form, "grace", blank=0, label="The grace period") or 0
        rotated = await admin.rotate_secret(dealer().store, client_id, actor=_actor(), grace=grace)
    except NotFound:
        raise
    except AdminError as error:
        return await _client_page(client_id, _status(error), values=form, errors=_errors(error))
    client = admin.describe(await admin.get(dealer().store, client_id))
    return await page(
        "client_secret.html",
        title="Client secret",
        client=client,
        secret=rotated.secret,
        registered=False,
    )


async def replace_keys(client_id: str) -> Response:
    """A private_key_jwt client's keys replaced: by a URL, or by keys given."""
    form = await request.form
    try:
        keys = admin.check_authentication(
            PRIVATE_KEY_JWT, jwks_uri=optional(form, "jwks_uri"), jwk_text=optional(form, "jwks")
        )
        updated = await admin.update(dealer().store, client_id, actor=_actor(), keys=keys)
    except NotFound:
        raise
    except AdminError as error:
        errors = _errors(error, ("jwks_uri", "jwks"))
        return await _client_page(client_id, _status(error), values=form, errors=errors)
    notice = "keys-replaced" if updated.changes else "unchanged"
    return see_other("console.show_client", notice=notice, client_id=client_id)


async def disable_client(client_id: str) -> Response:
    form = await request.form
    revoke = checked(form, "revoke_tokens")
    await admin.disable(dealer().store, client_id, actor=_actor(), revoke_tokens=revoke)
    return see_other(
        "console.show_client",
        notice="disabled-revoked" if revoke else "disabled",
        client_id=client_id,
    )


async def enable_client(client_id: str) -> Response:
    await admin.enable(dealer().store, client_id, actor=_actor())
    return see_other("console.show_client", notice="enabled", client_id=client_id)


async def confirm_removal(client_id: str) -> Response:
    client = admin.describe(await admin.get(dealer().store, client_id))
    return await page("client_remove.html", title=f"Remove {client_id}", client=client, errors={})


async def remove_client(client_id: str) -> Response:
    form = await request.form
    client = admin.describe(await admin.get(dealer().store, client_id))
    if text(form, "confirm") != client_id:
        errors = {"confirm": "Type the client id exactly to confirm."}
        return await page(
            "client_remove.html", 400, title=f"Remove {client_id}", client=client, errors=errors
        )
    await admin.remove(dealer().store, client_id, actor=_actor())
    return see_other("console.clients", notice="removed")


# -- keys ----------------------------------------------------------------------------------


async def _keys_page(status: int = 200, **context: Any) -> Response:
    d = dealer()
    keys = await admin_keys.listing(d.store, d.settings)
    context.setdefault("values", {})
    context.setdefault("errors", {})
    return await page(
        "keys.html",
        status,
        title="Signing keys",
        keys=keys,
        default_delay=d.settings.jwks_max_age,
        algorithms=ALGORITHM_CHOICES,
        default_alg=DEFAULT_ALG,
        **context,
    )


async def keys() -> Response:
    return await _keys_page()


async def rotate_key() -> Response:
    form = await request.form
    d = dealer()
    try:
        await admin_keys.rotate(
            d.store,
            d.settings,
            actor=_actor(),
            activate_after=whole_number(form, "activate_after", label="The activation delay"),
            alg=form.get("alg") or DEFAULT_ALG,
        )
    except AdminError as error:
        return await _keys_page(_status(error), values=form, errors=_errors(error))
    await d.refresh_keys()  # this worker publishes it at once; others within a second
    return see_other("console.keys", notice="rotated")


async def prune_keys() -> Response:
    d = dealer()
    try:
        pruned = await admin_keys.prune(d.store, d.settings, actor=_actor())
    except AdminError as error:
        return await _keys_page(_status(error), errors=_errors(error))
    await d.refresh_keys()
    return see_other("console.keys", notice="pruned" if pruned.removed else "nothing-pruned")


# -- the audit trail -----------------------------------------------------------------------


async def audit() -> Response:
    args = request.args
    filters = {name: args.get(name, "").strip() for name in ("actor", "target", "action", "since")}
    context: dict[str, Any] = {
        "title": "Audit trail",
        "filters": filters,
        "limit": args.get("limit", "").strip(),
        "actions": sorted(ACTIONS),
        "max_events": MAX_EVENTS,
        "events": [],
        "errors": {},
    }
    status = 200
    try:
        limit = admin_audit.check_limit(args.get("limit"))
        found = await admin_audit.events(dealer().store, limit=limit, **filters)
        context["events"] = [admin_audit.describe(event) for event in found]
    except AdminError as error:
        status, context["errors"] = _status(error), _errors(error)
    return await page("audit.html", status, **context)
