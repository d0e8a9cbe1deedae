"""Storage of clients and revoked tokens behind a small async interface.

``store_for(settings)`` returns the SQL store for the configured database URL: a SQLite
file (the embedded default) or PostgreSQL, both through SQLAlchemy's async Core, bounded by
the configured database timeout.
"""

from tokendealer.settings import Settings
from tokendealer.store.base import (
    ChangedMeanwhile,
    DuplicateAdmin,
    DuplicateClient,
    DuplicateTrust,
    Store,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    TrustInUse,
    UnknownAdmin,
    UnknownClient,
    UnknownTrust,
    UsedAssertion,
)
from tokendealer.store.sql import SQLStore

__all__ = [
    "ChangedMeanwhile",
    "DuplicateAdmin",
    "DuplicateClient",
    "DuplicateTrust",
    "SQLStore",
    "Store",
    "StoreError",
    "StoreRefused",
    "StoreUnavailable",
    "TrustInUse",
    "UnknownAdmin",
    "UnknownClient",
    "UnknownTrust",
    "UsedAssertion",
    "store_for",
]


def store_for(settings: Settings, *, log_outages: bool = True) -> SQLStore:
    """``log_outages=False`` for a one-shot command: its error is its one line."""
    return SQLStore(
        settings.sqlalchemy_url,
        timeout=settings.database_timeout,
        retry_interval=settings.database_retry_interval,
        log_outages=log_outages,
    )
