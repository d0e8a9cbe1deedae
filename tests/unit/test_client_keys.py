"""When the dealer fetches a client's published keys (``jwks_uri``): once per max-age,
again at once for a kid it has not seen (then once per cooldown), never within the
cooldown after a failure, whatever the failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.keyserver import KeyServer
from tests.support.processes import free_port
from tokendealer.protocol.clients import PRIVATE_KEY_JWT, Client
from tokendealer.service.client_keys import COOLDOWN, MIN_CACHE, ClientKeys


def document(*kids: str) -> bytes:
    keys = []
    for kid in kids:
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        keys.append({**ECAlgorithm.to_jwk(public, as_dict=True), "kid": kid})
    return json.dumps({"keys": keys}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="server")
def _server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.document = document("a")
    yield server
    server.close()


def keyed(uri: str) -> Client:
    return Client("svc", "", auth_method=PRIVATE_KEY_JWT, jwks_uri=uri)


async def test_a_new_kid_is_fetched_at_once_then_once_per_cooldown(server: KeyServer) -> None:
    clock = Clock()
    keys = ClientKeys(2.0, clock)
    client = keyed(server.url)
    assert [k.key_id for k in await keys.keys(client, "a")] == ["a"]
    assert [k.key_id for k in await keys.keys(client, "a")] == ["a"]
    assert server.requests == 1
    server.document = document("a", "b")  # the client rotates
    assert [k.key_id for k in await keys.keys(client, "b")] == ["a", "b"]
    assert server.requests == 2
    # A forged kid right after costs no fetch; after the cooldown, one.
    await keys.keys(client, "forged")
    assert server.requests == 2
    clock.now += COOLDOWN
    await keys.keys(client, "forged")
    assert server.requests == 3
    # Stale after its max-age (no Cache-Control: 5 minutes): fetched again.
    clock.now += MIN_CACHE * 5
    await keys.keys(client, "a")
    assert server.requests == 4


async def test_a_failure_waits_the_cooldown_whatever_it_was(server: KeyServer) -> None:
    clock = Clock()
    keys = ClientKeys(1.0, clock)
    refused = keyed(f"http://127.0.0.1:{free_port()}/jwks")  # nothing listens
    assert await keys.keys(refused, "a") == []
    server.document = b"<html>"
    garbage = keyed(server.url)
    assert await keys.keys(garbage, "a") == []
    assert server.requests == 1
    for _ in range(3):
        assert await keys.keys(garbage, "a") == []
        assert await keys.keys(refused, "a") == []
    assert server.requests == 1
    server.document = document("a")
    clock.now += COOLDOWN
    assert [k.key_id for k in await keys.keys(garbage, "a")] == ["a"]


async def test_the_last_good_set_is_kept_when_a_refetch_fails(server: KeyServer) -> None:
    clock = Clock()
    keys = ClientKeys(1.0, clock)
    client = keyed(server.url)
    await keys.keys(client, "a")
    server.document = b"{"
    clock.now += MIN_CACHE * 5
    assert [k.key_id for k in await keys.keys(client, "a")] == ["a"]


async def test_concurrent_requests_share_one_fetch(server: KeyServer) -> None:
    keys = ClientKeys(2.0, Clock())
    client = keyed(server.url)
    found = await asyncio.gather(*(keys.keys(client, "a") for _ in range(20)))
    assert all([k.key_id for k in one] == ["a"] for one in found)
    assert server.requests == 1
