"""``tokendealer serve`` says where it runs: one JSON log line, once it listens, with its
address, its store (never a password) and its keys directory. Real ``serve`` processes."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from tests.support.servers import ServerProcess, run_server

#: Put into the database URL when it has no password of its own (the test server trusts
#: local connections, so any password is accepted and must then be kept out of the log).
PASSWORD = "pg-startup-s3cret"


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def _serving(server: ServerProcess) -> dict[str, Any]:
    found = [line for line in _log_lines(server) if line.get("event") == "serving"]
    assert len(found) == 1, server.log()
    return found[0]


def test_startup_line_names_address_store_and_keys(tmp_path: Path) -> None:
    """With two workers, the parent logs one ``serving`` line (JSON, level info): the
    address it listens on, the SQLite store with its absolute path, the keys directory."""
    started = time.time()
    with run_server(tmp_path, workers=2) as server:
        line = _serving(server)
    assert line["level"] == "info"
    # ISO 8601 in UTC to the microsecond, the time the line was written.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
    written = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
    assert started - 1 <= written <= time.time()
    assert line["address"] == f"127.0.0.1:{server.port}"
    assert line["store"] == f"sqlite:///{tmp_path / 'td.db'}"
    assert line["keys_dir"] == str((tmp_path / "keys").resolve())
    assert (line["workers"], line["server"]) == (2, "uvicorn")


def test_startup_line_shows_no_database_password(tmp_path: Path, postgres_url: str) -> None:
    """A PostgreSQL URL with a password: the startup line shows the database, the user and
    the host, with the password masked, and the password appears nowhere in the log."""
    url = make_url(postgres_url)
    password = url.password or PASSWORD
    with_password = url.set(password=password).render_as_string(hide_password=False)
    assert password in with_password
    env = {"TOKENDEALER_DATABASE_URL": with_password}
    with run_server(tmp_path, server="hypercorn", env=env) as server:
        line = _serving(server)
        log = server.log()
    assert password not in log
    shown = make_url(line["store"])
    assert (shown.username, shown.host, shown.database) == (url.username, url.host, url.database)
    assert shown.password == "***"
    assert line["keys_dir"] == str((tmp_path / "keys").resolve())
