"""Trusted issuers, administered (workload identity federation): add, list, show,
remove.

Adding a trust finds the issuer's keys once: at ``jwks_uri`` when given, else by OpenID
discovery (``ISSUER/.well-known/openid-configuration``, which Kubernetes API servers,
SPIFFE OIDC discovery providers and GitHub Actions serve), whose ``issuer`` must be the
one given, exactly. The key URL found is stored with the trust: requests never run
discovery (an issuer that moves its keys to another URL is added again). The key set is
fetched once to check it holds a usable signing key; the token endpoint fetches it again
as it needs (``service.client_keys``). A trust with clients bound to it is not removed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx

from tokendealer.admin.errors import Conflict, Invalid, NotFound
from tokendealer.protocol.assertions import key_set
from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.policy import valid_audience
from tokendealer.protocol.times import iso
from tokendealer.protocol.trusts import Trust, trust_name_error
from tokendealer.protocol.urls import http_url_error
from tokendealer.store.base import DuplicateTrust, Store, TrustInUse, UnknownTrust

DISCOVERY_PATH = "/.well-known/openid-configuration"
#: The largest discovery document or key set read.
MAX_DOCUMENT_BYTES = 64 * 1024


def check_name(name: str) -> str:
    if (reason := trust_name_error(name)) is not None:
        raise Invalid(reason, "trust_name")
    return name


def check_url(value: str, field: str) -> str:
    """An http(s) URL the dealer may fetch (``protocol.urls``)."""
    if (reason := http_url_error(value)) is not None:
        raise Invalid(f"{field} is {reason}", field)
    return value


def check_audience(value: str) -> str:
    if not valid_audience(value):
        raise Invalid("an audience is 1-512 printable ASCII characters without spaces", "audience")
    return value


def describe(trust: Trust) -> dict[str, Any]:
    return {
        "name": trust.name,
        "issuer": trust.issuer,
        "jwks_uri": trust.jwks_uri,
        "audience": trust.audience,
        "created_at": iso(trust.created_at),
    }


async def get(store: Store, name: str) -> Trust:
    trust = await store.get_trust(check_name(name))
    if trust is None:
        raise NotFound(f"no trust {name!r}", "trust_name")
    return trust


async def listing(store: Store) -> Sequence[Trust]:
    return await store.list_trusts()


async def _document(http: httpx.AsyncClient, url: str, field: str, seconds: float) -> Any:
    """The JSON document at ``url``, fetched within ``seconds``; ``Invalid`` (one line)
    when it cannot be had."""
    try:
        async with (
            asyncio.timeout(seconds),
            http.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise Invalid(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes", field)
            if response.status_code != 200:
                raise Invalid(f"{url} answered HTTP {response.status_code}", field)
    except TimeoutError:
        raise Invalid(f"cannot fetch {url}: no answer within {seconds:g} s", field) from None
    except httpx.HTTPError as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise Invalid(f"cannot fetch {url}: {reason}", field) from None
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise Invalid(f"{url} is not JSON", field) from None


async def discover(http: httpx.AsyncClient, issuer: str, seconds: float) -> str:
    """The ``jwks_uri`` of ``issuer``'s OpenID discovery document, whose ``issuer`` must
    be ``issuer`` exactly."""
    url = issuer.rstrip("/") + DISCOVERY_PATH
    document = await _document(http, url, "issuer", seconds)
    if not isinstance(document, dict):
        raise Invalid(f"{url} is not a discovery document", "issuer")
    if document.get("issuer") != issuer:
        raise Invalid(
            f"{url} names the issuer {str(document.get('issuer'))[:200]!r}, not {issuer!r}",
            "issuer",
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise Invalid(f"{url} has no jwks_uri: give --jwks-uri", "issuer")
    return check_url(jwks_uri, "jwks_uri")


async def add(
    store: Store,
    name: str,
    *,
    actor: str,
    issuer: str,
    audience: str,
    jwks_uri: str | None = None,
    seconds: float = 3.0,
    http: httpx.AsyncClient | None = None,
) -> Trust:
    """Trust ``issuer`` under ``name``: its keys found (``jwks_uri``, else discovery) and
    checked, each document fetched within ``seconds``, the trust recorded with its
    audit event."""
    trust = Trust(
        name=check_name(name),
        issuer=check_url(issuer, "issuer"),
        jwks_uri=check_url(jwks_uri, "jwks_uri") if jwks_uri is not None else "",
        audience=check_audience(audience),
        created_at=time.time(),
    )
    if await store.get_trust(name) is not None:
        raise Conflict(f"trust {name!r} already exists", "trust_name")
    async with httpx.AsyncClient(timeout=seconds) if http is None else _borrowed(http) as client:
        if not trust.jwks_uri:
            trust = replace(trust, jwks_uri=await discover(client, issuer, seconds))
        keys = await _document(client, trust.jwks_uri, "jwks_uri", seconds)
    try:
        key_set(keys)
    except ValueError as exc:
        raise Invalid(f"{trust.jwks_uri}: {exc}", "jwks_uri") from None
    details = {
        "issuer": trust.issuer,
        "jwks_uri": trust.jwks_uri,
        "audience": trust.audience,
        "discovered": jwks_uri is None,
    }
    event = AuditEvent(actor=actor, action="trust.create", target=f"trust:{name}", details=details)
    try:
        await store.add_trust(trust, event=event)
    except DuplicateTrust:
        raise Conflict(f"trust {name!r} already exists", "trust_name") from None
    return trust


class _borrowed:
    """A caller's HTTP client, used without closing it."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.http

    async def __aexit__(self, *exc: object) -> None:
        return None


async def remove(store: Store, name: str, *, actor: str) -> None:
    """Remove the trust; refused while clients are bound to it."""
    event = AuditEvent(actor=actor, action="trust.remove", target=f"trust:{name}")
    try:
        await store.remove_trust(check_name(name), event=event)
    except UnknownTrust:
        raise NotFound(f"no trust {name!r}", "trust_name") from None
    except TrustInUse as exc:
        shown = ", ".join(exc.clients[:10]) + (", ..." if len(exc.clients) > 10 else "")
        raise Conflict(
            f"trust {name!r} has {len(exc.clients)} client(s) bound to it ({shown}): "
            "remove them first"
        ) from None
