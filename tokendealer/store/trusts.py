"""Trusted issuers in SQL: rows to trusts, and the statements."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import Delete, Insert, Select

from tokendealer.protocol.trusts import Trust
from tokendealer.store.schema import clients as _c
from tokendealer.store.schema import trusts as _t


def to_trust(row: Any) -> Trust:
    return Trust(
        name=row.name,
        issuer=row.issuer,
        jwks_uri=row.jwks_uri or "",
        audience=row.audience,
        created_at=row.created_at,
    )


def select(name: str) -> Select[Any]:
    return sa.select(_t).where(_t.c.name == name)


def listing() -> Select[Any]:
    """Every trust, by name."""
    return sa.select(_t).order_by(_t.c.name)


def insert(trust: Trust) -> Insert:
    return _t.insert().values(
        name=trust.name,
        issuer=trust.issuer,
        jwks_uri=trust.jwks_uri,
        audience=trust.audience,
        created_at=trust.created_at,
    )


def bound_clients(name: str) -> Select[Any]:
    """The ids of the clients bound to the trust ``name``, by id."""
    return sa.select(_c.c.client_id).where(_c.c.trust == name).order_by(_c.c.client_id)


def delete(name: str) -> Delete:
    return _t.delete().where(_t.c.name == name)
