"""Client authentication for the endpoints where a client authenticates with a form body
(token, introspection, revocation), under the failed-authentication limit."""

from __future__ import annotations

from tokendealer.http.params import presented_credentials
from tokendealer.http.ratelimit import failure_limit
from tokendealer.http.responses import dealer
from tokendealer.protocol.clients import Client


async def authenticate_client() -> Client:
    credentials = await presented_credentials()
    # RFC 6749 §2.3.1: failed attempts are counted and, over the limit, refused (429).
    async with failure_limit(credentials.client_id):
        return await dealer().authenticate(credentials)
