"""The token service's state and operations, free of any web framework.

``Dealer`` owns the settings, the store, the client registry and the key set; the HTTP
layer calls it one named step at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tokendealer.client_auth import Credentials, authenticate
from tokendealer.errors import ServerError
from tokendealer.keys import KeySet, load_keyset
from tokendealer.registry import ClientRegistry
from tokendealer.settings import Settings
from tokendealer.store import Client, SQLStore, Store
from tokendealer.tokens import IssuedToken, mint
from tokendealer.verification import verify_access_token


@dataclass
class Dealer:
    settings: Settings
    store: Store
    keyset: KeySet
    registry: ClientRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.registry = ClientRegistry(self.store, self.settings.client_cache_ttl)

    @classmethod
    def from_settings(cls, settings: Settings, store: Store | None = None) -> Dealer:
        """Build the dealer; keys are loaded (and parsed) here, once, not per request."""
        return cls(
            settings=settings,
            store=store or SQLStore(settings.sqlalchemy_url),
            keyset=load_keyset(settings.keys_dir),
        )

    async def authenticate(self, credentials: Credentials) -> Client:
        return await authenticate(self.registry, credentials)

    def issue(self, client: Client, scopes: tuple[str, ...], audience: str) -> IssuedToken:
        now = time.time()
        key = self.keyset.active(now)
        if key is None:
            raise ServerError("No signing key is active.")
        return mint(
            key,
            issuer=self.settings.issuer,
            client_id=client.client_id,
            audience=audience,
            scopes=scopes,
            ttl=client.ttl or self.settings.token_ttl,
            now=now,
        )

    def verify(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """Verify against our own published keys; raises verification.InvalidToken."""
        return verify_access_token(
            token,
            self.keyset.verification_keys,
            issuer=self.settings.issuer,
            audience=audience,
            leeway=self.settings.leeway,
        )
