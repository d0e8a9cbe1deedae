"""Signing keys on disk: first start, ``keys generate``, adoption, and refused key files.

A bad key file must stop startup with one clear line naming the file, both for an app
built in-process (``create_app`` + ``test_app``) and for the real ``tokendealer serve``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from quart import Quart

from tests.support.cli import CLI, cli_env
from tests.support.environment import ISSUER, QuartClient
from tests.support.processes import Exited, free_port, run_until_exit, tokendealer_executable
from tests.support.servers import server_env
from tests.support.tokens import get_token
from tokendealer.http import create_app
from tokendealer.keys.keyset import MANIFEST, KeyFileError, generate_key
from tokendealer.keys.secret import FILE as SECRET_FILE
from tokendealer.keys.secret import session_secret
from tokendealer.library.jwk import thumbprint
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.settings import Settings

SERVE_EXIT_TIMEOUT = 30.0


def _settings(tmp_path: Path, keys_dir: Path) -> Settings:
    return Settings(
        issuer=ISSUER,
        database_url=f"sqlite:///{tmp_path / 'td.db'}",
        keys_dir=keys_dir,
        client_cache_ttl=0.0,
        access_log=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _manifest_kids(keys_dir: Path) -> list[str]:
    return [entry["kid"] for entry in json.loads((keys_dir / MANIFEST).read_text())["keys"]]


async def _jwks_kids(client: QuartClient) -> list[str]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return [key["kid"] for key in (await response.get_json())["keys"]]


async def _token_kid(client: QuartClient, app: Quart) -> tuple[str, str]:
    """Register a client straight in the store, get a token; return (token, its kid)."""
    dealer = app.extensions["tokendealer"]
    client_id = f"svc-{time.monotonic_ns()}"
    secret = generate_secret()
    await dealer.store.add_client(
        Client(client_id=client_id, secret_digest=digest_secret(secret), created_at=time.time())
    )
    token = await get_token(client, client_id, secret)
    return token, jwt.get_unverified_header(token)["kid"]


# -- first start -----------------------------------------------------------------------


async def test_fresh_directory_start_creates_one_private_key(tmp_path: Path) -> None:
    """A missing keys directory gets one 0600 key in a 0700 directory, listed and published."""
    keys_dir = tmp_path / "state" / "keys"
    app = create_app(_settings(tmp_path, keys_dir))
    async with app.test_app():
        client = app.test_client()
        pems = sorted(keys_dir.glob("*.pem"))
        assert len(pems) == 1
        kid = pems[0].stem
        assert _mode(keys_dir) == 0o700
        assert _mode(pems[0]) == 0o600
        assert _mode(keys_dir / MANIFEST) & 0o077 == 0
        assert _manifest_kids(keys_dir) == [kid]
        # The file name is the key's RFC 7638 thumbprint, and that key is published.
        key = serialization.load_pem_private_key(pems[0].read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
        assert thumbprint(key.public_key()) == kid
        assert await _jwks_kids(client) == [kid]
        _, token_kid = await _token_kid(client, app)
        assert token_kid == kid

    # A second start reuses the key instead of creating another.
    again = create_app(_settings(tmp_path, keys_dir))
    async with again.test_app():
        assert await _jwks_kids(again.test_client()) == [kid]
    assert sorted(p.stem for p in keys_dir.glob("*.pem")) == [kid]


async def test_keys_generate_activates_new_key_and_keeps_old_published(tmp_path: Path) -> None:
    """After ``tokendealer keys generate`` the new key signs and the old one still verifies."""
    keys_dir = tmp_path / "keys"
    first_app = create_app(_settings(tmp_path, keys_dir))
    async with first_app.test_app():
        old_token, old_kid = await _token_kid(first_app.test_client(), first_app)

    cli = CLI(cli_env(tmp_path), cwd=tmp_path).create_database()
    new_kid = (await cli.aok("keys", "generate")).stdout.strip()
    assert new_kid != old_kid
    assert _mode(keys_dir / f"{new_kid}.pem") == 0o600
    states = {row["kid"]: row["state"] for row in cli.ok("keys", "list", "--json").json()}
    assert states == {old_kid: "retired", new_kid: "active"}

    app = create_app(_settings(tmp_path, keys_dir))
    async with app.test_app():
        client = app.test_client()
        assert set(await _jwks_kids(client)) == {old_kid, new_kid}
        _, token_kid = await _token_kid(client, app)
        assert token_kid == new_kid
        verified = await client.post("/verify_token", form={"access_token": old_token})
        assert verified.status_code == 200


async def test_directory_of_pems_without_manifest_is_adopted(tmp_path: Path) -> None:
    """PEMs dropped in without a manifest become keys named by kid; the newest one signs."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    older, newer = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab")
    now = time.time()
    for name, key, mtime in (("older.pem", older, now - 3600), ("newer.pem", newer, now - 60)):
        path = keys_dir / name
        path.write_bytes(_pem(key))
        path.chmod(0o600)
        os.utime(path, (mtime, mtime))
    older_kid, newer_kid = thumbprint(older.public_key()), thumbprint(newer.public_key())

    app = create_app(_settings(tmp_path, keys_dir))
    async with app.test_app():
        client = app.test_client()
        assert set(_manifest_kids(keys_dir)) == {older_kid, newer_kid}
        assert sorted(p.name for p in keys_dir.glob("*.pem")) == sorted(
            [f"{older_kid}.pem", f"{newer_kid}.pem"]
        )
        assert set(await _jwks_kids(client)) == {older_kid, newer_kid}
        _, token_kid = await _token_kid(client, app)
        assert token_kid == newer_kid


# -- refused key files -----------------------------------------------------------------


@dataclass(frozen=True)
class Materials:
    """Keys made once per module: generating RSA keys is the slow part."""

    template: Path  # a keys directory with one valid key and its manifest
    kid: str
    valid_pem: bytes
    small_rsa_pem: bytes
    ec_pem: bytes
    encrypted_pem: bytes
    public_pem: bytes


@pytest.fixture(name="materials", scope="module")
def _materials(tmp_path_factory: pytest.TempPathFactory) -> Materials:
    template = tmp_path_factory.mktemp("template") / "keys"
    kid = generate_key(template)
    valid_pem = (template / f"{kid}.pem").read_bytes()
    valid = serialization.load_pem_private_key(valid_pem, password=None)
    assert isinstance(valid, rsa.RSAPrivateKey)
    # A key too small on purpose: the service must refuse it.
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    return Materials(
        template=template,
        kid=kid,
        valid_pem=valid_pem,
        small_rsa_pem=_pem(small),
        # P-521: no algorithm here signs with it (ES512 is not among them).
        ec_pem=_pem(ec.generate_private_key(ec.SECP521R1())),
        encrypted_pem=valid.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        ),
        public_pem=valid.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def _corrupt(m: Materials) -> tuple[bytes, int]:
    lines = m.valid_pem.splitlines(keepends=True)
    # Same armour, body bytes flipped: base64 still, but not a key.
    body = b"".join(lines[1:-1]).swapcase()
    return lines[0] + body + lines[-1], 0o600


BAD_KEYS: dict[str, tuple[Callable[[Materials], tuple[bytes, int]], str]] = {
    # name: (file content and mode, fragment of the error line)
    "corrupt": (_corrupt, "corrupt"),
    "garbage": (lambda m: (b"this is not a key\n", 0o600), "corrupt"),
    "empty": (lambda m: (b"", 0o600), "corrupt"),
    "truncated": (lambda m: (m.valid_pem[: len(m.valid_pem) // 2], 0o600), "truncated"),
    "encrypted": (lambda m: (m.encrypted_pem, 0o600), "encrypted"),
    "ec p-521 key": (lambda m: (m.ec_pem, 0o600), "EC secp521r1 key, which no algorithm"),
    "public key only": (lambda m: (m.public_pem, 0o600), "public key"),
    "rsa 1024": (lambda m: (m.small_rsa_pem, 0o600), "1024 bits"),
    "mode 0644": (lambda m: (m.valid_pem, 0o644), "0644"),
    "mode 0640": (lambda m: (m.valid_pem, 0o640), "chmod 600"),
}


def _bad_keys_dir(m: Materials, workdir: Path, case: str, layout: str) -> Path:
    """A keys directory whose key file is bad; return that file's path.

    ``named``: the manifest names the key and its file is bad; ``adopted``: no manifest,
    one bad PEM to adopt; ``stray``: a valid key plus a bad extra PEM.
    """
    keys_dir = workdir / "keys"
    shutil.copytree(m.template, keys_dir)
    content, mode = BAD_KEYS[case][0](m)
    if layout == "named":
        bad = keys_dir / f"{m.kid}.pem"
    elif layout == "adopted":
        (keys_dir / MANIFEST).unlink()
        (keys_dir / f"{m.kid}.pem").unlink()
        bad = keys_dir / "dropped-in.pem"
    else:
        bad = keys_dir / "stray.pem"
    bad.write_bytes(content)
    bad.chmod(mode)
    return bad


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


async def _startup_error(settings: Settings) -> KeyFileError:
    """Start an app in-process; return the KeyFileError that stopped its startup.

    Quart's test app reports a failed lifespan startup as its own LifespanError raised
    while handling the original exception, so the KeyFileError is found in the chain.
    """
    app = create_app(settings)
    with pytest.raises(Exception) as caught:
        async with app.test_app():
            pass
    found = [e for e in _chain(caught.value) if isinstance(e, KeyFileError)]
    assert found, f"startup failed with {caught.value!r}, not a KeyFileError"
    assert "tokendealer" not in app.extensions  # nothing half-started
    return found[0]


@pytest.mark.parametrize("layout", ["named", "adopted", "stray"])
@pytest.mark.parametrize("case", BAD_KEYS)
async def test_bad_key_file_stops_app_startup(
    materials: Materials, tmp_path: Path, case: str, layout: str
) -> None:
    """create_app's startup raises KeyFileError: one line naming the file and the problem."""
    bad = _bad_keys_dir(materials, tmp_path, case, layout)
    error = await _startup_error(_settings(tmp_path, bad.parent))
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{bad}: ")
    assert BAD_KEYS[case][1] in message
    # A refused file is left where it was, as it was.
    assert bad.exists() and _mode(bad) == BAD_KEYS[case][0](materials)[1]


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads files whatever their mode, so chmod 000 cannot fail"
)
async def test_unreadable_key_file_stops_app_startup(materials: Materials, tmp_path: Path) -> None:
    """A key file the service cannot read stops startup with a line naming it."""
    bad = _bad_keys_dir(materials, tmp_path, "mode 0644", "named")
    bad.write_bytes(materials.valid_pem)
    bad.chmod(0o000)
    error = await _startup_error(_settings(tmp_path, bad.parent))
    assert str(error).startswith(f"{bad}: ") and "cannot read" in str(error)


async def test_key_path_that_is_no_file_stops_app_startup(
    materials: Materials, tmp_path: Path
) -> None:
    """A key path that cannot be read as a file (here a directory) stops startup with a
    line naming it: the same failure as the unreadable file above, which root (often the
    user in containers) never meets."""
    bad = _bad_keys_dir(materials, tmp_path, "mode 0644", "named")
    bad.unlink()
    bad.mkdir(mode=0o700)
    error = await _startup_error(_settings(tmp_path, bad.parent))
    assert str(error).startswith(f"{bad}: ") and "cannot read" in str(error)


def _serve_until_exit(workdir: Path) -> Exited:
    """Run ``tokendealer serve`` on a free port; it must exit on its own, or is killed."""
    port = free_port()
    argv = [tokendealer_executable(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return run_until_exit(argv, server_env(workdir, port), workdir, SERVE_EXIT_TIMEOUT)


#: (case of BAD_KEYS, layout of _bad_keys_dir) of every ``serve`` run below.
SERVE_RUNS = [*((case, "named") for case in BAD_KEYS), ("rsa 1024", "adopted")]


@dataclass(frozen=True)
class ServeRun:
    bad: Path  # the bad key file
    result: Exited


@pytest.fixture(name="serve_runs", scope="module")
def _serve_runs(
    materials: Materials, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], ServeRun]:
    """``tokendealer serve`` on each directory of SERVE_RUNS, a few at a time: a run is a
    cold start of the console script, mostly CPU, and they are independent."""
    bads = {
        run: _bad_keys_dir(materials, tmp_path_factory.mktemp("serve"), *run) for run in SERVE_RUNS
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            run: pool.submit(_serve_until_exit, bad.parent.parent) for run, bad in bads.items()
        }
        return {run: ServeRun(bads[run], future.result()) for run, future in futures.items()}


@pytest.mark.parametrize("case", BAD_KEYS)
def test_bad_key_file_stops_serve(serve_runs: dict[tuple[str, str], ServeRun], case: str) -> None:
    """``tokendealer serve`` exits non-zero at once with one line naming the file."""
    run = serve_runs[case, "named"]
    bad, result = run.bad, run.result
    assert result.seconds < SERVE_EXIT_TIMEOUT
    assert result.code != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"Error: {bad}: "), output
    assert BAD_KEYS[case][1] in lines[0]


def test_bad_adopted_key_file_stops_serve(serve_runs: dict[tuple[str, str], ServeRun]) -> None:
    """A bad PEM in a directory without manifest stops ``serve`` the same way."""
    run = serve_runs["rsa 1024", "adopted"]
    bad, result = run.bad, run.result
    assert result.code != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: ")
    assert not (bad.parent / MANIFEST).exists()


@pytest.mark.parametrize("trouble", ["not ascii", "keys dir is a file", "too short"])
def test_a_session_secret_that_cannot_be_had_is_a_key_file_error(
    tmp_path: Path, trouble: str
) -> None:
    """One line naming the file (serve prints it before any worker starts), never an
    OSError or a UnicodeDecodeError from a worker's startup."""
    keys_dir = tmp_path / "keys"
    if trouble == "keys dir is a file":
        keys_dir.write_text("")
    else:
        keys_dir.mkdir()
        content = "é" * 40 if trouble == "not ascii" else "short"
        (keys_dir / SECRET_FILE).write_text(content, encoding="utf-8")
    settings = Settings(keys_dir=keys_dir, database_url=f"sqlite:///{tmp_path}/td.db")
    with pytest.raises(KeyFileError, match=r"session\.secret"):
        session_secret(settings)
