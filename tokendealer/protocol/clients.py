"""The registered client (RFC 6749 §2): what the dealer knows of each, free of storage."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


def new_token_epoch() -> str:
    """A fresh, unguessable token epoch (see ``Client.token_epoch``)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Client:
    """A registered client. Secrets are held only as digests."""

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
