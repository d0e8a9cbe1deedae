"""Administrator accounts in SQL: rows to accounts, and the statements."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import Delete, Insert, Select, Update

from tokendealer.protocol.admins import Admin
from tokendealer.store.schema import admins as _a


def to_admin(row: Any) -> Admin:
    return Admin(
        name=row.name,
        password_hash=row.password_hash,
        created_at=row.created_at,
        password_changed_at=row.password_changed_at,
    )


def select(name: str) -> Select[Any]:
    return sa.select(_a).where(_a.c.name == name)


def listing() -> Select[Any]:
    """Every account, by name."""
    return sa.select(_a).order_by(_a.c.name)


def insert(admin: Admin) -> Insert:
    return _a.insert().values(
        name=admin.name,
        password_hash=admin.password_hash,
        created_at=admin.created_at,
        password_changed_at=admin.password_changed_at,
    )


def set_password(name: str, password_hash: str, at: float) -> Update:
    return (
        _a.update()
        .where(_a.c.name == name)
        .values(password_hash=password_hash, password_changed_at=at)
    )


def delete(name: str) -> Delete:
    return _a.delete().where(_a.c.name == name)
