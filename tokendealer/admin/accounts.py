"""Administrator accounts: add, remove, change a password, list, and sign-in (``verify``).

Passwords are chosen by people: low-entropy secrets that an attacker holding a copy of
the table would guess offline. Unlike client secrets (random, 256 bits, a SHA-256 digest
suffices), they are stored as argon2id hashes, a memory-hard KDF (RFC 9106): each guess
costs the attacker ``HASH_PARAMETERS.memory_cost`` KiB and as much time as it costs us.

Every change is checked here and written in one store transaction together with its audit
event (``admin.create``, ``admin.remove``, ``admin.set_password``); a change that fails
writes neither. No event carries a password or a hash.

Sign-in (``verify``) answers ``None`` alike for an unknown name and a wrong password, after
the same work: an unknown name is checked against a dummy hash with the same parameters,
so the answer's time does not tell which names exist. Each attempt is recorded
(``admin.sign_in``, ``admin.sign_in_failed``).

Each argon2 computation takes a core and 64 MiB for about 0.1 s, in a worker thread (off
the event loop). At most ``MAX_CONCURRENT_HASHES`` run at once in a process; the others
wait their turn, so a burst of sign-in attempts delays sign-ins but cannot take every
thread of the pool or gigabytes of memory.

Removing the last administrator is allowed: the console then admits nobody, but the CLI,
which needs no account (it runs with access to the database), can add one again at any
time, so no state locks every operator out.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import RFC_9106_LOW_MEMORY

from tokendealer.admin.errors import Conflict, Invalid, NotFound
from tokendealer.protocol.admins import Admin, admin_name_error, password_error
from tokendealer.protocol.audit import AuditEvent
from tokendealer.protocol.times import iso
from tokendealer.store.base import DuplicateAdmin, UnknownAdmin

#: argon2id with RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes), which
#: is also argon2-cffi's default: about 0.1 s a hash on a server core.
HASH_PARAMETERS = RFC_9106_LOW_MEMORY
#: The hasher every account operation uses (read at each call, so tests can spy on it).
HASHER = PasswordHasher.from_parameters(HASH_PARAMETERS)

#: argon2 computations at once in one process (one event loop): the cores of a small
#: server; each also holds ``HASH_PARAMETERS.memory_cost`` KiB while it runs.
MAX_CONCURRENT_HASHES = 2

T = TypeVar("T")

#: The process's slots for argon2 work, one semaphore per event loop (a server process
#: runs one; each command of the CLI, and each test, runs its own).
_hash_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)

#: The actor of a failed sign-in: nobody proved who they are.
ANONYMOUS = "anonymous"
#: A name longer than any valid one is cut to this in the trail (sign-in takes any input).
_TARGET_NAME_LIMIT = 64


class AdminStore(Protocol):
    """What accounts need from the store (``tokendealer.store.SQLStore`` provides it)."""

    async def get_admin(self, name: str) -> Admin | None: ...

    async def list_admins(self) -> Sequence[Admin]: ...

    async def add_admin(self, admin: Admin, *, event: AuditEvent | None = None) -> None: ...

    async def set_admin_password(
        self, name: str, password_hash: str, at: float, *, event: AuditEvent | None = None
    ) -> None: ...

    async def remove_admin(self, name: str, *, event: AuditEvent | None = None) -> None: ...

    async def record(self, event: AuditEvent) -> None: ...


# -- checks --------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if (reason := admin_name_error(name)) is not None:
        raise Invalid(reason, "name")
    return name


def check_password(password: str) -> str:
    if (reason := password_error(password)) is not None:
        raise Invalid(reason, "password")
    return password


def _target(name: str) -> str:
    """``admin:NAME`` for a name that could be an administrator's; ``admin:<invalid>``
    otherwise: what was typed may be a password, or carry control characters that would
    forge lines of the trail's text output."""
    if admin_name_error(name) is not None:
        return "admin:<invalid>"
    return f"admin:{name[:_TARGET_NAME_LIMIT]}"


async def _argon2(compute: Callable[..., T], *args: Any) -> T:
    """``compute(*args)`` in a worker thread, once one of the ``MAX_CONCURRENT_HASHES``
    slots is free.

    The slot is given back when the computation ends, not when its caller does: a
    caller cancelled meanwhile (a client that hangs up) leaves its thread computing, and
    that thread still counts, or hanging up would be the way around the bound.
    """
    loop = asyncio.get_running_loop()
    slots = _hash_slots.get(loop)
    if slots is None:
        slots = _hash_slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
    await slots.acquire()
    try:
        computation = loop.run_in_executor(None, functools.partial(compute, *args))
    except BaseException:
        slots.release()
        raise

    def done(finished: asyncio.Future[T]) -> None:
        slots.release()
        if not finished.cancelled():
            finished.exception()  # retrieved: a caller that went away does not log it

    computation.add_done_callback(done)
    return await asyncio.shield(computation)


async def _hash(password: str) -> str:
    return await _argon2(HASHER.hash, password)


# -- reading -------------------------------------------------------------------------------


async def get(store: AdminStore, name: str) -> Admin:
    admin = await store.get_admin(check_name(name))
    if admin is None:
        raise NotFound(f"no admin {name!r}", "name")
    return admin


async def listing(store: AdminStore) -> Sequence[Admin]:
    return await store.list_admins()


def describe(admin: Admin) -> dict[str, Any]:
    """The account as every face shows it: never the hash."""
    return {
        "name": admin.name,
        "created_at": iso(admin.created_at),
        "password_changed_at": iso(admin.password_changed_at),
    }


# -- changes -------------------------------------------------------------------------------


async def add(store: AdminStore, name: str, password: str, actor: str) -> Admin:
    """Create the account ``name``; ``Conflict`` when it exists."""
    check_name(name)
    check_password(password)
    now = time.time()
    admin = Admin(name, await _hash(password), created_at=now, password_changed_at=now)
    event = AuditEvent(actor=actor, action="admin.create", target=_target(name), at=now)
    try:
        await store.add_admin(admin, event=event)
    except DuplicateAdmin:
        raise Conflict(f"admin {name!r} already exists", "name") from None
    return admin


async def set_password(store: AdminStore, name: str, password: str, actor: str) -> None:
    """Replace the password of ``name``; ``NotFound`` when there is no such account."""
    check_name(name)
    check_password(password)
    now = time.time()
    event = AuditEvent(actor=actor, action="admin.set_password", target=_target(name), at=now)
    try:
        await store.set_admin_password(name, await _hash(password), now, event=event)
    except UnknownAdmin:
        raise NotFound(f"no admin {name!r}", "name") from None


async def remove(store: AdminStore, name: str, actor: str) -> None:
    """Delete the account ``name`` (the last one too: see the module's note)."""
    check_name(name)
    event = AuditEvent(actor=actor, action="admin.remove", target=_target(name))
    try:
        await store.remove_admin(name, event=event)
    except UnknownAdmin:
        raise NotFound(f"no admin {name!r}", "name") from None


# -- sign-in -------------------------------------------------------------------------------


def dummy_hash() -> str:
    """A hash of a random password nobody knows, made with ``HASHER``'s parameters once
    per process (and again if they change); an unknown name is checked against it. A
    face that signs people in may call this at start, so that the first unknown name
    costs no extra hash either."""
    return _dummy_hash(HASHER)


@functools.lru_cache(maxsize=4)
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash(secrets.token_urlsafe(32))


def _matches(password_hash: str | None, password: str) -> bool:
    """One ``HASHER.verify``, whether or not there is an account behind it."""
    try:
        return HASHER.verify(password_hash or dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False


async def verify(
    store: AdminStore, name: str, password: str, actor_address: str | None = None
) -> Admin | None:
    """Sign-in: the account when ``password`` is its password, otherwise ``None``.

    An unknown (or invalid) name and a wrong password get the same answer after the same
    work. The attempt is recorded: ``admin.sign_in`` by ``admin:NAME``, or
    ``admin.sign_in_failed`` by ``anonymous``; the details hold the caller's address when
    given, never the password. A hash made with older parameters is replaced on success,
    in the same transaction as the sign-in's event.
    """
    admin = await store.get_admin(name) if admin_name_error(name) is None else None
    stored = admin.password_hash if admin is not None else None
    matched = await _argon2(_matches, stored, password)
    details: dict[str, Any] = {} if actor_address is None else {"address": actor_address}
    if admin is None or not matched:
        await store.record(
            AuditEvent(ANONYMOUS, "admin.sign_in_failed", _target(name), details=details)
        )
        return None
    event = AuditEvent(f"admin:{name}", "admin.sign_in", _target(name), details=details)
    if not HASHER.check_needs_rehash(admin.password_hash):
        await store.record(event)
        return admin
    rehashed = await _hash(password)
    try:
        # Not a password change: the time it was last changed stays.
        await store.set_admin_password(
            name,
            rehashed,
            admin.password_changed_at,
            event=replace(event, details={**details, "rehashed": True}),
        )
    except UnknownAdmin:  # removed meanwhile
        failed = AuditEvent(ANONYMOUS, "admin.sign_in_failed", _target(name), details=details)
        await store.record(failed)
        return None
    return replace(admin, password_hash=rehashed)
