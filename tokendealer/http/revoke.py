"""``POST /oauth/revoke``: token revocation (RFC 7009).

"The authorization server responds with HTTP status code 200 if the token has been
revoked successfully or if the client submitted an invalid token" (§2.2), so a client
learns nothing about tokens it does not own.
"""

from __future__ import annotations

from quart import Blueprint, Response

from tokendealer.http.params import read_form
from tokendealer.http.ratelimit import PER_ADDRESS, PER_CLIENT, limits
from tokendealer.http.requests import authenticate_client
from tokendealer.http.responses import NO_STORE, dealer
from tokendealer.protocol.errors import InvalidRequest

blueprint = Blueprint("revoke", __name__)


@blueprint.post("/oauth/revoke")
@limits(PER_CLIENT, PER_ADDRESS)
async def revoke() -> Response:
    params = await read_form()
    client = await authenticate_client()
    token = params.get("token")
    if token is None:
        raise InvalidRequest("The token parameter is missing.")
    await dealer().revoke(client, token)
    return Response(b"", status=200, headers=NO_STORE)
