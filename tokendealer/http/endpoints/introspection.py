"""``POST /oauth/introspect``: token introspection (RFC 7662).

The caller authenticates as a registered client, with the token endpoint's methods and
errors. Any token that is not currently valid here, or not for this caller (see
``Dealer.introspect``), is answered exactly ``{"active": false}`` (§2.2); the reason is
not disclosed.
"""

from __future__ import annotations

from tokendealer.http.limits import PER_ADDRESS, PER_CLIENT
from tokendealer.http.pipeline import Call, Endpoint, form_body
from tokendealer.http.responses import NO_STORE, Reply, json_reply
from tokendealer.library.verification import InvalidToken
from tokendealer.protocol import paths
from tokendealer.protocol.claims import client_claims
from tokendealer.protocol.errors import InvalidRequest
from tokendealer.service.tokens import TOKEN_TYPE

#: RFC 7662 §2.2 members returned for an active token, when the token has them; the
#: client's claims follow (``protocol.claims.client_claims``).
MEMBERS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti")


async def introspect(call: Call) -> Reply:
    token = call.request.params().get("token")
    if token is None:
        raise InvalidRequest("The token parameter is missing.")
    # token_type_hint is only a hint (§2.1); we issue one kind of token, so it is ignored.
    try:
        claims = await call.dealer.introspect(call.caller, token)
    except InvalidToken:
        return json_reply({"active": False}, headers=NO_STORE)
    body = {"active": True, **{k: claims[k] for k in MEMBERS if k in claims}}
    # The client's own claims, as the token carries them (§2.2 allows other names).
    body.update(client_claims(claims))
    body["token_type"] = TOKEN_TYPE
    return json_reply(body, headers=NO_STORE)


INTROSPECTION = Endpoint(
    "POST",
    paths.INTROSPECTION,
    (PER_CLIENT, PER_ADDRESS),
    introspect,
    authenticates=True,
    # A token may be any size up to the body cap: one too large to be ours is inactive.
    read_body=form_body(max_value_length=None),
)
