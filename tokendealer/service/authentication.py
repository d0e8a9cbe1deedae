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

``private_key_jwt`` (RFC 7523 §2.2) reads a JWT client assertion
(``client_assertion_type`` and ``client_assertion``) signed with the client's own private
key, checked against the keys it registered or publishes (``tokendealer.protocol.
assertions``); its ``jti`` is used once, across workers and replicas (the store). A client
authenticates only with the method it is registered for: a secret presented for a
``private_key_jwt`` client, or an assertion for a secret client, is ``invalid_client``.
Why an assertion failed is logged, never answered.

A ``federated`` client (workload identity) sends the same two parameters, with its
``client_id``: its assertion is a token of the workload platform it runs on (a
Kubernetes service-account token, a SPIFFE JWT-SVID, a GitHub Actions OIDC token),
signed by the issuer of the trust it is bound to, for the trust's audience, naming the
subject it is bound to (``assertions.verify_federated``). Such a token is presented
again and again until the platform renews it: its ``jti``, if any, is not used once.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol
from urllib.parse import unquote_plus

from tokendealer.observe import events
from tokendealer.protocol import assertions
from tokendealer.protocol.assertions import ASSERTION_TYPE, AssertionRejected
from tokendealer.protocol.clients import CLIENT_SECRET, FEDERATED, PRIVATE_KEY_JWT, Client
from tokendealer.protocol.credentials import (
    MAX_SECRET_LENGTH,
    digest_matches,
    digest_secret,
    valid_client_id,
)
from tokendealer.protocol.errors import InvalidClient, InvalidRequest
from tokendealer.service.client_keys import ClientKeys
from tokendealer.service.registry import ClientRegistry
from tokendealer.service.trusts import TrustRegistry
from tokendealer.settings import Settings
from tokendealer.store import Store, UsedAssertion

MAX_AUTHORIZATION_LENGTH = 2048


@dataclass(frozen=True)
class Authenticator:
    """What verifying a client needs: its record, its keys, the used assertions, the
    trusted issuers, and the settings that bound assertions."""

    registry: ClientRegistry
    store: Store
    keys: ClientKeys
    settings: Settings
    trusts: TrustRegistry

    @classmethod
    def of(cls, registry: ClientRegistry, store: Store, settings: Settings) -> Authenticator:
        keys = ClientKeys(settings.client_jwks_timeout)
        return cls(registry, store, keys, settings, TrustRegistry(store, settings.client_cache_ttl))


@dataclass(frozen=True)
class Presentation:
    """What a request presents for client authentication: its one Authorization header
    (None without one), its form parameters and the path of the endpoint called."""

    authorization: str | None
    params: Mapping[str, str]
    path: str = ""


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    #: The name of the ``ClientAuthMethod`` that read them.
    method: str
    #: ``private_key_jwt``: the assertion, and the path of the endpoint it was sent to.
    assertion: str = ""
    path: str = ""


class ClientAuthMethod(Protocol):
    name: str

    def used_by(self, presented: Presentation) -> bool:
        """Whether the request uses this method (whether or not it uses it well)."""

    def read(self, presented: Presentation) -> Credentials:
        """The credentials; malformed ones raise ``InvalidClient`` or ``InvalidRequest``."""

    async def verify(self, credentials: Credentials, auth: Authenticator) -> Client:
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

    async def verify(self, credentials: Credentials, auth: Authenticator) -> Client:
        return await _verify_secret(credentials, auth.registry)


class ClientSecretPost:
    name = "client_secret_post"

    def used_by(self, presented: Presentation) -> bool:
        params = presented.params
        # With Basic, a body client_id alone only repeats the header's (see Basic); with
        # an assertion, the assertion's.
        return "client_secret" in params or (
            "client_id" in params
            and presented.authorization is None
            and not PrivateKeyJwt.used_by_params(params)
        )

    def read(self, presented: Presentation) -> Credentials:
        params = presented.params
        if "client_id" not in params or "client_secret" not in params:
            raise InvalidClient()
        return Credentials(params["client_id"], params["client_secret"], self.name)

    async def verify(self, credentials: Credentials, auth: Authenticator) -> Client:
        return await _verify_secret(credentials, auth.registry)


class PrivateKeyJwt:
    """RFC 7523 §2.2: a JWT signed with the client's private key, in the form body."""

    name = "private_key_jwt"

    @staticmethod
    def used_by_params(params: Mapping[str, str]) -> bool:
        return "client_assertion" in params or "client_assertion_type" in params

    def used_by(self, presented: Presentation) -> bool:
        return self.used_by_params(presented.params)

    def read(self, presented: Presentation) -> Credentials:
        params = presented.params
        assertion = params.get("client_assertion", "")
        # RFC 7521 §4.2: both parameters; the type is the one of a JWT.
        if params.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            raise InvalidClient()
        # RFC 7521 §4.2: client_id is optional; the assertion's subject names the client.
        # A client_id that names another client fails the assertion's checks (logged).
        client_id = params.get("client_id")
        if client_id is None:
            client_id = assertions.peek_subject(assertion)
        if client_id is None:
            raise InvalidClient()
        return Credentials(client_id, "", self.name, assertion, presented.path)

    async def verify(self, credentials: Credentials, auth: Authenticator) -> Client:
        client_id = credentials.client_id
        client = await auth.registry.get(client_id) if valid_client_id(client_id) else None
        if client is not None and not client.disabled and client.auth_method == FEDERATED:
            return await _verify_federated(client, credentials.assertion, auth)
        if client is None or client.disabled or client.auth_method != PRIVATE_KEY_JWT:
            _rejected("no enabled private_key_jwt or federated client by that id", client)
        settings = auth.settings
        try:
            header = assertions.header(credentials.assertion)
            keys = await auth.keys.keys(client, header.get("kid"))
            accepted = assertions.verify(
                credentials.assertion,
                header,
                keys,
                client_id=client_id,
                audiences={settings.issuer, settings.issuer.rstrip("/") + credentials.path},
                max_age=settings.assertion_max_age,
                leeway=settings.leeway,
                now=time.time(),
            )
        except AssertionRejected as exc:
            _rejected(str(exc), client)
        try:
            await auth.store.use_assertion(client_id, accepted.jti, accepted.expires_at)
        except UsedAssertion:
            _rejected("the assertion's jti was used already (a replay)", client)
        return client


async def _verify_federated(client: Client, assertion: str, auth: Authenticator) -> Client:
    """A workload platform's token, for the client bound to it (see the module's text)."""
    trust = await auth.trusts.get(client.trust) if client.trust else None
    if trust is None or not trust.jwks_uri:
        _rejected(f"the client's trust {client.trust!r} does not exist", client)
    try:
        header = assertions.header(assertion)
        keys = await auth.keys.published(trust.jwks_uri, header.get("kid"))
        assertions.verify_federated(
            assertion,
            header,
            keys,
            issuer=trust.issuer,
            audience=trust.audience,
            subject=client.subject,
            subject_pattern=client.subject_pattern,
            leeway=auth.settings.leeway,
        )
    except AssertionRejected as exc:
        _rejected(f"trust {trust.name!r}: {exc}", client)
    return client


class ClientRejected(InvalidClient):
    """A failed client authentication, answered as every other ``invalid_client``; the
    method, the reason and whether the client is registered are for the log and the
    metrics only (``authenticate`` reports them)."""

    def __init__(self, method: str, reason: str, client: Client | None) -> None:
        super().__init__()
        self.method = method
        self.reason = reason
        #: The registered client it claimed to be, if any (only then is its id logged).
        self.client = client


def _rejected(reason: str, client: Client | None) -> NoReturn:
    method = FEDERATED if client is not None and client.auth_method == FEDERATED else None
    raise ClientRejected(method or PrivateKeyJwt.name, reason, client)


#: Every method this server accepts, by name, in the order they are tried.
METHODS: Sequence[ClientAuthMethod] = (ClientSecretBasic(), ClientSecretPost(), PrivateKeyJwt())
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


async def authenticate(auth: Authenticator, credentials: Credentials) -> Client:
    """The authenticated, enabled client, or ``InvalidClient`` (the failure reported to
    the log and the metrics: ``events.client_auth_failed``)."""
    try:
        return await _BY_NAME[credentials.method].verify(credentials, auth)
    except ClientRejected as rejected:
        registered = rejected.client.client_id if rejected.client is not None else None
        events.client_auth_failed(rejected.method, rejected.reason, registered)
        raise


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
    if client is None or not accepted or client.disabled or client.auth_method != CLIENT_SECRET:
        raise ClientRejected(credentials.method, _secret_refusal(client, accepted), client)
    return client


def _secret_refusal(client: Client | None, accepted: bool) -> str:
    """Why a secret did not authenticate (for the log)."""
    if client is None:
        return "no client by that id"
    if client.auth_method != CLIENT_SECRET:
        return f"the client authenticates with {client.auth_method}, not a secret"
    if not accepted:
        return "wrong secret"
    return "the client is disabled"
