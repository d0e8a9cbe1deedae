"""More apps over a test's store, clients registered in them, and client addresses for
tests about limits."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.support import leaks
from tests.support.environment import QuartClient
from tokendealer.http import create_app
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.service.dealer import Dealer
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


async def add_client(
    dealer: Dealer, client_id: str = "svc", secret: str | None = None, **fields: Any
) -> str:
    """Register ``client_id`` directly in the store of ``dealer`` (what the ``register``
    fixture does for the test's own app, for an app the test started itself); ``fields``
    are other ``Client`` fields (``created_at`` defaults to now). Returns the secret: a new
    one unless given."""
    secret = generate_secret() if secret is None else secret
    leaks.remember(secret)
    fields.setdefault("created_at", time.time())
    await dealer.store.add_client(
        Client(client_id=client_id, secret_digest=digest_secret(secret), **fields)
    )
    return secret
