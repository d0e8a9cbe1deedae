"""What a client may ask for: scopes (RFC 6749 §3.3) and audience (RFC 8707), and which
tokens it may introspect (RFC 7662 §4)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tokendealer.protocol.clients import Client
from tokendealer.protocol.errors import ADMIN_SCOPE, InvalidRequest, InvalidScope, InvalidTarget

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
AUDIENCE_PATTERN = re.compile(r"[\x21-\x7e]{1,512}")
#: RFC 3986 §4.3 absolute-URI (scheme ":" hier-part [ "?" query ], no fragment), with a
#: non-empty part after the scheme: https://api.example and urn:example:orders alike.
ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^#]+")


def valid_scope_token(token: str) -> bool:
    return SCOPE_TOKEN.fullmatch(token) is not None


def valid_audience(audience: str) -> bool:
    return AUDIENCE_PATTERN.fullmatch(audience) is not None


def resolve_scope(client: Client, requested: str | None) -> tuple[str, ...]:
    """The requested scopes must be a subset of the client's; none requested -> all of
    them but the admin scope, which a token carries only when asked for by name (so that
    a client's everyday tokens are never admin credentials)."""
    if requested is None:
        return tuple(scope for scope in client.scopes if scope != ADMIN_SCOPE)
    tokens = requested.split(" ")
    if not all(valid_scope_token(token) for token in tokens):
        raise InvalidScope("The scope parameter is malformed.")
    granted = tuple(dict.fromkeys(tokens))  # order kept, duplicates dropped
    if not set(granted) <= set(client.scopes):
        raise InvalidScope()
    return granted


def resolve_audience(client: Client, params: Mapping[str, str], default: str) -> str:
    """One audience: the requested one if the client may have it, else its first one.

    ``audience`` is the book's parameter; ``resource`` is RFC 8707's, which "MUST be an
    absolute URI ... MUST NOT include a fragment component".
    """
    audience = params.get("audience")
    resource = params.get("resource")
    if audience is not None and resource is not None:
        raise InvalidRequest("Use audience or resource, not both.")
    if resource is not None:
        if not ABSOLUTE_URI.fullmatch(resource):
            raise InvalidTarget("The resource must be an absolute URI without fragment.")
        audience = resource
    allowed = client.audiences or (default,)
    if audience is None:
        return allowed[0]
    if audience not in allowed:
        raise InvalidTarget()
    return audience


def may_introspect(caller: Client, claims: Mapping[str, Any], default: str) -> bool:
    """Whether ``caller`` may learn that a token with ``claims`` is active.

    A client sees its own tokens, and tokens for an audience it is registered with (a
    resource server registered with ``--audience`` its own identifier); a client
    registered with none is associated with the service's default audience.
    """
    if claims["client_id"] == caller.client_id:
        return True
    aud = claims["aud"]
    token_audiences = {aud} if isinstance(aud, str) else set(aud)
    return not token_audiences.isdisjoint(caller.audiences or (default,))
