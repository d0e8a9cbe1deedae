"""A fake issuer for the library's tests: RFC 8414 metadata and a JWK Set that a test
controls, served through an httpx ``MockTransport``, counting every request and signing
tokens with its keys; and a clock the test moves by hand."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.environment import ISSUER
from tokendealer.library.jwk import public_jwk, thumbprint

AUDIENCE = "orders-api"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


#: Generated once: RSA key generation is the slow part of these tests.
KEYS = [_key() for _ in range(3)]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeIssuer:
    """An issuer serving metadata and JWKS through an httpx MockTransport."""

    issuer: str = ISSUER
    keys: list[tuple[rsa.RSAPrivateKey, str]] = field(default_factory=lambda: [(KEYS[0], "RS512")])
    metadata: bool = True
    metadata_issuer: str | None = None
    cache_control: str | None = "public, max-age=300"
    jwks_status: int = 200
    jwks_override: bytes | None = None
    delay: float = 0.0
    requests: list[str] = field(default_factory=list)

    @property
    def kid(self) -> str:
        return thumbprint(self.keys[0][0].public_key())

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                public_jwk(k.public_key(), alg, thumbprint(k.public_key())) for k, alg in self.keys
            ]
        }

    def respond(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        path = request.url.path
        if path.startswith("/.well-known/oauth-authorization-server"):
            if not self.metadata:
                return httpx.Response(404)
            return httpx.Response(
                200,
                json={
                    "issuer": self.metadata_issuer or self.issuer,
                    "jwks_uri": "https://keys.test/jwks",
                },
            )
        if path in ("/jwks", "/.well-known/jwks.json"):
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            body = self.jwks_override or json.dumps(self.jwks()).encode()
            return httpx.Response(self.jwks_status, content=body, headers=headers)
        return httpx.Response(404)

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            time.sleep(self.delay)
        return self.respond(request)

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.respond(request)

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.async_handler))

    def sync_client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "worker",
            "client_id": "worker",
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": f"jti-{time.perf_counter_ns()}",
            "scope": "read write",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        key: rsa.RSAPrivateKey | None = None,
        alg: str = "RS512",
        kid: Any = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = key or self.keys[0][0]
        header = {"typ": "at+jwt", "kid": thumbprint(key.public_key()) if kid is None else kid}
        header.update(headers or {})
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers=header)
