"""Signing keys on disk and the in-memory key set built from them.

Layout of the keys directory (``TOKENDEALER_KEYS_DIR``, default ``./keys``)::

    <kid>.pem       one unencrypted PKCS#8 private key per file, mode 0600: RSA (2048
                    bits or more), EC P-256 or P-384, or Ed25519
    manifest.json   {"keys": [{"kid", "alg", "created_at", "activate_at"}, ...]}

Each key signs with the one algorithm its manifest entry names (``library.algorithms``:
RS256/384/512 and PS256/384/512 with RSA, ES256 with P-256, ES384 with P-384, EdDSA with
Ed25519), and its file must hold a key of that type.

A key's state is a pure function of the clock, so every worker and replica reading the
same manifest switches at the same moment without talking to the others:

* ``next``: ``activate_at`` is in the future; published in the JWKS, not signing;
* ``active``: the key with the latest ``activate_at`` not in the future; signs tokens;
* ``retired``: activated earlier and superseded; published so its tokens verify.

Every write goes to a temporary file that is fsynced and renamed over the target, so a
reader never sees half a key or half a manifest. Writers hold an exclusive lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tokendealer.library.algorithms import (
    ALGORITHMS,
    SIGNING_ALGORITHMS,
    PrivateKey,
    PublicKey,
    algorithm_for,
    describe_key,
    key_needed,
)
from tokendealer.library.jwk import public_jwk, thumbprint

MANIFEST = "manifest.json"
LOCK = ".lock"
MIN_KEY_BITS = 2048
DEFAULT_KEY_BITS = 2048
DEFAULT_ALG = "RS512"
#: The curve of each EC algorithm's new keys.
_CURVES: dict[str, ec.EllipticCurve] = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}


class KeyFileError(Exception):
    """A key file or the manifest is unusable; the message is one line naming the file."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: PrivateKey
    created_at: float
    activate_at: float

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def bits(self) -> int:
        """The key's size: the RSA modulus, or the curve's (256 for P-256 and Ed25519)."""
        return key_bits(self.private_key)


def key_bits(key: PrivateKey) -> int:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.key_size
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.curve.key_size
    return 256


@dataclass(frozen=True)
class KeySet:
    """The loaded keys, with the JWKS bytes computed once per set."""

    keys: tuple[SigningKey, ...]
    jwks_bytes: bytes = field(init=False, repr=False)
    verification_keys: dict[str, tuple[str, PublicKey]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        jwks = {"keys": [public_jwk(k.public_key, k.alg, k.kid) for k in self.keys]}
        object.__setattr__(self, "jwks_bytes", json.dumps(jwks, separators=(",", ":")).encode())
        object.__setattr__(
            self, "verification_keys", {k.kid: (k.alg, k.public_key) for k in self.keys}
        )

    def active(self, now: float | None = None) -> SigningKey | None:
        """The key that signs at ``now``: the latest ``activate_at`` not in the future."""
        now = time.time() if now is None else now
        best: SigningKey | None = None
        for key in self.keys:
            if key.activate_at <= now and (best is None or key.activate_at > best.activate_at):
                best = key
        return best

    def retired_at(self, key: SigningKey) -> float | None:
        """When ``key`` stopped signing: the activation of the key that followed it."""
        later = [k.activate_at for k in self.keys if k.activate_at > key.activate_at]
        return min(later) if later else None

    def state(self, key: SigningKey, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if key.activate_at > now:
            return "next"
        return "active" if self.active(now) is key else "retired"


# -- reading ---------------------------------------------------------------------------


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: private key is readable by group or others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


@functools.lru_cache(maxsize=16)
def _parse_pem(data: bytes) -> PrivateKeyTypes:
    """Parse and check a PEM private key, once per content in this process.

    cryptography checks an RSA key's consistency when it loads one, which costs tens of
    milliseconds for a 2048-bit key; a reload after a rotation reads every key file
    again, and all but the new one are unchanged. Failures are not cached.
    """
    return serialization.load_pem_private_key(data, password=None)


def load_private_key(path: Path) -> PrivateKey:
    """Load one PEM; refuse anything that is not an unencrypted key some algorithm signs
    with: RSA of >= 2048 bits, EC on P-256 or P-384, or Ed25519."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
    _check_mode(path)
    return parse_private_key(data, str(path))


def parse_private_key(data: bytes, where: str) -> PrivateKey:
    """A PEM private key some algorithm signs with; ``KeyFileError`` naming ``where``
    (a file, or a key of the database key store) otherwise."""
    try:
        key = _parse_pem(data)
    except TypeError:
        raise KeyFileError(
            f"{where}: key is encrypted; tokendealer needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if b"PUBLIC KEY-----" in data or b"CERTIFICATE-----" in data:
            raise KeyFileError(
                f"{where}: holds a public key or certificate; tokendealer needs the private key"
            ) from None
        raise KeyFileError(
            f"{where}: not a readable PEM private key (corrupt or truncated)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_KEY_BITS:
            raise KeyFileError(
                f"{where}: RSA key of {key.key_size} bits; at least {MIN_KEY_BITS} needed"
            )
        return key
    if (
        isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
        and algorithm_for(key) is not None
    ):
        return key
    raise KeyFileError(
        f"{where}: {describe_key(key)}, which no algorithm here signs with; use an RSA key "
        f"(2048 bits or more), an EC P-256 or P-384 key, or an Ed25519 key"
    )


def _pem_files(keys_dir: Path) -> list[Path]:
    """Key files, leaving out hidden ones (temporary files of a write in progress)."""
    return sorted(p for p in keys_dir.glob("*.pem") if not p.name.startswith("."))


def manifest_stamp(keys_dir: Path) -> tuple[int, int, int] | None:
    """What changes when the manifest is replaced: (inode, size, mtime_ns)."""
    try:
        st = (keys_dir / MANIFEST).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_manifest(keys_dir: Path) -> list[dict[str, Any]]:
    path = keys_dir / MANIFEST
    try:
        raw = json.loads(path.read_bytes())
        entries = raw["keys"]
        if not isinstance(entries, list):
            raise TypeError
        for entry in entries:
            if not (
                isinstance(entry["kid"], str)
                and entry["alg"] in SIGNING_ALGORITHMS
                and isinstance(entry["created_at"], int | float)
                and isinstance(entry["activate_at"], int | float)
            ):
                raise TypeError
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read manifest ({exc.strerror})") from None
    except (ValueError, TypeError, KeyError):
        raise KeyFileError(f"{path}: manifest is not valid") from None
    return entries


def load_keyset(keys_dir: Path) -> KeySet:
    """Load every key the manifest names, validating every ``*.pem`` in the directory."""
    entries = _read_manifest(keys_dir)
    loaded: dict[str, PrivateKey] = {}
    for path in _pem_files(keys_dir):
        loaded[path.stem] = load_private_key(path)
    keys = []
    for entry in entries:
        kid = entry["kid"]
        path = keys_dir / f"{kid}.pem"
        if kid not in loaded:
            raise KeyFileError(f"{path}: named in {MANIFEST} but missing")
        keys.append(signing_key(entry, loaded[kid], str(path), MANIFEST))
    return KeySet(tuple(keys))


def signing_key(entry: dict[str, Any], private_key: PrivateKey, where: str, by: str) -> SigningKey:
    """The key ``entry`` (kid, alg, times) describes, once ``private_key`` is checked to
    be of its algorithm's type and to have its kid (RFC 7638 thumbprint); ``by`` names
    what described it."""
    kid, alg = entry["kid"], entry["alg"]
    if not ALGORITHMS[alg].fits(private_key):
        raise KeyFileError(
            f"{where}: {describe_key(private_key)}, but {by} names it for {alg}, "
            f"which signs with {key_needed(alg)}"
        )
    if thumbprint(private_key.public_key()) != kid:
        raise KeyFileError(f"{where}: key does not match its kid (RFC 7638 thumbprint)")
    return SigningKey(kid, alg, private_key, entry["created_at"], entry["activate_at"])


# -- writing ---------------------------------------------------------------------------


@contextlib.contextmanager
def locked(keys_dir: Path) -> Iterator[None]:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(keys_dir.stat().st_mode) & 0o077:
        # An existing directory (./keys of a checkout is 0755): close it to others too.
        with contextlib.suppress(OSError):  # e.g. a read-only mounted secret
            keys_dir.chmod(0o700)
    fd = os.open(keys_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a 0600 temp file in the same directory, fsync, rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_manifest(keys_dir: Path, entries: Sequence[dict[str, Any]]) -> None:
    data = json.dumps({"keys": list(entries)}, indent=2).encode() + b"\n"
    atomic_write(keys_dir / MANIFEST, data)


def generate_key(
    keys_dir: Path,
    *,
    alg: str = DEFAULT_ALG,
    bits: int | None = None,
    activate_after: float = 0.0,
    now: float | None = None,
) -> str:
    """Create a key, write it 0600 and add it to the manifest; return its kid.

    With ``activate_after=0`` the new key signs at once and the previous active key is
    retired (still published, so its tokens verify until they expire).

    Refused while a rotation is pending: the ``next`` key would take over from the new
    one when its time comes (and may have leaked with the keys directory, when a leak is
    why a key is made); ``rotate_key`` with ``activate_after=0`` replaces it instead.

    ``bits`` is the size of an RSA key (``DEFAULT_KEY_BITS`` when None); the keys of the
    other algorithms have their curve's size, and ``bits`` must be None for them.
    """
    bits = _check_new_key(alg, bits)
    with locked(keys_dir):
        refuse_pending(_read_manifest(keys_dir), time.time())
        return _add_key(keys_dir, alg, bits, activate_after, now)


def _check_new_key(alg: str, bits: int | None) -> int | None:
    """The RSA size of the new key (None for the other types), or ``KeyFileError``."""
    if alg not in ALGORITHMS:
        raise KeyFileError(
            f"unsupported algorithm {alg!r}; choose one of {', '.join(SIGNING_ALGORITHMS)}"
        )
    if ALGORITHMS[alg].kty != "RSA":
        if bits is not None:
            raise KeyFileError(
                f"bits is for RSA keys only: {alg} signs with {key_needed(alg)}, of fixed size"
            )
        return None
    bits = DEFAULT_KEY_BITS if bits is None else bits
    if bits < MIN_KEY_BITS:
        raise KeyFileError(f"key size {bits} is too small; at least {MIN_KEY_BITS} bits")
    return bits


def new_private_key(alg: str, bits: int | None = None) -> PrivateKey:
    """A fresh key for ``alg``: RSA of ``bits`` (default 2048), EC on the algorithm's
    curve, or Ed25519."""
    algorithm = ALGORITHMS[alg]
    if algorithm.kty == "RSA":
        size = DEFAULT_KEY_BITS if bits is None else bits
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if algorithm.kty == "EC":
        return ec.generate_private_key(_CURVES[alg])
    return ed25519.Ed25519PrivateKey.generate()


def new_key_pem(alg: str, bits: int | None) -> tuple[str, bytes]:
    """A fresh key for ``alg``: its kid and its unencrypted PKCS#8 PEM."""
    private_key = new_private_key(alg, bits)
    return thumbprint(private_key.public_key()), key_pem(private_key)


def key_pem(private_key: PrivateKey) -> bytes:
    """``private_key`` as an unencrypted PKCS#8 PEM, the form of every key file."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_entry(kid: str, alg: str, now: float, activate_after: float) -> dict[str, Any]:
    return {"kid": kid, "alg": alg, "created_at": now, "activate_at": now + activate_after}


def _add_key(
    keys_dir: Path,
    alg: str,
    bits: int | None,
    activate_after: float,
    now: float | None,
    replacing: Sequence[str] = (),
) -> str:
    """Write a new key and add it to the manifest; the kids in ``replacing`` leave the
    manifest in the same write (then their files are deleted)."""
    now = time.time() if now is None else now
    kid, pem = new_key_pem(alg, bits)
    entries = [e for e in _read_manifest(keys_dir) if e["kid"] not in replacing]
    atomic_write(keys_dir / f"{kid}.pem", pem)
    entries.append(new_entry(kid, alg, now, activate_after))
    _write_manifest(keys_dir, entries)
    for old in replacing:
        with contextlib.suppress(FileNotFoundError):
            (keys_dir / f"{old}.pem").unlink()
    return kid


def ensure_key(keys_dir: Path) -> str | None:
    """First start: give an empty or missing keys directory its first key.

    PEM files dropped into a directory without a manifest are adopted as keys (renamed to
    their kid, activated at their modification time), each for the algorithm of its type:
    RS512 (the default) for RSA, ES256 or ES384 for EC by its curve, EdDSA for Ed25519.
    Returns the new kid, or None when the directory already had keys. The check and the
    write happen under one lock, so workers starting together create one key, not several.
    """
    with locked(keys_dir):
        if (keys_dir / MANIFEST).exists():
            return None
        pems = _pem_files(keys_dir)
        if not pems:
            return _add_key(keys_dir, DEFAULT_ALG, DEFAULT_KEY_BITS, 0.0, None)
        entries = []
        for path in pems:
            private_key = load_private_key(path)
            kid = thumbprint(private_key.public_key())
            alg = algorithm_for(private_key, DEFAULT_ALG)
            mtime = path.stat().st_mtime
            if path.stem != kid:
                os.replace(path, keys_dir / f"{kid}.pem")
            entries.append({"kid": kid, "alg": alg, "created_at": mtime, "activate_at": mtime})
        _write_manifest(keys_dir, entries)
        return None


def description(entries: Sequence[dict[str, Any]]) -> dict[str, tuple[str, float, float]]:
    """What decides the keys' states, by kid: each key's algorithm and times (two stores
    describing the same keys the same way switch keys at the same moments)."""
    return {e["kid"]: (e["alg"], float(e["created_at"]), float(e["activate_at"])) for e in entries}


def difference(
    ours: Sequence[dict[str, Any]], ours_in: str, theirs: Sequence[dict[str, Any]], theirs_in: str
) -> str | None:
    """The first way the entries ``theirs`` (of ``theirs_in``) describe other keys than
    ``ours`` (of ``ours_in``), in words; None when they describe the same keys."""
    mine, other = description(ours), description(theirs)
    for kid in sorted(mine.keys() | other.keys()):
        if kid not in other:
            return f"key {kid} is in {ours_in}, not in {theirs_in}"
        if kid not in mine:
            return f"key {kid} is in {theirs_in}, not in {ours_in}"
        if mine[kid] != other[kid]:
            return f"key {kid} has another algorithm or other times in {theirs_in}"
    return None


def import_keys(keys_dir: Path, keys: Sequence[tuple[dict[str, Any], bytes]], source: str) -> bool:
    """Write ``keys`` (manifest entries and their PEMs, from ``source``: another store)
    into a keys directory that holds none: the key files first (0600, atomically), then
    the manifest naming them all, under the directory's lock, so that a reader sees no
    key or every key.

    False, and nothing written, when the manifest already names exactly these keys with
    the same algorithms and times (and its files load); ``KeyFileError`` when the
    directory holds other keys or key files no manifest names.
    """
    wanted = [
        {
            "kid": e["kid"],
            "alg": e["alg"],
            "created_at": float(e["created_at"]),
            "activate_at": float(e["activate_at"]),
        }
        for e, _ in keys
    ]
    with locked(keys_dir):
        entries = _read_manifest(keys_dir)
        if entries:
            different = difference(wanted, source, entries, str(keys_dir))
            if different is not None:
                raise KeyFileError(
                    f"{keys_dir / MANIFEST} already names other keys ({different}): "
                    "nothing changed; copy into an empty directory"
                )
            load_keyset(keys_dir)  # its files are these keys too
            return False
        stray = _pem_files(keys_dir)
        if stray:
            raise KeyFileError(
                f"{keys_dir} holds key files that no manifest names ({stray[0].name}): "
                "nothing changed; copy into an empty directory"
            )
        for entry, pem in zip(wanted, (pem for _, pem in keys), strict=True):
            atomic_write(keys_dir / f"{entry['kid']}.pem", pem)
        _write_manifest(keys_dir, wanted)
        return True


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_key`` did: the new key, the seconds until it signs, and the pending
    keys it replaced (an emergency rotation during a routine one)."""

    kid: str
    delay: float
    replaced: tuple[str, ...] = ()


def rotate_key(
    keys_dir: Path,
    *,
    activate_after: float,
    alg: str = DEFAULT_ALG,
    bits: int | None = None,
) -> Rotation:
    """Create the ``next`` key, which signs from ``now + activate_after`` on.

    The wait lets resource servers cache the new key (published at once) before they
    meet a token it signed. Only one rotation may be pending: a second ``rotate`` while a
    ``next`` key exists fails, so two concurrent rotations never leave two successors.

    ``activate_after=0`` is the emergency rotation, and it is never refused: a pending
    ``next`` key is replaced, not activated, because it lies in the same directory as the
    key that leaked and may have leaked with it. It never signed a token, so unpublishing
    it breaks none. The new key signs at once and the active key is retired (still
    published: ``remove_key`` makes its tokens fail).

    With no active key (an empty or new directory) there is nothing to wait for and no
    one signing meanwhile: the key signs at once. ``alg`` and ``bits`` as for
    ``generate_key``.
    """
    bits = _check_new_key(alg, bits)
    with locked(keys_dir):
        now = time.time()
        delay, replaced = rotation_plan(_read_manifest(keys_dir), now, activate_after)
        kid = _add_key(keys_dir, alg, bits, delay, now, replacing=replaced)
        return Rotation(kid, delay, replaced)


def rotation_plan(
    entries: Sequence[dict[str, Any]], now: float, activate_after: float
) -> tuple[float, tuple[str, ...]]:
    """How a rotation goes (see ``rotate_key``): the new key's delay, and the pending keys
    it replaces; ``KeyFileError`` while a rotation is pending, unless an emergency."""
    if activate_after > 0:
        refuse_pending(entries, now)
    if not entries:
        activate_after = 0.0
    return activate_after, tuple(e["kid"] for e in entries if e["activate_at"] > now)


def refuse_pending(entries: Sequence[dict[str, Any]], now: float) -> None:
    """``KeyFileError`` saying what to do while a ``next`` key waits to sign."""
    pending = [e for e in entries if e["activate_at"] > now]
    if pending:
        first = pending[0]
        raise KeyFileError(
            f"a rotation is already pending: key {first['kid']} activates at "
            f"{_utc(first['activate_at'])}; wait for it, cancel it with 'tokendealer keys "
            f"remove {first['kid']}', or replace it with a key that signs now with "
            "'tokendealer keys rotate --activate-after 0'"
        )


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def remove_key(keys_dir: Path, kid: str) -> None:
    """Unpublish and delete a key at once (a compromised key). The active key cannot be
    removed: rotate with ``--activate-after 0`` first, then remove the old one."""
    with locked(keys_dir):
        entries = _read_manifest(keys_dir)
        check_removal(entries, kid, time.time(), str(keys_dir / MANIFEST))
        _write_manifest(keys_dir, [e for e in entries if e["kid"] != kid])
        with contextlib.suppress(FileNotFoundError):
            (keys_dir / f"{kid}.pem").unlink()


def check_removal(entries: Sequence[dict[str, Any]], kid: str, now: float, where: str) -> None:
    """``KeyFileError`` unless ``kid`` is among ``entries`` (in ``where``) and not the
    active key."""
    times = {e["kid"]: e["activate_at"] for e in entries}
    if kid not in times:
        raise KeyFileError(f"no key {kid!r} in {where}")
    current = [t for t in times.values() if t <= now]
    if current and times[kid] == max(current):
        raise KeyFileError(
            f"key {kid} is the active signing key; run 'tokendealer keys rotate "
            "--activate-after 0' first, then remove it"
        )


def prune_keys(
    keys_dir: Path, *, max_token_lifetime: float, force: bool = False
) -> tuple[list[str], list[str]]:
    """Remove retired keys whose tokens have all expired; return (removed, kept).

    A key retired at ``t`` signed its last token just before ``t``; that token is dead at
    ``t + max_token_lifetime`` (the longest lifetime, leeway included). Younger retired
    keys are kept unless ``force``.
    """
    with locked(keys_dir):
        entries = _read_manifest(keys_dir)
        removed, kept = prune_plan(entries, time.time(), max_token_lifetime, force)
        if removed:
            _write_manifest(keys_dir, [e for e in entries if e["kid"] not in removed])
            for kid in removed:
                with contextlib.suppress(FileNotFoundError):
                    (keys_dir / f"{kid}.pem").unlink()
        return removed, kept


def prune_plan(
    entries: Sequence[dict[str, Any]], now: float, max_token_lifetime: float, force: bool
) -> tuple[list[str], list[str]]:
    """Which retired keys ``prune_keys`` removes and which it keeps (see there)."""
    starts = sorted(e["activate_at"] for e in entries)
    removed: list[str] = []
    kept: list[str] = []
    for entry in entries:
        later = [t for t in starts if t > entry["activate_at"]]
        retired_at = later[0] if later else None
        if retired_at is None or retired_at > now:
            continue  # active or next: never pruned
        if force or retired_at + max_token_lifetime < now:
            removed.append(entry["kid"])
        else:
            kept.append(entry["kid"])
    return removed, kept
