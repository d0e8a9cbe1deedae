"""Signing keys, administered: list, generate, rotate, prune, remove; and, from the CLI
alone, migrate (between the keys directory and the database) and rekey.

The keys live as files in the keys directory or, sealed, in the database
(``tokendealer.service.key_sources``; ``tokendealer.keys.keyset`` owns their lifecycle);
this layer makes each change there, records its audit event once it is made, and turns
refusals into ``AdminError``. Keys unreadable on disk are a fault of the server (``KeyFileError``, a
500 at the API), not a conflict.

The files and the event cannot be one transaction, and their order is chosen so that the
trail never shows what did not happen: the change first, then its event. A change that
fails writes no event. Should the store fail in between (an outage under way already
fails earlier: the CLI has just opened the store, the API has just read the caller's
record), the change stands and only its event is missing. That event is then logged at
error level with all its fields (``audit_event_not_recorded``), for an operator to see
and to copy into the trail, and the caller gets ``StoreUnavailable`` saying the change
was made: a 503 with Retry-After at the API, one line from the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokendealer.admin.errors import Conflict, Invalid, NotFound
from tokendealer.keys.keyset import (
    DEFAULT_ALG,
    DEFAULT_KEY_BITS,
    KeyFileError,
    KeySet,
    Rotation,
    load_keyset,
)
from tokendealer.library.algorithms import ALGORITHMS, SIGNING_ALGORITHMS, key_needed
from tokendealer.log import get_logger
from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.times import iso
from tokendealer.service import key_migration
from tokendealer.service.key_migration import Copied, Rekeyed
from tokendealer.service.key_sources import key_source
from tokendealer.settings import KEY_STORES, PREFIX, Settings
from tokendealer.store.base import Store, StoreError, StoreUnavailable

log = get_logger("tokendealer.admin")

#: The sizes of a new RSA key; the keys of the other algorithms have their curve's size.
KEY_SIZES = (2048, 3072, 4096)
#: The longest delay before a rotated key signs.
MAX_ACTIVATE_AFTER = 30 * 86400


@dataclass(frozen=True)
class Pruned:
    removed: Sequence[str]
    kept: Sequence[str]
    #: Seconds a retired key is kept for the tokens it signed (longest lifetime + leeway).
    longest_lifetime: int


async def listing(
    store: Store | None, settings: Settings, now: float | None = None
) -> list[dict[str, Any]]:
    """Every key with its state (next, active, retired), algorithm, size and times
    (``store``: None is enough for the keys directory)."""
    return describe_keys(await key_source(settings, store).load(), now)


def directory_listing(settings: Settings) -> list[dict[str, Any]]:
    """``listing`` of the keys directory, without an event loop (the CLI's)."""
    return describe_keys(load_keyset(settings.keys_dir))


def describe_keys(keyset: KeySet, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    return [
        {
            "kid": key.kid,
            "state": keyset.state(key, now),
            "alg": key.alg,
            "bits": key.bits,
            "created_at": iso(key.created_at),
            "activate_at": iso(key.activate_at),
            "retired_at": iso(keyset.retired_at(key)),
        }
        for key in keyset.keys
    ]


def _check(alg: str, bits: int | None) -> int | None:
    """The new key's RSA size (``DEFAULT_KEY_BITS`` when not given; None for the other
    key types, which refuse a size)."""
    if alg not in SIGNING_ALGORITHMS:
        raise Invalid(f"alg is one of {', '.join(SIGNING_ALGORITHMS)}", "alg")
    if ALGORITHMS[alg].kty != "RSA":
        if bits is not None:
            raise Invalid(
                f"bits is for RSA keys only: {alg} signs with {key_needed(alg)}, of fixed size",
                "bits",
            )
        return None
    if bits is None:
        return DEFAULT_KEY_BITS
    if bits not in KEY_SIZES:
        raise Invalid(f"bits is one of {', '.join(map(str, KEY_SIZES))}", "bits")
    return bits


def _sizes(bits: int | None) -> dict[str, int]:
    """The audit event's ``bits``: an RSA key's size; nothing for the other types."""
    return {} if bits is None else {"bits": bits}


def _event(actor: str, action: str, kid: str, **details: Any) -> AuditEvent:
    return AuditEvent(actor=actor, action=action, target=f"key:{kid}", details=details)


async def _record(store: Store, *events: AuditEvent) -> None:
    """Record the events of a key change already made (see the module's note): when the
    store fails, log each event not recorded and raise ``StoreUnavailable`` saying so."""
    for done, event in enumerate(events):
        try:
            await store.record(event)
        except StoreError as exc:
            for missing in events[done:]:
                log.error(
                    "audit_event_not_recorded",
                    at=iso(missing.at),
                    actor=missing.actor,
                    action=missing.action,
                    target=missing.target,
                    details=missing.details,
                    error=str(exc),
                )
            if not isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable(
                f"the key change was made, but its audit event ({event.action} of "
                f"{event.target}) was not recorded: {exc}"
            ) from None


async def generate(
    store: Store,
    settings: Settings,
    *,
    actor: str,
    alg: str = DEFAULT_ALG,
    bits: int | None = None,
) -> str:
    """A key that signs from now on; older keys stay published. ``Conflict`` while a
    rotation is pending (its key would take over from this one): the emergency rotation
    (``rotate`` with ``activate_after=0``) replaces the pending key instead.

    ``alg`` is any of ``SIGNING_ALGORITHMS``; ``bits`` an RSA key's size (default 2048),
    ``Invalid`` for the other key types."""
    bits = _check(alg, bits)
    try:
        kid = await key_source(settings, store).generate(alg, bits)
    except KeyFileError as exc:
        raise Conflict(str(exc)) from None
    await _record(store, _event(actor, "key.generate", kid, alg=alg, **_sizes(bits)))
    return kid


async def rotate(
    store: Store,
    settings: Settings,
    *,
    actor: str,
    activate_after: int | None = None,
    alg: str = DEFAULT_ALG,
    bits: int | None = None,
) -> Rotation:
    """The next key, published now and signing after ``activate_after`` seconds (default:
    the JWKS max-age); 0 is the emergency rotation (see ``keyset.rotate_key``). ``alg``
    and ``bits`` as for ``generate``."""
    bits = _check(alg, bits)
    wanted = settings.jwks_max_age if activate_after is None else activate_after
    if isinstance(wanted, bool) or not 0 <= wanted <= MAX_ACTIVATE_AFTER:
        raise Invalid(f"activate_after is 0-{MAX_ACTIVATE_AFTER} seconds", "activate_after")
    try:
        rotation = await key_source(settings, store).rotate(wanted, alg, bits)
    except KeyFileError as exc:
        raise Conflict(str(exc)) from None
    await _record(
        store,
        _event(
            actor,
            "key.rotate",
            rotation.kid,
            activate_after=rotation.delay,
            alg=alg,
            **_sizes(bits),
            replaced=list(rotation.replaced),
        ),
    )
    return rotation


async def prune(store: Store, settings: Settings, *, actor: str, force: bool = False) -> Pruned:
    """Delete retired keys whose tokens have all expired (all retired keys with
    ``force``); active and next keys are never pruned."""
    clients = await store.list_clients()
    longest = max([settings.token_ttl, *(c.ttl for c in clients if c.ttl)]) + settings.leeway
    try:
        removed, kept = await key_source(settings, store).prune(longest, force)
    except KeyFileError as exc:
        raise Conflict(str(exc)) from None
    await _record(store, *(_event(actor, "key.prune", kid, force=force) for kid in removed))
    return Pruned(removed, kept, longest)


async def remove(store: Store, settings: Settings, *, actor: str, kid: str) -> None:
    """Unpublish and delete ``kid`` now (a compromised key); never the active one."""
    try:
        known = {row["kid"] for row in await listing(store, settings)}
    except KeyFileError:
        known = None  # a key does not open: the store's own check says which may go
    if known is not None and kid not in known:
        raise NotFound(f"no key {kid!r}", "kid")
    try:
        await key_source(settings, store).remove(kid)
    except KeyFileError as exc:
        raise Conflict(str(exc)) from None
    await _record(store, _event(actor, "key.remove", kid))


def _key_encryption_key(settings: Settings, command: str) -> bytes:
    """The current key-encryption key, which ``command`` needs whatever the key store."""
    if settings.key_encryption_key is None:
        raise Invalid(
            f"{command} needs the key-encryption key: set {PREFIX}KEY_ENCRYPTION_KEY or "
            f"{PREFIX}KEY_ENCRYPTION_KEY_FILE (32 random bytes, base64)"
        )
    return settings.key_encryption_key


async def migrate(store: Store, settings: Settings, *, actor: str, to: str) -> Copied:
    """Copy every key, with its kid, algorithm and times, from the other store to ``to``
    (``database``: sealed under the key-encryption key, whatever ``key_store`` says;
    ``directory``: ``keys_dir``); see ``service.key_migration``. The source is left as it
    is. ``Conflict`` when the destination holds other keys; nothing is recorded when it
    held these already (``written`` False)."""
    if to not in KEY_STORES:
        raise Invalid(f"to is {' or '.join(KEY_STORES)}", "to")
    kek = _key_encryption_key(settings, f"keys migrate --to {to}")
    move = key_migration.to_database if to == "database" else key_migration.to_directory
    try:
        copied = await move(store, settings.keys_dir, kek)
    except KeyFileError as exc:
        raise Conflict(str(exc)) from None
    if copied.written:
        await _record(store, *(_event(actor, "key.migrate", kid, to=to) for kid in copied.kids))
    return copied


async def rekey(store: Store, settings: Settings, *, actor: str, old_key: bytes) -> Rekeyed:
    """Every key of the database key store opened with ``old_key`` and sealed under the
    current key-encryption key, in one transaction (see ``service.key_migration``);
    ``Conflict``, nothing changed, when a key does not open with ``old_key`` or some are
    under the current key already. Nothing is recorded when all of them were."""
    kek = _key_encryption_key(settings, "keys rekey")
    if old_key == kek:
        raise Invalid("it holds the current key-encryption key: nothing to re-encrypt", "old_key")
    try:
        rekeyed = await key_migration.rekey(store, old_key, kek)
    except KeyFileError as exc:
        raise Conflict(str(exc)) from None
    await _record(store, *(_event(actor, "key.rekey", kid) for kid in rekeyed.kids))
    return rekeyed
