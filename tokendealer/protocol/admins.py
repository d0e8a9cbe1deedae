"""Administrator accounts: the record, and what a name and a password must be."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Passwords are human, low-entropy secrets: a floor on their length.
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", re.ASCII)


@dataclass(frozen=True)
class Admin:
    """An administrator. The password is held only as a memory-hard KDF hash."""

    name: str
    password_hash: str
    created_at: float
    password_changed_at: float


def admin_name_error(name: str) -> str | None:
    """Why ``name`` cannot be an administrator's name, or ``None``."""
    if _NAME.fullmatch(name) is None:
        return (
            "an admin name is 1-64 characters: letters, digits and . _ @ - "
            "(starting with a letter or digit)"
        )
    return None


def password_error(password: str) -> str | None:
    """Why ``password`` is refused, or ``None``."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password has at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"a password has at most {MAX_PASSWORD_LENGTH} characters"
    return None
