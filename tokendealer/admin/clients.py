"""Clients, administered: register, edit, rotate, disable, enable, remove, show, list.

Every face (the CLI, the admin API, the console, ``apply``) calls these; each change is
checked here, written in one store transaction together with its audit event, and
refused with an ``AdminError`` naming the field at fault. A secret is returned once, to
the caller, and never recorded: the store keeps its digest, the audit trail nothing.

Every field is bounded here (``MAX_SCOPES`` scope tokens of at most ``MAX_SCOPE_LENGTH``
characters, ``MAX_AUDIENCES`` audiences of at most 512, a description of at most
``MAX_DESCRIPTION``, claims of at most ``protocol.claims.MAX_CLAIMS_SIZE`` bytes, a rate
limit of at most ``protocol.rates.MAX_RATE_TEXT`` characters), and an
audit event holds at most a client's policy (twice for an update: from and to), so no
change writes a row of more than a few hundred kilobytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tokendealer.admin.errors import Conflict, Invalid, NotFound
from tokendealer.protocol.assertions import registered_key_set
from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.claims import claim_error, claims_error
from tokendealer.protocol.clients import CLIENT_SECRET, FEDERATED, PRIVATE_KEY_JWT, Client
from tokendealer.protocol.credentials import client_id_error, digest_secret, generate_secret
from tokendealer.protocol.policy import valid_audience, valid_scope_token
from tokendealer.protocol.rates import ENFORCE, RATE_LIMIT_MODES, rate_text, read_rate
from tokendealer.protocol.times import iso
from tokendealer.protocol.trusts import MAX_SUBJECT_LENGTH, trust_name_error
from tokendealer.protocol.urls import http_url_error
from tokendealer.settings import MAX_TOKEN_TTL, Rate
from tokendealer.store.base import ChangedMeanwhile, DuplicateClient, Store, UnknownClient

MAX_DESCRIPTION = 500
#: The most scope tokens and audiences a client may have, and the longest scope token.
MAX_SCOPES = 100
MAX_AUDIENCES = 100
MAX_SCOPE_LENGTH = 256
#: The longest grace period a rotated secret may keep working.
MAX_GRACE = 30 * 86400
#: The fields of a client's policy an update sets (``update``, ``differences``), in the
#: order they are shown.
POLICY = ("scopes", "audiences", "ttl", "description", "claims", "rate_limit", "rate_limit_mode")


class _Unset:
    """Marks a field an update leaves alone (``None`` is a value for ``ttl``)."""


UNSET = _Unset()


@dataclass(frozen=True)
class Registered:
    client: Client
    #: ``None`` for a client that authenticates without a secret (``private_key_jwt``).
    secret: str | None


@dataclass(frozen=True)
class Updated:
    client: Client
    #: Field -> {"from": old, "to": new}; empty when the update changed nothing.
    changes: dict[str, Any]


@dataclass(frozen=True)
class Rotated:
    client_id: str
    secret: str
    previous_valid_until: float | None


# -- checks --------------------------------------------------------------------------------


def check_id(client_id: str) -> str:
    if (reason := client_id_error(client_id)) is not None:
        raise Invalid(reason, "client_id")
    return client_id


def check_scopes(values: Iterable[str]) -> tuple[str, ...]:
    """Scope tokens (RFC 6749 §3.3), in order, without repeats; at most ``MAX_SCOPES``
    of them, each at most ``MAX_SCOPE_LENGTH`` characters. Each value is one token: one
    with a space is refused, never split (``["reports:read tokendealer:admin"]`` would
    otherwise grant a scope no entry of the list names; the console splits its text
    field itself)."""
    tokens = list(values)
    if not all(len(token) <= MAX_SCOPE_LENGTH and valid_scope_token(token) for token in tokens):
        raise Invalid(
            f"a scope is 1-{MAX_SCOPE_LENGTH} printable ASCII characters without spaces, "
            "quotes or backslashes",
            "scopes",
        )
    return _at_most(tuple(dict.fromkeys(tokens)), MAX_SCOPES, "scopes")


def check_audiences(values: Iterable[str]) -> tuple[str, ...]:
    """Audiences, in order, without repeats; at most ``MAX_AUDIENCES`` of them."""
    values = list(values)
    if not all(valid_audience(value) for value in values):
        raise Invalid("an audience is 1-512 printable ASCII characters without spaces", "audiences")
    return _at_most(tuple(dict.fromkeys(values)), MAX_AUDIENCES, "audiences")


def _at_most(values: tuple[str, ...], limit: int, name: str) -> tuple[str, ...]:
    if len(values) > limit:
        raise Invalid(f"a client has at most {limit} {name}", name)
    return values


def check_ttl(ttl: int | None) -> int | None:
    if ttl is not None and (isinstance(ttl, bool) or not 1 <= ttl <= MAX_TOKEN_TTL):
        raise Invalid(f"a token lifetime is 1-{MAX_TOKEN_TTL} seconds", "ttl")
    return ttl


def check_description(text: str) -> str:
    if len(text) > MAX_DESCRIPTION or not all(c.isprintable() for c in text):
        raise Invalid(
            f"a description is at most {MAX_DESCRIPTION} printable characters", "description"
        )
    return text.strip()


def check_claim(name: str, value: Any) -> None:
    """One claim: its name free (not one the dealer sets) and well formed, its value JSON."""
    if (reason := claim_error(name, value)) is not None:
        raise Invalid(reason, "claims")


def check_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """A client's claims (``protocol.claims``): JSON values under names the dealer does
    not set, bounded in number and size; returned ordered by name, as stored."""
    if not isinstance(claims, Mapping):
        raise Invalid("the claims are a JSON object", "claims")
    if (reason := claims_error(claims)) is not None:
        raise Invalid(reason, "claims")
    return {name: claims[name] for name in sorted(claims)}


def check_rate_limit(value: str | Rate | None) -> Rate | None:
    """A client's own rate limit, ``COUNT/UNIT`` as ``TOKENDEALER_RATE_LIMIT`` writes it
    (``1200/minute``, ``5/10 seconds``); ``None``: the service-wide limit."""
    if value is None:
        return None
    if isinstance(value, Rate):
        value = rate_text(value)
    if not isinstance(value, str):
        raise Invalid("a rate limit is a string such as 1200/minute", "rate_limit")
    try:
        return read_rate(value)
    except ValueError as exc:
        raise Invalid(str(exc), "rate_limit") from None


def check_rate_limit_mode(mode: str) -> str:
    """``enforce`` (a request over the client's own limit is refused) or ``monitor`` (it
    is logged and counted, not refused; the service-wide limit stays in force)."""
    if mode not in RATE_LIMIT_MODES:
        raise Invalid(f"rate_limit_mode is one of {', '.join(RATE_LIMIT_MODES)}", "rate_limit_mode")
    return mode


def effective_rate_limit(client: Client, default: Rate) -> dict[str, str]:
    """The per-client limit in force on ``client``'s requests: its own (``source``
    ``client``) when it enforces one, else the service-wide ``default`` (``service``),
    with its own limit as ``monitored`` when it only monitors one."""
    own = client.rate_limit
    if own is not None and client.rate_limit_mode == ENFORCE:
        return {"rate": rate_text(own), "source": "client"}
    shown = {"rate": rate_text(default), "source": "service"}
    if own is not None:
        shown["monitored"] = rate_text(own)
    return shown


#: The ways a client may be registered to authenticate.
REGISTRABLE_METHODS = (CLIENT_SECRET, PRIVATE_KEY_JWT, FEDERATED)
#: Characters read of a key file (a key set is at most ``MAX_KEY_SET_LENGTH``).
MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True)
class Authentication:
    """How a client authenticates: its method and, for ``private_key_jwt``, where its
    public keys are (``jwks_uri``) or the keys themselves (``jwks``, a JWK Set as JSON);
    for ``federated``, the trust it is bound to and the subject its tokens name, exactly
    (``subject``) or matching a glob (``subject_pattern``)."""

    method: str = CLIENT_SECRET
    jwks_uri: str | None = None
    jwks: str | None = None
    trust: str | None = None
    subject: str | None = None
    subject_pattern: str | None = None


def check_authentication(
    method: str,
    *,
    jwks_uri: str | None = None,
    jwk_text: str | None = None,
    trust: str | None = None,
    subject: str | None = None,
    subject_pattern: str | None = None,
) -> Authentication:
    """The method and its keys checked: a ``private_key_jwt`` client has exactly one of
    a key URL (http or https) and keys (a JWK, a JWK Set or a PEM public key, public
    signing keys only); a ``federated`` client a trust and exactly one of a subject and
    a subject pattern; a secret client none of these. (That the trust exists is checked
    when the client is registered.)"""
    if method not in REGISTRABLE_METHODS:
        raise Invalid(f"auth_method is one of {', '.join(REGISTRABLE_METHODS)}", "auth_method")
    if method != FEDERATED:
        for field, given in (
            ("trust", trust),
            ("subject", subject),
            ("subject_pattern", subject_pattern),
        ):
            if given is not None:
                raise Invalid(f"{field} is for federated clients", field)
    if method == FEDERATED:
        if jwks_uri is not None or jwk_text is not None:
            raise Invalid("keys are for private_key_jwt clients", "jwks_uri")
        return _federated(trust, subject, subject_pattern)
    if method == CLIENT_SECRET:
        if jwks_uri is not None or jwk_text is not None:
            raise Invalid("keys are for private_key_jwt clients", "jwks_uri")
        return Authentication()
    if (jwks_uri is None) == (jwk_text is None):
        raise Invalid("a private_key_jwt client has a jwks_uri or keys (one of them)", "jwks")
    if jwks_uri is not None:
        if (reason := http_url_error(jwks_uri)) is not None:
            raise Invalid(f"jwks_uri is {reason}", "jwks_uri")
        return Authentication(PRIVATE_KEY_JWT, jwks_uri=jwks_uri)
    try:
        return Authentication(PRIVATE_KEY_JWT, jwks=registered_key_set(jwk_text or ""))
    except ValueError as exc:
        raise Invalid(f"keys: {exc}", "jwks") from None


def _federated(
    trust: str | None, subject: str | None, subject_pattern: str | None
) -> Authentication:
    if trust is None:
        raise Invalid("a federated client is bound to a trust", "trust")
    if (reason := trust_name_error(trust)) is not None:
        raise Invalid(reason, "trust")
    if (subject is None) == (subject_pattern is None):
        raise Invalid(
            "a federated client has a subject or a subject pattern (one of them)", "subject"
        )
    field, value = (
        ("subject", subject) if subject is not None else ("subject_pattern", subject_pattern)
    )
    if not value or len(value) > MAX_SUBJECT_LENGTH or not value.isprintable():
        raise Invalid(f"{field} is 1-{MAX_SUBJECT_LENGTH} printable characters", field)
    return Authentication(FEDERATED, trust=trust, subject=subject, subject_pattern=subject_pattern)


def _authentication_of(client: Client) -> dict[str, Any]:
    """The audit trail's (and ``describe``'s) view of how a client authenticates."""
    if client.auth_method == FEDERATED:
        return {"auth_method": client.auth_method, **_binding(client)}
    return {"auth_method": client.auth_method, "jwks_uri": client.jwks_uri, "jwks": _kids(client)}


def _binding(client: Client) -> dict[str, Any]:
    """A federated client's trust and subject (or subject pattern)."""
    return {
        "trust": client.trust,
        "subject": client.subject,
        "subject_pattern": client.subject_pattern,
    }


def _kids(client: Client) -> list[str] | None:
    """The kids of a client's registered keys (the keys are public, but long)."""
    if client.jwks is None:
        return None
    keys = json.loads(client.jwks).get("keys", [])
    return [str(key.get("kid", "")) for key in keys]


# -- reading -------------------------------------------------------------------------------


async def get(store: Store, client_id: str) -> Client:
    client = await store.get_client(check_id(client_id))
    if client is None:
        raise NotFound(f"no client {client_id!r}", "client_id")
    return client


async def listing(store: Store) -> Sequence[Client]:
    return await store.list_clients()


def describe(client: Client, now: float | None = None) -> dict[str, Any]:
    """The client as every face shows it: never a secret or a digest."""
    now = time.time() if now is None else now
    grace = client.previous_expires_at
    return {
        "client_id": client.client_id,
        "description": client.description,
        "scopes": list(client.scopes),
        "audiences": list(client.audiences),
        "ttl": client.ttl,
        "claims": dict(client.claims),
        "rate_limit": None if client.rate_limit is None else rate_text(client.rate_limit),
        "rate_limit_mode": client.rate_limit_mode,
        "auth_method": client.auth_method,
        "jwks_uri": client.jwks_uri,
        "jwks": json.loads(client.jwks) if client.jwks else None,
        # A federated client's binding (only theirs).
        **(_binding(client) if client.auth_method == FEDERATED else {}),
        "disabled": client.disabled,
        "created_at": iso(client.created_at),
        "last_token_at": iso(client.last_token_at),
        "early_token_requests": client.early_token_requests,
        "previous_secret_valid_until": iso(grace) if grace and grace > now else None,
    }


# -- changes -------------------------------------------------------------------------------


def _event(actor: str, action: str, client_id: str, **details: Any) -> AuditEvent:
    return AuditEvent(actor=actor, action=action, target=f"client:{client_id}", details=details)


async def register(
    store: Store,
    client_id: str,
    *,
    actor: str,
    scopes: Iterable[str] = (),
    audiences: Iterable[str] = (),
    ttl: int | None = None,
    description: str = "",
    claims: Mapping[str, Any] | None = None,
    rate_limit: str | Rate | None = None,
    rate_limit_mode: str = ENFORCE,
    authentication: Authentication | None = None,
) -> Registered:
    """A new client and its secret, shown to the caller once; a client that signs its
    own assertions or presents its platform's tokens (``authentication``, from
    ``check_authentication``) gets none. A federated client's trust must exist."""
    auth = authentication or Authentication()
    if auth.method == FEDERATED and (
        auth.trust is None or await store.get_trust(auth.trust) is None
    ):
        raise NotFound(f"no trust {auth.trust!r}", "trust")
    secret = generate_secret() if auth.method == CLIENT_SECRET else None
    client = Client(
        client_id=check_id(client_id),
        secret_digest=digest_secret(secret) if secret is not None else "",
        auth_method=auth.method,
        jwks_uri=auth.jwks_uri,
        jwks=auth.jwks,
        trust=auth.trust,
        subject=auth.subject,
        subject_pattern=auth.subject_pattern,
        scopes=check_scopes(scopes),
        audiences=check_audiences(audiences),
        ttl=check_ttl(ttl),
        description=check_description(description),
        claims=check_claims(claims or {}),
        rate_limit=check_rate_limit(rate_limit),
        rate_limit_mode=check_rate_limit_mode(rate_limit_mode),
        created_at=time.time(),
    )
    policy = {name: _shown(getattr(client, name)) for name in POLICY}
    if auth.method != CLIENT_SECRET:
        policy.update(_authentication_of(client))
    try:
        await store.add_client(client, event=_event(actor, "client.create", client_id, **policy))
    except DuplicateClient:
        raise Conflict(f"client {client_id!r} already exists", "client_id") from None
    return Registered(client, secret)


async def update(
    store: Store,
    client_id: str,
    *,
    actor: str,
    scopes: Iterable[str] | None = None,
    audiences: Iterable[str] | None = None,
    ttl: int | _Unset | None = UNSET,
    description: str | None = None,
    add_scopes: Iterable[str] = (),
    remove_scopes: Iterable[str] = (),
    add_audiences: Iterable[str] = (),
    remove_audiences: Iterable[str] = (),
    claims: Mapping[str, Any] | None = None,
    set_claims: Mapping[str, Any] | None = None,
    remove_claims: Iterable[str] = (),
    rate_limit: str | Rate | _Unset | None = UNSET,
    rate_limit_mode: str | None = None,
    keys: Authentication | None = None,
    previous: Client | None = None,
) -> Updated:
    """Change the policy: a given field replaces the old value, ``add_*``/``remove_*``
    change one value (``set_claims`` sets or replaces the claims it names, the others
    stay); ``rate_limit=None`` gives the client back the service-wide limit. Replacing
    comes first, then removing, then adding. ``keys`` replaces where a
    ``private_key_jwt`` client's keys are (a client keeps the method it was registered
    with). Tokens already issued keep their claims; a change that changes nothing writes
    nothing.

    The change is made to the client as read now, or to ``previous``, the client as the
    caller read it earlier (``apply``'s plan): then it is written only if the client is
    still that revision, and is a ``Conflict`` if someone changed it since."""
    current = await get(store, client_id) if previous is None else previous
    new_scopes = current.scopes if scopes is None else check_scopes(scopes)
    new_scopes = _edited(new_scopes, check_scopes(add_scopes), check_scopes(remove_scopes))
    new_audiences = current.audiences if audiences is None else check_audiences(audiences)
    new_audiences = _edited(
        new_audiences, check_audiences(add_audiences), check_audiences(remove_audiences)
    )
    new_claims = dict(current.claims if claims is None else check_claims(claims))
    for name in remove_claims:
        new_claims.pop(name, None)
    new_claims.update(check_claims(set_claims or {}))
    new_claims = {name: new_claims[name] for name in sorted(new_claims)}  # as stored
    if keys is not None and keys.method != current.auth_method:
        raise Invalid(
            f"client {client_id!r} authenticates with {current.auth_method}; a client keeps "
            "the method it was registered with (register a new one)",
            "auth_method",
        )
    changed = replace(
        current,
        jwks_uri=current.jwks_uri if keys is None else keys.jwks_uri,
        jwks=current.jwks if keys is None else keys.jwks,
        scopes=new_scopes,
        audiences=new_audiences,
        ttl=current.ttl if isinstance(ttl, _Unset) else check_ttl(ttl),
        description=current.description if description is None else check_description(description),
        claims=new_claims,
        rate_limit=(
            current.rate_limit if isinstance(rate_limit, _Unset) else check_rate_limit(rate_limit)
        ),
        rate_limit_mode=(
            current.rate_limit_mode
            if rate_limit_mode is None
            else check_rate_limit_mode(rate_limit_mode)
        ),
    )
    changes = differences(current, changed)
    if (current.jwks_uri, current.jwks) != (changed.jwks_uri, changed.jwks):
        before, after = _authentication_of(current), _authentication_of(changed)
        changes["keys"] = {"from": before, "to": after}
    if not changes:
        return Updated(current, {})
    # What was added or set may pass the bounds (only a field that changes is checked
    # again, so a record stored under other bounds can still be edited otherwise).
    if "scopes" in changes:
        _at_most(new_scopes, MAX_SCOPES, "scopes")
    if "audiences" in changes:
        _at_most(new_audiences, MAX_AUDIENCES, "audiences")
    if "claims" in changes:
        check_claims(new_claims)
    try:
        await store.update_client(
            changed,
            previous=current,
            event=_event(actor, "client.update", client_id, changed=changes),
        )
    except ChangedMeanwhile:
        raise Conflict(
            f"client {client_id!r} changed while this update was made; read it and try again"
        ) from None
    return Updated(changed, changes)


class Policy(Protocol):
    """What ``differences`` compares: a ``Client``, or a client as a file states it."""

    @property
    def scopes(self) -> tuple[str, ...]: ...
    @property
    def audiences(self) -> tuple[str, ...]: ...
    @property
    def ttl(self) -> int | None: ...
    @property
    def description(self) -> str: ...
    @property
    def claims(self) -> Mapping[str, Any]: ...
    @property
    def rate_limit(self) -> Rate | None: ...
    @property
    def rate_limit_mode(self) -> str: ...


def differences(current: Policy, changed: Policy) -> dict[str, dict[str, Any]]:
    """Field of ``POLICY`` -> ``{"from": current, "to": changed}`` for each that differs,
    as ``client.update`` records it. Values are compared as the store writes them, as
    JSON: ``1``, ``1.0`` and ``true`` are three values (Python finds them equal)."""
    return {
        name: {"from": _shown(getattr(current, name)), "to": _shown(getattr(changed, name))}
        for name in POLICY
        if _canonical(getattr(current, name)) != _canonical(getattr(changed, name))
    }


def _canonical(value: Any) -> str:
    return json.dumps(_shown(value), sort_keys=True, separators=(",", ":"))


def _edited(
    values: tuple[str, ...], added: tuple[str, ...], removed: tuple[str, ...]
) -> tuple[str, ...]:
    kept = [value for value in values if value not in removed]
    return tuple(dict.fromkeys([*kept, *added]))


def _shown(value: Any) -> Any:
    if isinstance(value, Rate):
        return rate_text(value)
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


async def rotate_secret(store: Store, client_id: str, *, actor: str, grace: int) -> Rotated:
    """A new secret; the old one keeps working ``grace`` seconds. No grace: the secret is
    being replaced at once, as for a leak, so the tokens it got are revoked with it."""
    if isinstance(grace, bool) or not 0 <= grace <= MAX_GRACE:
        raise Invalid(f"a grace period is 0-{MAX_GRACE} seconds", "grace")
    method = (await get(store, client_id)).auth_method
    if method != CLIENT_SECRET:
        raise Conflict(f"client {client_id!r} authenticates with {method}: it has no secret")
    secret = generate_secret()
    until = time.time() + grace
    event = _event(actor, "client.rotate_secret", client_id, grace=grace, revoke_tokens=grace == 0)
    try:
        await store.rotate_secret(
            check_id(client_id), digest_secret(secret), until, revoke_tokens=grace == 0, event=event
        )
    except UnknownClient:
        raise NotFound(f"no client {client_id!r}", "client_id") from None
    return Rotated(client_id, secret, until if grace else None)


async def disable(store: Store, client_id: str, *, actor: str, revoke_tokens: bool) -> None:
    event = _event(actor, "client.disable", client_id, revoke_tokens=revoke_tokens)
    try:
        await store.set_disabled(
            check_id(client_id), True, revoke_tokens=revoke_tokens, event=event
        )
    except UnknownClient:
        raise NotFound(f"no client {client_id!r}", "client_id") from None


async def enable(store: Store, client_id: str, *, actor: str) -> None:
    event = _event(actor, "client.enable", client_id)
    try:
        await store.set_disabled(check_id(client_id), False, event=event)
    except UnknownClient:
        raise NotFound(f"no client {client_id!r}", "client_id") from None


async def remove(store: Store, client_id: str, *, actor: str) -> None:
    try:
        await store.remove_client(
            check_id(client_id), event=_event(actor, "client.remove", client_id)
        )
    except UnknownClient:
        raise NotFound(f"no client {client_id!r}", "client_id") from None
