"""Client authentication (RFC 6749 §2.3): one chain for every endpoint where a client
authenticates (token, introspection, revocation, and any added later).

A method is a ``ClientAuthMethod``: it says whether a request uses it (``used_by``),
reads its credentials (``read``) and verifies them (``verify``). ``METHODS`` lists them in
order; the metadata's ``*_auth_methods_supported`` are their names. Adding a method
(``private_key_jwt``, say) is one class in that list. "The client MUST NOT use more than
one authentication method in each request" (§2.3): a request that uses two is refused.

The secret methods are ``client_secret_basic`` (HTTP Basic, §2.3.1 and Appendix B) and
``client_secret_post`` (``client_id`` and ``client_secret`` in the form body). Every
failure, whatever its cause (unknown id, wrong secret, disabled client), raises the same
``InvalidClient`` after the same work: the presented secret is always digested and
compared, against a dummy digest when the client does not exist.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
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
class Presentation:
    """What a request presents for client authentication: its one Authorization header
    (None without one) and its form parameters."""

    authorization: str | None
    params: Mapping[str, str]


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    #: The name of the ``ClientAuthMethod`` that read them.
    method: str


class ClientAuthMethod(Protocol):
    name: str

    def used_by(self, presented: Presentation) -> bool:
        """Whether the request uses this method (whether or not it uses it well)."""

    def read(self, presented: Presentation) -> Credentials:
        """The credentials; malformed ones raise ``InvalidClient`` or ``InvalidRequest``."""

    async def verify(self, credentials: Credentials, registry: ClientRegistry) -> Client:
        """The authenticated, enabled client, or ``InvalidClient``."""


class ClientSecretBasic:
    name = "client_secret_basic"

    def used_by(self, presented: Presentation) -> bool:
        return presented.authorization is not None

    def read(self, presented: Presentation) -> Credentials:
        credentials = _parse_basic(presented.authorization or "")
        # A client_id in the body alongside Basic is tolerated only if it says the same.
        body_id = presented.params.get("client_id")
        if body_id is not None and body_id != credentials.client_id:
            raise InvalidRequest("Use one client authentication method, not two.")
        return credentials

    async def verify(self, credentials: Credentials, registry: ClientRegistry) -> Client:
        return await _verify_secret(credentials, registry)


class ClientSecretPost:
    name = "client_secret_post"

    def used_by(self, presented: Presentation) -> bool:
        params = presented.params
        # With Basic, a body client_id alone only repeats the header's (see Basic).
        return "client_secret" in params or (
            "client_id" in params and presented.authorization is None
        )

    def read(self, presented: Presentation) -> Credentials:
        params = presented.params
        if "client_id" not in params or "client_secret" not in params:
            raise InvalidClient()
        return Credentials(params["client_id"], params["client_secret"], self.name)

    async def verify(self, credentials: Credentials, registry: ClientRegistry) -> Client:
        return await _verify_secret(credentials, registry)


#: Every method this server accepts, by name, in the order they are tried.
METHODS: Sequence[ClientAuthMethod] = (ClientSecretBasic(), ClientSecretPost())
METHOD_NAMES = tuple(method.name for method in METHODS)
_BY_NAME = {method.name: method for method in METHODS}


def read_credentials(presented: Presentation) -> Credentials:
    """The credentials of the one method the request uses (``InvalidClient`` with none,
    ``InvalidRequest`` with two)."""
    used = [method for method in METHODS if method.used_by(presented)]
    if not used:
        raise InvalidClient()
    if len(used) > 1:
        raise InvalidRequest("Use one client authentication method, not two.")
    return used[0].read(presented)


async def authenticate(registry: ClientRegistry, credentials: Credentials) -> Client:
    """The authenticated, enabled client, or ``InvalidClient``."""
    return await _BY_NAME[credentials.method].verify(credentials, registry)


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
    return Credentials(client_id, client_secret, ClientSecretBasic.name)


def _secret_accepted(client: Client | None, presented: str, now: float) -> bool:
    """Compare against the current and the previous secret: always both, same work."""
    digest = digest_secret(presented)
    current = digest_matches(digest, client.secret_digest if client else None)
    previous_digest = None
    if client and client.previous_expires_at and client.previous_expires_at > now:
        previous_digest = client.previous_secret_digest
    previous = digest_matches(digest, previous_digest)
    return current or previous


async def _verify_secret(credentials: Credentials, registry: ClientRegistry) -> Client:
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
