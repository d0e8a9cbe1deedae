"""URLs that the dealer fetches from (a client's key set, a trusted issuer's discovery
document and keys): what one must be."""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_URL_LENGTH = 2000


def http_url_error(value: str) -> str | None:
    """Why ``value`` is not an http or https URL the dealer may fetch, or ``None``."""
    reason = f"an http(s) URL of at most {MAX_URL_LENGTH} characters"
    if len(value) > MAX_URL_LENGTH or not value.isprintable() or any(c.isspace() for c in value):
        return reason
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:  # an unclosed IPv6 bracket, a bad port
        return reason
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return reason
    return None
