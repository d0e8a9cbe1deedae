"""The Node.js project in ``tests/node`` (jose, openid-client, jsonwebtoken with jwks-rsa,
simple-oauth2) for interop tests.

``node_project()`` returns the project directory once its ``node_modules`` matches
``package-lock.json`` (``npm ci`` otherwise, under a file lock so parallel test runs do
not install over each other). Without node/npm, or when the install fails, the caller
is skipped locally and failed under CI, through ``tests.support.environment.unavailable``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.environment import unavailable

NODE_DIR = Path(__file__).parent.parent / "node"
STAMP = ".tokendealer-lock.sha256"
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 30


def _lock_digest() -> str:
    return hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()


def _installed(digest: str) -> bool:
    stamp = NODE_DIR / "node_modules" / STAMP
    return stamp.is_file() and stamp.read_text().strip() == digest


def _lock_path() -> Path:
    # Outside the repository, keyed on the project path: nothing to ignore in git.
    key = hashlib.sha256(str(NODE_DIR.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tokendealer-npm-{key}.lock"


def node_project() -> Path:
    """``tests/node`` with its dependencies installed exactly as the lock file says."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        unavailable("Node.js", "node or npm is not on PATH")
    assert npm is not None
    digest = _lock_digest()
    if _installed(digest):
        return NODE_DIR
    with _lock_path().open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if not _installed(digest):
                _npm_ci(npm, digest)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return NODE_DIR


def _npm_ci(npm: str, digest: str) -> None:
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable("Node.js", f"npm ci failed: {type(exc).__name__}: {exc}")
        return
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-1500:]
        unavailable("Node.js", f"npm ci exited {result.returncode}: {tail}")
    (NODE_DIR / "node_modules" / STAMP).write_text(digest + "\n")


def run_node(script: str, *args: str) -> dict[str, Any]:
    """Run ``node tests/node/SCRIPT ARGS...`` and parse the one JSON object it prints."""
    project = node_project()
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, script, *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"node {script} exited {result.returncode}: {result.stderr}"
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed
