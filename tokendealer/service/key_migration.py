"""Moving the signing keys from one store to the other, and re-encrypting the database's.

``keys migrate --to database`` copies every key of the keys directory with its manifest
entry (kid, algorithm, creation and activation times) into the database key store, each
sealed under the key-encryption key; ``--to directory`` copies the database's keys back
into a keys directory (0600 PEM files and a manifest). The same keys with the same times
are in both stores, and a key's state is a function of its times and the clock alone, so
while the replicas switch ``TOKENDEALER_KEY_STORE`` one by one, a replica on either store
publishes the same keys and signs with the same active key at every moment: there is no
moment without an active key, and a token signed before the switch verifies after it.
The source is left as it is.

``keys rekey`` opens every key of the database with the old key-encryption key and seals
it under the current one, in one transaction.

Each copy is all or nothing: into the database, one transaction; into a directory, the
key files and then the manifest naming them. A destination that already holds these very
keys (same kids, algorithms and times) is left as it is, and said so; one that holds
other keys is refused, and nothing is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokendealer.keys import keyset, sealing
from tokendealer.keys.keyset import KeyFileError
from tokendealer.library.algorithms import SIGNING_ALGORITHMS
from tokendealer.service.key_sources import WHERE
from tokendealer.store.base import Store
from tokendealer.store.signing_keys import KeyChange, SealedKey


@dataclass(frozen=True)
class Copied:
    """What a migration did: the kids copied, by activation, and whether anything was
    written (False: the destination already held these keys)."""

    kids: tuple[str, ...]
    written: bool


@dataclass(frozen=True)
class Rekeyed:
    """What a rekey did: the kids re-encrypted (none when ``already`` every key was
    sealed under the current key-encryption key)."""

    kids: tuple[str, ...]
    already: bool


def seal_entry(kek: bytes, entry: dict[str, Any], pem: bytes) -> SealedKey:
    """The database row of the key a manifest entry describes, its ``pem`` sealed under
    ``kek``; the times as floats, the database's type and the authenticated data's
    spelling (a manifest written by hand may hold integers)."""
    kid, alg = entry["kid"], entry["alg"]
    created_at, activate_at = float(entry["created_at"]), float(entry["activate_at"])
    sealed = sealing.seal(
        kek, pem, kid=kid, alg=alg, created_at=created_at, activate_at=activate_at
    )
    return SealedKey(kid, alg, created_at, activate_at, sealed)


def open_row(kek: bytes, row: SealedKey) -> bytes:
    """The PEM of ``row`` when it was sealed under ``kek``; ``sealing.SealError`` else."""
    return sealing.unseal(
        kek,
        row.sealed,
        kid=row.kid,
        alg=row.alg,
        created_at=row.created_at,
        activate_at=row.activate_at,
    )


def _directory_keys(keys_dir: Path) -> list[tuple[dict[str, Any], bytes]]:
    """Every key of the directory (checked as a server loads them), by activation: its
    manifest entry and its PEM."""
    loaded = keyset.load_keyset(keys_dir).keys
    if not loaded:
        raise KeyFileError(f"{keys_dir / keyset.MANIFEST} names no key: nothing to copy")
    ordered = sorted(loaded, key=lambda key: (key.activate_at, key.kid))
    return [
        (
            {
                "kid": key.kid,
                "alg": key.alg,
                "created_at": key.created_at,
                "activate_at": key.activate_at,
            },
            keyset.key_pem(key.private_key),
        )
        for key in ordered
    ]


async def to_database(store: Store, keys_dir: Path, kek: bytes) -> Copied:
    """Copy every key of ``keys_dir`` into the database key store, sealed under ``kek``,
    in one transaction; the directory is locked meanwhile (no rotation there mixes in)."""
    if not (keys_dir / keyset.MANIFEST).is_file():
        raise KeyFileError(f"{keys_dir} has no {keyset.MANIFEST}: no key to copy")
    with contextlib.ExitStack() as held:
        await asyncio.to_thread(held.enter_context, keyset.locked(keys_dir))
        keys = await asyncio.to_thread(_directory_keys, keys_dir)
        entries = [entry for entry, _ in keys]
        rows = [seal_entry(kek, entry, pem) for entry, pem in keys]

        def copy(existing: list[SealedKey]) -> KeyChange[bool]:
            if not existing:
                return KeyChange(True, put=rows)
            found = [row.entry() for row in existing]
            different = keyset.difference(entries, str(keys_dir), found, WHERE)
            if different is not None:
                raise KeyFileError(
                    f"{WHERE} already holds other keys ({different}): nothing changed"
                )
            for row in existing:
                try:
                    open_row(kek, row)
                except sealing.SealError as exc:
                    raise KeyFileError(
                        f"{WHERE} already holds these keys, but {exc}: nothing changed"
                    ) from None
            return KeyChange(False)

        written = await store.change_signing_keys(copy)
    return Copied(tuple(entry["kid"] for entry in entries), written)


async def to_directory(store: Store, keys_dir: Path, kek: bytes) -> Copied:
    """Copy every key of the database key store into ``keys_dir`` (opened with ``kek``
    and checked as a server loads them): the key files, then the manifest."""
    rows = await store.signing_keys()
    if not rows:
        raise KeyFileError(f"{WHERE} holds no key: nothing to copy")
    keys = await asyncio.to_thread(_opened, rows, kek)
    written = await asyncio.to_thread(keyset.import_keys, keys_dir, keys, WHERE)
    if written and _described(await store.signing_key_stamp()) != _described_rows(rows):
        raise KeyFileError(
            f"{WHERE} changed while its keys were copied (a rotation?): {keys_dir} holds "
            "the keys from before; delete it and run keys migrate again"
        )
    return Copied(tuple(row.kid for row in rows), written)


def _opened(rows: Sequence[SealedKey], kek: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """Each row's entry and PEM, opened with ``kek`` and checked as a server loads them
    (``KeyFileError``, one line, for the first that is not fit)."""
    opened = []
    for row in rows:
        where = f"{WHERE}: key {row.kid}"
        try:
            pem = open_row(kek, row)
        except sealing.SealError as exc:
            raise KeyFileError(f"{WHERE}: {exc}") from None
        if row.alg not in SIGNING_ALGORITHMS:
            raise KeyFileError(f"{where}: unknown algorithm {row.alg!r}")
        keyset.signing_key(row.entry(), keyset.parse_private_key(pem, where), where, WHERE)
        opened.append((row.entry(), pem))
    return opened


def _described(stamp: tuple[tuple[Any, ...], ...]) -> set[tuple[Any, ...]]:
    """The database's stamp (kid, activate_at, alg, sealed bytes per key) as a set."""
    return {(row[0], row[1], row[2], bytes(row[3])) for row in stamp}


def _described_rows(rows: Sequence[SealedKey]) -> set[tuple[Any, ...]]:
    return {(row.kid, row.activate_at, row.alg, bytes(row.sealed)) for row in rows}


async def rekey(store: Store, old_kek: bytes, kek: bytes) -> Rekeyed:
    """Every key of the database key store, opened with ``old_kek`` and sealed under
    ``kek``, in one transaction. Refused, nothing changed, when a key opens with neither,
    or when some keys are under ``kek`` already and others are not; when all of them are,
    nothing is to be done (a second run)."""

    def reseal(rows: list[SealedKey]) -> KeyChange[Rekeyed]:
        if not rows:
            raise KeyFileError(f"{WHERE} holds no key: nothing to re-encrypt")
        current: list[SealedKey] = []
        old: list[tuple[SealedKey, bytes]] = []
        for row in rows:  # the current key first: a second run finds every key there
            try:
                open_row(kek, row)
            except sealing.SealError:
                pass
            else:
                current.append(row)
                continue
            try:
                old.append((row, open_row(old_kek, row)))
            except sealing.SealError:
                raise KeyFileError(
                    f"{WHERE}: key {row.kid} does not open with the old key-encryption "
                    "key, nor with the current one: nothing changed"
                ) from None
        if not old:
            return KeyChange(Rekeyed((), already=True))
        if current:
            raise KeyFileError(
                f"{WHERE}: key {current[0].kid} is already sealed under the current "
                f"key-encryption key while key {old[0][0].kid} is under the old one: "
                "nothing changed"
            )
        return KeyChange(
            Rekeyed(tuple(row.kid for row, _ in old), already=False),
            put=[seal_entry(kek, row.entry(), pem) for row, pem in old],
        )

    return await store.change_signing_keys(reseal)
