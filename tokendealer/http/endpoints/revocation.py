"""``POST /oauth/revoke``: token revocation (RFC 7009).

"The authorization server responds with HTTP status code 200 if the token has been
revoked successfully or if the client submitted an invalid token" (§2.2), so a client
learns nothing about tokens it does not own.
"""

from __future__ import annotations

from tokendealer.http.limits import PER_ADDRESS, PER_CLIENT
from tokendealer.http.pipeline import Call, Endpoint, form_body
from tokendealer.http.responses import NO_STORE, Reply
from tokendealer.protocol import paths
from tokendealer.protocol.errors import InvalidRequest


async def revoke(call: Call) -> Reply:
    token = call.request.params().get("token")
    if token is None:
        raise InvalidRequest("The token parameter is missing.")
    await call.dealer.revoke(call.caller, token)
    return Reply(200, b"", dict(NO_STORE), content_type="text/plain; charset=utf-8")


REVOCATION = Endpoint(
    "POST",
    paths.REVOCATION,
    (PER_CLIENT, PER_ADDRESS),
    revoke,
    authenticates=True,
    read_body=form_body(max_value_length=None),
)
