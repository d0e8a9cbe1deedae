"""What every route answers with: a ``Reply`` (status, headers, body bytes).

A ``Reply`` is free of any framework: the OAuth pipeline sends it as it is, the Quart
routes convert it (``tokendealer.http.errors.to_response``), and errors are mapped to
replies in one place (``tokendealer.http.errors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokendealer import jsonbytes

#: RFC 6749 §5.1: "The authorization server MUST include the HTTP 'Cache-Control'
#: response header field with a value of 'no-store' in any response containing tokens,
#: credentials, or other sensitive information, as well as the 'Pragma' response header
#: field with a value of 'no-cache'."
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]
    content_type: str = JSON_TYPE

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        """The ASGI ``http.response.start`` headers, with Content-Type and Content-Length."""
        headers = [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode("latin-1")),
        ]
        headers.extend(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.headers.items()
        )
        return headers


def json_reply(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, jsonbytes.dumps(body), dict(headers or {}))
