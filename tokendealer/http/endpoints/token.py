"""The token endpoint: ``POST /oauth/token`` (RFC 6749 §4.4, client credentials grant).

The pipeline counts the request against the client's limit, checks the grant
(``require_grant``, before any secret is checked) and authenticates the client under the
failed-authentication limit; here: apply the client's policy, mint.
"""

from __future__ import annotations

from tokendealer.http.limits import PER_CLIENT
from tokendealer.http.pipeline import Call, Endpoint
from tokendealer.http.responses import NO_STORE, Reply, json_reply
from tokendealer.protocol import paths
from tokendealer.protocol.errors import InvalidRequest, UnsupportedGrantType
from tokendealer.protocol.policy import resolve_audience, resolve_scope
from tokendealer.service.tokens import TOKEN_TYPE

GRANT_TYPE = "client_credentials"


def require_grant(params: dict[str, str]) -> None:
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("The grant_type parameter is missing.")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType()


async def token(call: Call) -> Reply:
    params = call.request.params()
    client, settings = call.caller, call.dealer.settings
    scopes = resolve_scope(client, params.get("scope"))
    audience = resolve_audience(client, params, settings.audience)
    issued = await call.dealer.issue(client, scopes, audience)
    # RFC 6749 §5.1 successful response; no refresh token for this grant (§4.4.3).
    body: dict[str, str | int] = {
        "access_token": issued.access_token,
        "token_type": TOKEN_TYPE,
        "expires_in": issued.expires_in,
    }
    if issued.scope:
        body["scope"] = issued.scope
    return json_reply(body, headers=NO_STORE)


TOKEN = Endpoint(
    "POST", paths.TOKEN, (PER_CLIENT,), token, authenticates=True, precheck=require_grant
)
