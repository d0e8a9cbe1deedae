"""Client authentication at the token endpoint (RFC 6749 §2.3.1).

Two methods: ``client_secret_basic`` (HTTP Basic, RFC 6749 §2.3.1 and Appendix B) and
``client_secret_post`` (``client_id`` and ``client_secret`` in the form body). "The
client MUST NOT use more than one authentication method in each request."

Every failure, whatever its cause (unknown id, wrong secret, disabled client), raises the
same ``InvalidClient`` after the same work: the presented secret is always digested and
compared, against a dummy digest when the client does not exist.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import (
    MAX_SECRET_LENGTH,
    digest_matches,
    digest_secret,
    valid_client_id,
)
from tokendealer.protocol.errors import InvalidClient, InvalidRequest
from tokendealer.service.registry import ClientRegistry

MAX_AUTHORIZATION_LENGTH = 2048


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    method: str  # "client_secret_basic" or "client_secret_post"


def _parse_basic(header: str) -> Credentials:
    """RFC 6749 Appendix B: each part is form-urlencoded, then joined by ':' and base64'd."""
    if len(header) > MAX_AUTHORIZATION_LENGTH:
        raise InvalidClient()
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise InvalidClient()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        # Split at the *last* colon. A client following Appendix B sends a ':' in its id
        # as %3A, so both splits agree; many clients (Authlib, httpx) skip the encoding,
        # and since secrets issued here never contain ':', '%' or '+', the last colon
        # still separates id from secret and unquoting a raw id changes nothing.
        client_id, sep, client_secret = decoded.rpartition(":")
        if not sep:
            raise InvalidClient()
        client_id = unquote_plus(client_id, errors="strict")
        client_secret = unquote_plus(client_secret, errors="strict")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidClient() from None
    return Credentials(client_id, client_secret, "client_secret_basic")


def credentials_from(authorization: str | None, params: Mapping[str, str]) -> Credentials:
    """Pick the one authentication method the request used."""
    in_body = "client_id" in params or "client_secret" in params
    if authorization is not None:
        if "client_secret" in params:
            raise InvalidRequest("Use one client authentication method, not two.")
        credentials = _parse_basic(authorization)
        # A client_id in the body alongside Basic is tolerated only if it says the same.
        if "client_id" in params and params["client_id"] != credentials.client_id:
            raise InvalidRequest("Use one client authentication method, not two.")
        return credentials
    if in_body:
        if "client_id" not in params or "client_secret" not in params:
            raise InvalidClient()
        return Credentials(params["client_id"], params["client_secret"], "client_secret_post")
    raise InvalidClient()


def _secret_accepted(client: Client | None, presented: str, now: float) -> bool:
    """Compare against the current and the previous secret: always both, same work."""
    digest = digest_secret(presented)
    current = digest_matches(digest, client.secret_digest if client else None)
    previous_digest = None
    if client and client.previous_expires_at and client.previous_expires_at > now:
        previous_digest = client.previous_secret_digest
    previous = digest_matches(digest, previous_digest)
    return current or previous


async def authenticate(registry: ClientRegistry, credentials: Credentials) -> Client:
    """Return the authenticated, enabled client or raise InvalidClient."""
    client_id, secret = credentials.client_id, credentials.client_secret
    # Only an id that could have been registered is looked up: nothing else exists, and
    # the rest (NUL, which PostgreSQL refuses in text, control characters, 10 kB ids)
    # must not reach the store. Lengths are capped before any hashing.
    if not valid_client_id(client_id) or len(secret) > MAX_SECRET_LENGTH:
        client = None
    else:
        client = await registry.get(client_id)
    accepted = _secret_accepted(client, secret[:MAX_SECRET_LENGTH], time.time())
    if client is None or not accepted or client.disabled:
        raise InvalidClient()
    return client
