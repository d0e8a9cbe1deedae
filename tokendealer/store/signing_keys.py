"""Signing keys of the database key store in SQL: sealed rows, and the statements.

The store keeps what it is given: sealing and opening the keys, and the rules of their
lifecycle, belong to the service (``tokendealer.service.key_sources``). A change of the
keys runs as one transaction that first takes the schema version row's lock, so that
changes from several processes (workers starting on an empty database, two rotations)
happen one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.sql import Delete, Insert, Select, Update

from tokendealer.store.schema import schema_version
from tokendealer.store.schema import signing_keys as _k

T = TypeVar("T")


@dataclass(frozen=True)
class SealedKey:
    """A row: a key's description and its sealed PEM."""

    kid: str
    alg: str
    created_at: float
    activate_at: float
    sealed: bytes = field(repr=False)

    def entry(self) -> dict[str, Any]:
        """The key's description, as a manifest entry of the directory store."""
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at,
            "activate_at": self.activate_at,
        }


@dataclass(frozen=True)
class KeyChange(Generic[T]):
    """What a change of the keys does: rows to add (or, by kid, to replace), kids to
    remove, and what the change answers its caller."""

    result: T
    put: Sequence[SealedKey] = ()
    remove: Sequence[str] = ()


def to_key(row: Any) -> SealedKey:
    return SealedKey(row.kid, row.alg, row.created_at, row.activate_at, bytes(row.sealed))


def listing() -> Select[Any]:
    return sa.select(_k).order_by(_k.c.activate_at, _k.c.kid)


def stamps() -> Select[Any]:
    """What changes when the keys change: their descriptions and sealed bytes (a rekey
    changes only the latter; a replica still on the old key-encryption key must see it
    at once, and fail to open it, rather than at the next rotation)."""
    return sa.select(_k.c.kid, _k.c.activate_at, _k.c.alg, _k.c.sealed).order_by(_k.c.kid)


def lock() -> Update:
    """A write that takes the version row's lock for the rest of the transaction."""
    return schema_version.update().values(version=schema_version.c.version)


def insert(key: SealedKey) -> Insert:
    return _k.insert().values(
        kid=key.kid,
        alg=key.alg,
        created_at=key.created_at,
        activate_at=key.activate_at,
        sealed=key.sealed,
    )


def delete(kids: Sequence[str]) -> Delete:
    return _k.delete().where(_k.c.kid.in_(list(kids)))
