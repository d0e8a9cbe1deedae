"""``POST /oauth/introspect``: token introspection (RFC 7662).

The caller authenticates as a registered client, with the token endpoint's methods and
errors. Any token that is not currently valid here, or not for this caller (see
``Dealer.introspect``), is answered exactly ``{"active": false}`` (§2.2); the reason is
not disclosed.
"""

from __future__ import annotations

from quart import Blueprint, Response

from tokendealer.http.params import read_form
from tokendealer.http.ratelimit import PER_ADDRESS, PER_CLIENT, limits
from tokendealer.http.requests import authenticate_client
from tokendealer.http.responses import NO_STORE, dealer, json_response
from tokendealer.library.verification import InvalidToken
from tokendealer.protocol.errors import InvalidRequest
from tokendealer.service.tokens import TOKEN_TYPE

blueprint = Blueprint("introspect", __name__)

#: RFC 7662 §2.2 members returned for an active token, when the token has them.
MEMBERS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti")


@blueprint.post("/oauth/introspect")
@limits(PER_CLIENT, PER_ADDRESS)
async def introspect() -> Response:
    params = await read_form()
    caller = await authenticate_client()
    token = params.get("token")
    if token is None:
        raise InvalidRequest("The token parameter is missing.")
    # token_type_hint is only a hint (§2.1); we issue one kind of token, so it is ignored.
    try:
        claims = await dealer().introspect(caller, token)
    except InvalidToken:
        return json_response({"active": False}, headers=NO_STORE)
    body = {"active": True, **{k: claims[k] for k in MEMBERS if k in claims}}
    body["token_type"] = TOKEN_TYPE
    return json_response(body, headers=NO_STORE)
