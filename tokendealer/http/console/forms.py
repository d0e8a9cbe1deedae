"""Form fields of the console, read into what the admin service takes.

A form shows values as text; a bad one is an ``Invalid`` naming the field, which the page
shows next to that field with what was typed kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokendealer.admin.errors import Invalid
from tokendealer.protocol.claims import parse_json


def words(form: Mapping[str, str], name: str) -> list[str]:
    """A list field: values separated by spaces, commas or new lines."""
    return form.get(name, "").replace(",", " ").split()


def whole_number(
    form: Mapping[str, str], name: str, *, blank: int | None = None, label: str | None = None
) -> int | None:
    """A whole number (seconds, a count), or ``blank`` when the field is empty."""
    raw = form.get(name, "").strip()
    if not raw:
        return blank
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise Invalid(f"{label or name} must be a whole number", name)
    return int(raw)


def json_object(form: Mapping[str, str], name: str, *, label: str) -> dict[str, Any] | None:
    """A JSON object typed in a text area; empty is ``{}``, and a form without the field
    ``None`` (nothing to change)."""
    if name not in form:
        return None
    raw = form[name].strip()
    if not raw:
        return {}
    try:
        value = parse_json(raw)
    except ValueError as exc:
        raise Invalid(f"{label} are not JSON ({exc})", name) from None
    if not isinstance(value, dict):
        raise Invalid(f'{label} are a JSON object, such as {{"tenant": "acme"}}', name)
    return value


def text(form: Mapping[str, str], name: str) -> str:
    return form.get(name, "")


def optional(form: Mapping[str, str], name: str) -> str | None:
    """A field that may be left empty: its text, without surrounding spaces, or
    ``None`` when there is none."""
    return form.get(name, "").strip() or None


def checked(form: Mapping[str, str], name: str) -> bool:
    return form.get(name) in ("on", "true", "1")
