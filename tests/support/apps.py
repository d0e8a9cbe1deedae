"""More apps over a test's store, and client addresses for tests about limits."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.support.environment import QuartClient
from tokendealer.http import create_app
from tokendealer.settings import Settings

_addresses = (f"198.51.100.{i}" for i in itertools.count(1))


def fresh_address() -> str:
    """A client address no earlier request in the session used."""
    return next(_addresses)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[QuartClient]:
    """Another app with ``settings`` (often over the same store as the test's ``app``),
    started and stopped around the block; yields its test client."""
    app = create_app(settings)
    async with app.test_app():
        yield app.test_client()
