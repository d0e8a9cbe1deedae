"""Small helpers shared by the route modules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from quart import Response, current_app

from tokendealer.dealer import Dealer

#: RFC 6749 §5.1: "The authorization server MUST include the HTTP 'Cache-Control'
#: response header field with a value of 'no-store' in any response containing tokens,
#: credentials, or other sensitive information, as well as the 'Pragma' response header
#: field with a value of 'no-cache'."
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def dealer() -> Dealer:
    return current_app.extensions["tokendealer"]  # type: ignore[no-any-return]


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    data = json.dumps(body, separators=(",", ":"))
    return Response(
        data, status=status, headers=dict(headers or {}), content_type="application/json"
    )
