"""The registered client (RFC 6749 §2): what the dealer knows of each, free of storage."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokendealer.protocol.rates import ENFORCE
from tokendealer.settings import Rate

#: How a client authenticates (RFC 6749 §2.3, RFC 7523 §2.2): with its secret (HTTP
#: Basic or the form body), with a JWT signed by its own private key, or with a token
#: of a workload platform it is bound to.
CLIENT_SECRET = "client_secret"  # noqa: S105 # nosec B105 - a method name, not a password
PRIVATE_KEY_JWT = "private_key_jwt"
FEDERATED = "federated"
AUTH_METHODS = (CLIENT_SECRET, PRIVATE_KEY_JWT, FEDERATED)


def new_token_epoch() -> str:
    """A fresh, unguessable token epoch (see ``Client.token_epoch``)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Client:
    """A registered client. Secrets are held only as digests; a client that authenticates
    otherwise has none (an empty digest, which no secret matches)."""

    client_id: str
    secret_digest: str
    scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    ttl: int | None = None
    disabled: bool = False
    created_at: float = 0.0
    #: The secret replaced by the last rotation, accepted until ``previous_expires_at``.
    previous_secret_digest: str | None = None
    previous_expires_at: float | None = None
    #: Every token carries the epoch of the record that minted it, and only tokens of the
    #: current epoch are honoured. A registration starts a new epoch, and so does
    #: revoking the client's tokens (``disable --revoke-tokens``, an immediate secret
    #: rotation): a token minted from a stale cached record, even after the change, then
    #: carries the old epoch and is refused.
    token_epoch: str = field(default_factory=new_token_epoch)
    #: Free text for people: what the client is, who owns it.
    description: str = ""
    #: When the client last got a token, recorded at most once a minute (so that issuing
    #: stays free of a write per token); ``None`` when never, as far as recorded.
    last_token_at: float | None = None
    #: One of ``AUTH_METHODS``.
    auth_method: str = CLIENT_SECRET
    #: ``private_key_jwt``: where its public keys are published, or the keys themselves
    #: (a JWK Set, as JSON text).
    jwks_uri: str | None = None
    jwks: str | None = None
    #: ``federated``: the trusted issuer (its name) and the subject its token must carry,
    #: exactly or matching a glob pattern.
    trust: str | None = None
    subject: str | None = None
    subject_pattern: str | None = None
    #: Static claims copied into each of its access tokens and introspection answers.
    #: Never mutated: a change is a new record.
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: The client's own limit on its requests to the OAuth endpoints, in place of the
    #: service-wide one (``TOKENDEALER_RATE_LIMIT``); ``None``: the service-wide one.
    rate_limit: Rate | None = None
    #: What ``rate_limit`` does (``protocol.rates``): ``enforce`` (over it: 429) or
    #: ``monitor`` (over it: recorded only; the service-wide limit stays in force).
    rate_limit_mode: str = ENFORCE
    #: Token requests the client made while it still held a token with more than half
    #: its lifetime left, as counted so far: a client that does not cache its tokens.
    early_token_requests: int = 0
    #: Incremented by each change of the policy (what ``update_client`` writes), so that a
    #: change computed from one revision is written only over that revision.
    revision: int = 0
