"""Shared fixtures: settings on a temporary directory, the app, stores of each backend.

Shared helpers (the token request, the CLI runner, real servers...) are in
``tests/support``; test modules import from there, never from each other or from here.
PostgreSQL tests create a private database for the session on the machine's server
(``tests.support.environment``).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from quart import Quart

from tests.support import leaks
from tests.support.environment import ISSUER, POSTGRES_URL, QuartClient, Register, unavailable
from tokendealer.http import create_app
from tokendealer.keys.keyset import ensure_key
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret, generate_secret
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings
from tokendealer.store import SQLStore, schema


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(name="postgres_url", scope="session")
def _postgres_url() -> Iterator[str]:
    """A private database on the PostgreSQL server, dropped at the end of the session."""
    name = f"tokendealer_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(POSTGRES_URL, f'CREATE DATABASE "{name}"'))
    except ImportError as exc:
        unavailable("PostgreSQL", f"asyncpg not installed: {exc}")
    except Exception as exc:
        unavailable("PostgreSQL", f"{POSTGRES_URL}: {type(exc).__name__}: {exc}")
    base, _, _ = POSTGRES_URL.rpartition("/")
    yield f"{base}/{name}"
    asyncio.run(_admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(name="sqlite_template", scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database at the current schema for the session: creating the tables
    is a good part of an app's start, and most tests do not test it (the store suite and
    the migration tests make their own)."""
    path = tmp_path_factory.mktemp("db-template") / "tokendealer.db"

    async def create() -> None:
        store = SQLStore(Settings(database_url=f"sqlite:///{path}").sqlalchemy_url)
        await store.open()
        await store.close()

    asyncio.run(create())
    return path


@pytest.fixture(name="sqlite_url")
def _sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A test's own SQLite database, a copy of the session's empty one (mode kept)."""
    path = tmp_path / "tokendealer.db"
    shutil.copy2(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(name="database_url", params=["sqlite", "postgres"])
def _database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every backend in turn; used by the store suite."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tokendealer.db'}"
    url: str = request.getfixturevalue("postgres_url")
    asyncio.run(_truncate(url))
    return url


async def _truncate(url: str) -> None:
    # The schema may not exist yet on the first test: open() migrates it.
    store = SQLStore(Settings(database_url=url).sqlalchemy_url)
    try:
        await store.open()
        async with store.engine.begin() as conn:
            for table in schema.metadata.sorted_tables:
                if table is not schema.schema_version:
                    await conn.execute(table.delete())
    finally:
        await store.close()


@pytest.fixture(name="keys_template", scope="session")
def _keys_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One signing key for the session: RSA generation is the slowest part of an app start."""
    keys_dir = tmp_path_factory.mktemp("keys-template") / "keys"
    ensure_key(keys_dir)
    return keys_dir


@pytest.fixture(name="settings")
def _settings(tmp_path: Path, sqlite_url: str, request: pytest.FixtureRequest) -> Settings:
    """Settings on the test's own directory, its keys directory filled with a copy of the
    session's key (files and modes kept): most tests do not test key creation, and a key
    per test would be the slowest part of the suite. A test marked ``fresh_keys`` gets an
    empty keys directory, so that the app creates its first key at start."""
    keys_dir = tmp_path / "keys"
    if request.node.get_closest_marker("fresh_keys") is None:
        shutil.copytree(request.getfixturevalue("keys_template"), keys_dir)
    return Settings(
        issuer=ISSUER,
        database_url=sqlite_url,
        keys_dir=keys_dir,
        client_cache_ttl=0.0,
        access_log=False,
    )


@pytest.fixture(name="app")
async def _app(settings: Settings) -> AsyncIterator[Quart]:
    app = create_app(settings)
    async with app.test_app():
        yield app


@pytest.fixture(name="client")
def _client(app: Quart) -> QuartClient:
    return app.test_client()


@pytest.fixture(name="dealer")
def _dealer(app: Quart) -> Dealer:
    dealer: Dealer = app.extensions["tokendealer"]
    return dealer


@pytest.fixture(name="register")
def _register(dealer: Dealer) -> Register:
    """Register a client directly in the store; returns its secret."""

    async def register(
        client_id: str = "svc",
        *,
        scopes: tuple[str, ...] = (),
        audiences: tuple[str, ...] = (),
        ttl: int | None = None,
        disabled: bool = False,
        token_epoch: str | None = None,
    ) -> str:
        """``token_epoch=""``: a record as stored before token epochs, whose tokens carry
        none (for tests that build token claims by hand)."""
        secret = generate_secret()
        await dealer.store.add_client(
            Client(
                client_id=client_id,
                secret_digest=digest_secret(secret),
                scopes=scopes,
                audiences=audiences,
                ttl=ttl,
                disabled=disabled,
                created_at=time.time(),
                **({} if token_epoch is None else {"token_epoch": token_epoch}),
            )
        )
        leaks.remember(secret)
        return secret

    return register


#: The test that reads every log line of the session: it runs last.
LAST = "tests/test_zz_no_secret_in_logs.py::test_no_secret_or_token_reached_a_log_line"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid == LAST)  # stable: the others keep their order


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep what each test wrote (pytest's captured output) for the last test: its
    teardown report holds the output of all three phases."""
    if report.when != "teardown":
        return
    for name, content in report.sections:
        if name.startswith("Captured") and content:
            leaks.LINES.append(content)
