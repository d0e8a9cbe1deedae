"""Storage of clients and revoked tokens behind a small async interface.

``open_store(settings)`` returns the SQL store for the configured database URL: a SQLite
file (the embedded default) or PostgreSQL, both through SQLAlchemy's async Core.
"""

from tokendealer.store.base import (
    Client,
    DuplicateClient,
    Store,
    StoreError,
    StoreUnavailable,
    UnknownClient,
)
from tokendealer.store.sql import SQLStore

__all__ = [
    "Client",
    "DuplicateClient",
    "SQLStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnknownClient",
]
