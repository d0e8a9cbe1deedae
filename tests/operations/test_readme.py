"""README.rst stays true: it parses, its test command is the one CI runs, and every
setting the service reads is documented."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import tomllib
from pathlib import Path

import docutils.core
import docutils.utils
import httpx
import pytest

from tests.support.cli import CLI
from tests.support.processes import free_port, tokendealer_executable
from tests.support.servers import wait_until
from tests.support.tokens import unverified

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.rst").read_text()


def test_readme_is_valid_restructuredtext() -> None:
    """docutils parses the README with no warning or error."""
    docutils.core.publish_doctree(
        README, settings_overrides={"report_level": 2, "halt_level": 2, "warning_stream": False}
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    """The Testing command in README.rst is, verbatim, the command .ci/run executes."""
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert match is not None
    command = match.group(1)
    assert f"    {command}\n" in README
    assert 'bash -c "$TEST_COMMAND"' in ci


def _literal_lines(after_heading: str, block: int) -> list[str]:
    """The lines of the ``block``-th literal block (``::``) after a section heading."""
    section = README[README.index(f"{after_heading}\n" + "-" * len(after_heading)) :]
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", section)
    return [line[4:] for line in blocks[block].splitlines() if line.strip()]


def _as_installed(words: list[str]) -> list[str]:
    """The README's ``.venv/bin/tokendealer`` is the console script installed here."""
    assert words[0] == ".venv/bin/tokendealer", words
    return [tokendealer_executable(), *words[1:]]


@pytest.mark.e2e
def test_quickstart_word_for_word(tmp_path: Path) -> None:
    """An operator follows the Quickstart in an empty directory with no configuration:
    the start command serves on its embedded defaults (SQLite file and keys/ created in
    the working directory), the "Register a client" command prints a secret, and the
    README's curl command, with that secret, gets the token the README shows. Only the
    port differs (5000 may be taken here): set through click's TOKENDEALER_SERVE_PORT,
    so the command's words stay the README's."""
    start = _literal_lines("Quickstart", 0)
    assert len(start) == 1
    steps = [shlex.split(step) for step in start[0].split("&&")]
    assert steps[0] == ["python3", "-m", "venv", ".venv"]
    assert steps[1][:2] == [".venv/bin/pip", "install"] and steps[1][-1] == "."
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["tokendealer"] == "tokendealer.cli:main"

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env["TOKENDEALER_SERVE_PORT"] = str(port)
    log = tmp_path.parent / f"{tmp_path.name}-serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            _as_installed(steps[2]),
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: _healthy(port) or server.poll() is not None,
            timeout=30,
            what="the Quickstart server to answer /healthz",
        )
        assert server.poll() is None, log.read_text()
        created = sorted(path.name for path in tmp_path.iterdir())
        assert "keys" in created and any(name.endswith(".db") for name in created), created

        lines = _literal_lines("Quickstart", 2)
        register, fetch = (line for line in lines if line.startswith("$ "))
        add = CLI(env, cwd=tmp_path, script=True).ok(*_as_installed(register[2:].split())[1:])
        secret = re.search(r"^client_secret: +(\S+)", add.stdout, re.MULTILINE)
        assert secret is not None, add.stdout
        # What the README shows of it: its standard output, then its standard error.
        shown = lines[lines.index(register) + 1 : lines.index(fetch)]
        printed = (add.stdout + add.stderr).replace(secret.group(1), "6m1rV...")
        assert shown == printed.splitlines(), (shown, printed)
        curl = shlex.split(fetch[2:])
        assert curl[0] == "curl"
        curl = [
            word.replace("6m1rV...", secret.group(1)).replace(":5000/", f":{port}/")
            for word in curl
        ]
        answer = subprocess.run(curl, capture_output=True, text=True, timeout=30, check=True)
        token = json.loads(answer.stdout)
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "invoices:read"
        assert token["expires_in"] == 3600
        assert unverified(token["access_token"])[1]["aud"] == "https://invoices.internal"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_every_setting_is_documented() -> None:
    """Each TOKENDEALER_* variable that Settings.from_env reads appears in README.rst."""
    source = (ROOT / "tokendealer" / "settings.py").read_text()
    names = set(re.findall(r'PREFIX \+ "([A-Z_]+)"', source))
    names |= set(re.findall(r'\(\s*env,\s*"([A-Z_]+)"', source))
    assert {"ISSUER", "DATABASE_URL", "KEYS_DIR", "TOKEN_TTL"} <= names
    missing = sorted(n for n in names if f"TOKENDEALER_{n}" not in README)
    assert missing == []
