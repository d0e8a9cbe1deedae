"""``POST /verify_token``: the dealer verifies a token for services that would rather ask.

Body: form or JSON with ``access_token`` and an optional ``audience``. A valid token is
answered 200 with its claims; any token that does not verify, 400 ``invalid_token``.
"""

from __future__ import annotations

import json

from quart import Blueprint, Response, request

from tokendealer.http.params import read_body
from tokendealer.http.ratelimit import PER_ADDRESS, limits
from tokendealer.http.responses import NO_STORE, dealer, json_response
from tokendealer.library.verification import InvalidToken
from tokendealer.protocol.errors import InvalidRequest, TokenRejected
from tokendealer.protocol.form import media_type, parse_form

blueprint = Blueprint("verify", __name__)


def parse_body(content_type: str | None, body: bytes) -> dict[str, str]:
    kind = media_type(content_type)
    if kind == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidRequest("The request body is not valid JSON.") from None
        if not isinstance(data, dict) or not all(
            isinstance(value, str)
            for key, value in data.items()
            if key in ("access_token", "audience")
        ):
            raise InvalidRequest("The request body must be a JSON object of strings.")
        return {k: v for k, v in data.items() if k in ("access_token", "audience") and v != ""}
    if kind == "application/x-www-form-urlencoded":
        # No per-value cap here: the body is already capped, and an oversized token must
        # be refused by the verification core as invalid_token, as it is in a JSON body.
        return parse_form(body, max_value_length=len(body))
    raise InvalidRequest("The request body must be a form or JSON.")


@blueprint.post("/verify_token")
@limits(PER_ADDRESS)
async def verify_token() -> Response:
    params = parse_body(
        request.content_type,
        await read_body(),
    )
    token = params.get("access_token")
    if token is None:
        raise InvalidRequest("The access_token parameter is missing.")
    try:
        claims = await dealer().verify(token, params.get("audience"))
    except InvalidToken as exc:
        raise TokenRejected(exc.description) from None
    return json_response(claims, headers=NO_STORE)
