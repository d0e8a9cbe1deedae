"""The issuer the tests use, the services the machine runs, and reporting one missing.

PostgreSQL tests use ``TOKENDEALER_TEST_POSTGRES_URL`` (default: the machine's server,
``postgresql://postgres@127.0.0.1:5432/test``), Redis tests ``TOKENDEALER_TEST_REDIS_URL``.
Without a reachable server they skip with the reason; under CI (``CI=true``) they fail
instead, because CI has the server.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
from quart.typing import TestClientProtocol as QuartClient

__all__ = ["IN_CI", "ISSUER", "POSTGRES_URL", "REDIS_URL", "QuartClient", "Register", "unavailable"]

ISSUER = "https://dealer.test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "TOKENDEALER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TOKENDEALER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: The ``register`` fixture: ``await register(client_id, scopes=..., ...)`` -> its secret.
Register = Callable[..., Awaitable[str]]


def unavailable(what: str, reason: str) -> None:
    """Skip with a clear reason on a developer machine; fail in CI, which has the service."""
    message = f"{what} not reachable ({reason}); set CI=true to make this a failure"
    if IN_CI:
        pytest.fail(f"{what} must be reachable in CI: {reason}")
    pytest.skip(message)
