"""The storage interface and its errors; the records it holds are the protocol layer's
(``tokendealer.protocol.clients``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from tokendealer.protocol.admins import Admin
from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.clients import Client
from tokendealer.protocol.trusts import Trust
from tokendealer.store.signing_keys import KeyChange, SealedKey

T = TypeVar("T")


class StoreError(Exception):
    """A store operation failed; the message is one line fit for an operator."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or read."""


class StoreRefused(StoreError):
    """The database refused a value of the request (not an outage)."""


class DuplicateClient(StoreError):
    pass


class UnknownClient(StoreError):
    pass


class ChangedMeanwhile(StoreError):
    """A conditional write found the record changed since it was read."""


class DuplicateAdmin(StoreError):
    pass


class UnknownAdmin(StoreError):
    pass


class DuplicateTrust(StoreError):
    pass


class UnknownTrust(StoreError):
    pass


class TrustInUse(StoreError):
    """A trust still has clients bound to it (``clients``, their ids)."""

    def __init__(self, message: str, clients: Sequence[str]) -> None:
        super().__init__(message)
        self.clients = tuple(clients)


class UsedAssertion(StoreError):
    """A client assertion's ``jti`` was used already (a replay)."""


class Store(Protocol):
    """What the service and the CLI need from storage. Every write is one transaction."""

    async def open(self, *, seconds: float = ..., create: bool = ...) -> None:
        """Connect and bring the schema up to date, within ``seconds``. ``create=False``:
        a database that does not exist yet is a StoreError, not a new empty one."""

    async def close(self) -> None: ...

    def watch_clients(self, watcher: Callable[[str], None]) -> None:
        """Call ``watcher(client_id)`` after each change of a client written here."""

    async def get_client(self, client_id: str) -> Client | None: ...

    async def list_clients(self) -> Sequence[Client]: ...

    async def rate_limited_clients(self) -> Sequence[Client]:
        """The clients with a rate limit of their own (``Client.rate_limit``), by id."""

    # Each change takes the audit ``event`` that records it, written in the same
    # transaction: a change that fails records nothing.

    async def add_client(self, client: Client, *, event: AuditEvent | None = None) -> None:
        """Raise DuplicateClient when the id exists."""

    async def update_client(
        self,
        client: Client,
        *,
        previous: Client | None = None,
        event: AuditEvent | None = None,
    ) -> None:
        """Replace the whole policy of ``client.client_id`` with ``client``'s: scopes,
        audiences, TTL, description, claims, rate limit and its mode, and how it
        authenticates (``auth_method``, ``jwks_uri``, ``jwks``, ``trust``, ``subject``,
        ``subject_pattern``); its secrets, state, token epoch and counts stay, and its
        ``revision`` goes up by one. With ``previous`` (the record the change was computed
        from), only if the stored ``revision`` is still ``previous.revision``: otherwise
        ChangedMeanwhile (a removed client too); without, UnknownClient when there is no
        such client."""

    async def rotate_secret(
        self,
        client_id: str,
        new_digest: str,
        grace_until: float,
        *,
        revoke_tokens: bool = False,
        event: AuditEvent | None = None,
    ) -> None:
        """Replace the secret; the old one stays valid until ``grace_until``.
        ``revoke_tokens`` starts a new token epoch."""

    async def set_disabled(
        self,
        client_id: str,
        disabled: bool,
        *,
        revoke_tokens: bool = False,
        event: AuditEvent | None = None,
    ) -> None:
        """``revoke_tokens`` starts a new token epoch: every token issued so far is refused."""

    async def record_token_issued(self, client_id: str, at: float, *, every: float) -> None:
        """Note a token issued at ``at``, at most once per ``every`` seconds per client."""

    async def add_early_token_requests(self, counts: Mapping[str, int]) -> None:
        """Add each count to its client's ``early_token_requests``, in one transaction;
        unknown ids are ignored. A negative count is a ValueError, and nothing is added."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial query."""

    async def remove_client(self, client_id: str, *, event: AuditEvent | None = None) -> None: ...

    async def record(self, event: AuditEvent) -> None:
        """An audit event that goes with no change in the store (a sign-in, key files)."""

    async def audit_events(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEvent]:
        """Newest first, each given filter matched exactly (``since``: at or after)."""

    async def get_admin(self, name: str) -> Admin | None: ...

    async def list_admins(self) -> Sequence[Admin]: ...

    async def add_admin(self, admin: Admin, *, event: AuditEvent | None = None) -> None: ...

    async def set_admin_password(
        self, name: str, password_hash: str, at: float, *, event: AuditEvent | None = None
    ) -> None: ...

    async def remove_admin(self, name: str, *, event: AuditEvent | None = None) -> None: ...

    async def get_trust(self, name: str) -> Trust | None: ...

    async def list_trusts(self) -> Sequence[Trust]: ...

    async def add_trust(self, trust: Trust, *, event: AuditEvent | None = None) -> None:
        """Raise DuplicateTrust when the name exists."""

    async def remove_trust(self, name: str, *, event: AuditEvent | None = None) -> None:
        """Raise UnknownTrust when there is none, TrustInUse (and remove nothing) while
        clients are bound to it: both checked in the transaction that removes it."""

    async def signing_keys(self) -> list[SealedKey]:
        """The database key store's keys, sealed, by activation."""

    async def signing_key_stamp(self) -> tuple[tuple[Any, ...], ...]:
        """What changes when the database key store's keys change."""

    async def change_signing_keys(
        self,
        change: Callable[[list[SealedKey]], KeyChange[T]],
        *,
        events: Sequence[AuditEvent] = (),
    ) -> T:
        """Apply one change of the keys, the keys locked from before ``change`` reads
        them; with ``events`` in the same transaction."""

    async def revoke_token(self, jti: str, client_id: str, expires_at: float) -> None:
        """Add a token to the deny-list until its expiry."""

    async def is_revoked(self, jti: str) -> bool: ...

    async def use_assertion(self, client_id: str, jti: str, expires_at: float) -> None:
        """Record a client assertion's ``jti``, or raise ``UsedAssertion`` (a replay)."""

    async def purge_revoked(self, now: float) -> int:
        """Drop deny-list entries whose tokens have expired; return how many."""
