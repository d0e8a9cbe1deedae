"""Where the signing keys live: a directory of files, or the database, sealed.

``TOKENDEALER_KEY_STORE=directory`` (the default) keeps today's keys directory
(``tokendealer.keys.keyset``: PEM files and a manifest). ``database`` keeps each key in
the store (``signing_keys`` table), its PEM sealed with AES-256-GCM under the
key-encryption key (``tokendealer.keys.sealing``), so that replicas share their keys
through the database and need no shared disk. Both follow the same lifecycle rules
(``keyset.rotation_plan`` and the others) and the same timestamps-decide-the-state rule;
a change in the database is one transaction holding the keys' lock.

Both have the same face (``KeySource``): the dealer loads and watches its keys through
it, the admin layer changes them through it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from tokendealer.keys import keyset, sealing
from tokendealer.keys.keyset import KeyFileError, KeySet, Rotation
from tokendealer.library.algorithms import SIGNING_ALGORITHMS
from tokendealer.settings import Settings
from tokendealer.store.base import Store
from tokendealer.store.signing_keys import KeyChange, SealedKey

#: Where a database key is named in messages.
WHERE = "the database key store"


class KeySource(Protocol):
    async def stamp(self) -> object:
        """What changes when the keys change (cheap: read about once a second)."""

    async def load(self) -> KeySet:
        """Every key, checked; ``KeyFileError`` (one line) when one is unusable."""

    async def ensure_key(self) -> str | None:
        """A first key when there is none (the new kid, else None); safe when several
        processes start at once."""

    async def generate(self, alg: str, bits: int | None) -> str: ...

    async def rotate(self, activate_after: float, alg: str, bits: int | None) -> Rotation: ...

    async def remove(self, kid: str) -> None: ...

    async def prune(self, max_token_lifetime: float, force: bool) -> tuple[list[str], list[str]]:
        """(removed, kept)."""


def key_source(settings: Settings, store: Store | None) -> KeySource:
    """The keys ``settings`` name; ``store`` may be None for the keys directory."""
    if settings.key_store == "database":
        if store is None or settings.key_encryption_key is None:
            raise KeyFileError(f"{WHERE} needs the database and the key-encryption key")
        return DatabaseKeys(store, settings.key_encryption_key)
    return DirectoryKeys(settings)


class DirectoryKeys:
    """The keys directory; each call off the event loop (files, RSA generation)."""

    def __init__(self, settings: Settings) -> None:
        self.keys_dir = settings.keys_dir

    async def stamp(self) -> object:
        return keyset.manifest_stamp(self.keys_dir)

    async def load(self) -> KeySet:
        return await asyncio.to_thread(keyset.load_keyset, self.keys_dir)

    async def ensure_key(self) -> str | None:
        return await asyncio.to_thread(keyset.ensure_key, self.keys_dir)

    async def generate(self, alg: str, bits: int | None) -> str:
        return await asyncio.to_thread(keyset.generate_key, self.keys_dir, alg=alg, bits=bits)

    async def rotate(self, activate_after: float, alg: str, bits: int | None) -> Rotation:
        return await asyncio.to_thread(
            keyset.rotate_key, self.keys_dir, activate_after=activate_after, alg=alg, bits=bits
        )

    async def remove(self, kid: str) -> None:
        await asyncio.to_thread(keyset.remove_key, self.keys_dir, kid)

    async def prune(self, max_token_lifetime: float, force: bool) -> tuple[list[str], list[str]]:
        return await asyncio.to_thread(
            keyset.prune_keys, self.keys_dir, max_token_lifetime=max_token_lifetime, force=force
        )


class DatabaseKeys:
    """The ``signing_keys`` table: sealed keys, changed one transaction at a time."""

    def __init__(self, store: Store, kek: bytes) -> None:
        self.store = store
        self.kek = kek

    async def stamp(self) -> object:
        return await self.store.signing_key_stamp()

    async def load(self) -> KeySet:
        rows = await self.store.signing_keys()
        return await asyncio.to_thread(self._open_all, rows)

    def _open_all(self, rows: list[SealedKey]) -> KeySet:
        return KeySet(tuple(self._open(row) for row in rows))

    def _unseal(self, row: SealedKey) -> bytes:
        try:
            return sealing.unseal(
                self.kek,
                row.sealed,
                kid=row.kid,
                alg=row.alg,
                created_at=row.created_at,
                activate_at=row.activate_at,
            )
        except sealing.SealError as exc:
            raise KeyFileError(f"{WHERE}: {exc}") from None

    def _entries(self, rows: list[SealedKey]) -> list[dict[str, Any]]:
        """The rows' descriptions, once every row opens with this key-encryption key: a
        change made under another one would leave keys no replica can open."""
        for row in rows:
            self._unseal(row)
        return [row.entry() for row in rows]

    def _open(self, row: SealedKey) -> keyset.SigningKey:
        where = f"{WHERE}: key {row.kid}"
        pem = self._unseal(row)
        if row.alg not in SIGNING_ALGORITHMS:
            raise KeyFileError(f"{where}: unknown algorithm {row.alg!r}")
        return keyset.signing_key(row.entry(), keyset.parse_private_key(pem, where), where, WHERE)

    def seal(self, kid: str, alg: str, pem: bytes, now: float, activate_after: float) -> SealedKey:
        entry = keyset.new_entry(kid, alg, now, activate_after)
        sealed = sealing.seal(
            self.kek,
            pem,
            kid=kid,
            alg=alg,
            created_at=entry["created_at"],
            activate_at=entry["activate_at"],
        )
        return SealedKey(kid, alg, entry["created_at"], entry["activate_at"], sealed)

    async def ensure_key(self) -> str | None:
        if await self.store.signing_key_stamp():  # the usual case: no key made for nothing
            return None
        kid, pem = await asyncio.to_thread(
            keyset.new_key_pem, keyset.DEFAULT_ALG, keyset.DEFAULT_KEY_BITS
        )

        def first(rows: list[SealedKey]) -> KeyChange[str | None]:
            if rows:
                return KeyChange(None)
            return KeyChange(kid, put=[self.seal(kid, keyset.DEFAULT_ALG, pem, time.time(), 0)])

        return await self.store.change_signing_keys(first)

    async def generate(self, alg: str, bits: int | None) -> str:
        kid, pem = await asyncio.to_thread(keyset.new_key_pem, alg, bits)

        def add(rows: list[SealedKey]) -> KeyChange[str]:
            now = time.time()
            keyset.refuse_pending(self._entries(rows), now)
            return KeyChange(kid, put=[self.seal(kid, alg, pem, now, 0)])

        return await self.store.change_signing_keys(add)

    async def rotate(self, activate_after: float, alg: str, bits: int | None) -> Rotation:
        kid, pem = await asyncio.to_thread(keyset.new_key_pem, alg, bits)

        def rotation(rows: list[SealedKey]) -> KeyChange[Rotation]:
            now = time.time()
            entries = self._entries(rows)
            delay, replaced = keyset.rotation_plan(entries, now, activate_after)
            return KeyChange(
                Rotation(kid, delay, replaced),
                put=[self.seal(kid, alg, pem, now, delay)],
                remove=replaced,
            )

        return await self.store.change_signing_keys(rotation)

    async def remove(self, kid: str) -> None:
        """Remove ``kid``, even a row that does not open (a row written by someone without
        the key-encryption key would otherwise block every change), provided every other
        row opens: that proves this key-encryption key is the right one."""

        def removal(rows: list[SealedKey]) -> KeyChange[None]:
            others = [row for row in rows if row.kid != kid]
            entries = [*self._entries(others), *(row.entry() for row in rows if row.kid == kid)]
            keyset.check_removal(entries, kid, time.time(), WHERE)
            return KeyChange(None, remove=[kid])

        await self.store.change_signing_keys(removal)

    async def prune(self, max_token_lifetime: float, force: bool) -> tuple[list[str], list[str]]:
        def pruning(rows: list[SealedKey]) -> KeyChange[tuple[list[str], list[str]]]:
            entries = self._entries(rows)
            removed, kept = keyset.prune_plan(entries, time.time(), max_token_lifetime, force)
            return KeyChange((removed, kept), remove=removed)

        return await self.store.change_signing_keys(pruning)
