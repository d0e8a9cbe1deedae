"""``POST /verify_token``: the dealer verifies a token for services that would rather ask.

Body: form or JSON with ``access_token`` and an optional ``audience``. A valid token is
answered 200 with its claims; any token that does not verify, 400 ``invalid_token``.
"""

from __future__ import annotations

from tokendealer.http.limits import PER_ADDRESS
from tokendealer.http.pipeline import Call, Endpoint
from tokendealer.http.responses import NO_STORE, Reply, json_reply
from tokendealer.jsonbytes import DuplicateName, loads_strict
from tokendealer.library.verification import InvalidToken
from tokendealer.protocol import paths
from tokendealer.protocol.errors import InvalidRequest, TokenRejected
from tokendealer.protocol.form import media_type, parse_form

PARAMETERS = ("access_token", "audience")


def read_body(content_type: str | None, body: bytes) -> dict[str, str]:
    kind = media_type(content_type)
    if kind == "application/json":
        try:
            data = loads_strict(body)
        except DuplicateName:
            raise InvalidRequest("A member of the JSON body is repeated.") from None
        except (ValueError, RecursionError):
            raise InvalidRequest("The request body is not valid JSON.") from None
        if not isinstance(data, dict) or not all(
            isinstance(value, str) for key, value in data.items() if key in PARAMETERS
        ):
            raise InvalidRequest("The request body must be a JSON object of strings.")
        return {k: v for k, v in data.items() if k in PARAMETERS and v != ""}
    if kind == "application/x-www-form-urlencoded":
        # No per-value cap here: the body is already capped, and an oversized token must
        # be refused by the verification core as invalid_token, as it is in a JSON body.
        return parse_form(body, max_value_length=len(body))
    raise InvalidRequest("The request body must be a form or JSON.")


async def verify_token(call: Call) -> Reply:
    params = call.request.params()
    token = params.get("access_token")
    if token is None:
        raise InvalidRequest("The access_token parameter is missing.")
    try:
        claims = await call.dealer.verify(token, params.get("audience"))
    except InvalidToken as exc:
        raise TokenRejected(exc.description) from None
    return json_reply(claims, headers=NO_STORE)


VERIFICATION = Endpoint(
    "POST",
    paths.VERIFICATION,
    (PER_ADDRESS,),
    verify_token,
    authenticates=False,
    read_body=read_body,
)
