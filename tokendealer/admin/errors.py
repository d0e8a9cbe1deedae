"""The admin service's errors; each face maps them (one CLI line, an HTTP status, a form
message next to its field)."""

from __future__ import annotations


class AdminError(Exception):
    """A refused administrative change; the message is one line fit for a person."""

    #: The input field the message is about, when there is one (forms show it there).
    field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Invalid(AdminError):
    """Bad input: HTTP 400."""


class NotFound(AdminError):
    """No such client, key or administrator: HTTP 404."""


class Conflict(AdminError):
    """It exists already, or the state forbids it: HTTP 409."""
