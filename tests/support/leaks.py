"""What must never reach a log line, and every log line the suite produced.

The helpers that handle a client secret, an access token or a console password
``remember`` it (``tests.support.apps``, ``tokens``, ``cli``, ``servers``, ``console``);
the lines are the output pytest captured for every test (in-process logs go to standard
error or out), the standard error of every in-process CLI run (its standard output is
where a secret is meant to be shown, once), and the log file of every real server.
``tests/test_zz_no_secret_in_logs.py``, which ``conftest`` runs last, looks for each
value in each line.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Secrets, tokens and passwords the suite used.
USED: set[str] = set()
#: Captured output and CLI standard error, per test phase.
LINES: list[str] = []
#: The log files of the servers the suite ran.
LOG_FILES: list[Path] = []

#: A secret as the CLI prints it (text or JSON).
_SECRET_SHOWN = re.compile(r'client_secret"?\s*:\s*"?([A-Za-z0-9_\-]{20,})')
#: Shorter values are not distinctive enough to look for (test ids, "wrong").
MIN_LENGTH = 16


def remember(value: str | None) -> None:
    if value and len(value) >= MIN_LENGTH:
        USED.add(value)


def remember_shown_secrets(stdout: str) -> None:
    """The secrets a CLI command showed (``client_secret: ...`` or its JSON member)."""
    for match in _SECRET_SHOWN.finditer(stdout):
        remember(match.group(1))


#: What splits log text into the runs a secret or a token segment would be one of.
_RUN = re.compile(r"[A-Za-z0-9_\-~]+")


def runs(text: str) -> set[str]:
    """The maximal runs of base64url characters (and ``~``) in ``text``: a secret
    (``token_urlsafe``) or a JWT segment logged anywhere is one of them, whatever JSON,
    form or header syntax surrounds it."""
    return set(_RUN.findall(text))


def is_run(value: str) -> bool:
    return _RUN.fullmatch(value) is not None


def is_jwt(value: str) -> bool:
    parts = value.split(".")
    return len(parts) == 3 and all(is_run(part) for part in parts)


def pieces(value: str) -> list[str]:
    """What to look for of a run or a JWT: a JWT's payload and signature segments (its
    header alone is shared by every token of a key), else the value itself."""
    if is_jwt(value):
        return [part for part in value.split(".")[1:] if len(part) >= MIN_LENGTH]
    return [value]
