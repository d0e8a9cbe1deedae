"""README.rst stays true: it parses, its test command is the one CI runs, and every
setting the service reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

import docutils.core
import docutils.utils

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


def test_readme_start_command_installs_and_serves() -> None:
    """The Quickstart start command installs the package and runs `tokendealer serve`."""
    assert (
        "    python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/tokendealer serve\n"
        in README
    )


def test_every_setting_is_documented() -> None:
    """Each TOKENDEALER_* variable that Settings.from_env reads appears in README.rst."""
    source = (ROOT / "tokendealer" / "settings.py").read_text()
    names = set(re.findall(r'PREFIX \+ "([A-Z_]+)"', source))
    names |= set(re.findall(r'\(\s*env,\s*"([A-Z_]+)"', source))
    assert {"ISSUER", "DATABASE_URL", "KEYS_DIR", "TOKEN_TTL"} <= names
    missing = sorted(n for n in names if f"TOKENDEALER_{n}" not in README)
    assert missing == []
