"""The token endpoint: ``POST /oauth/token`` (RFC 6749 §4.4, client credentials grant)."""

from __future__ import annotations

from quart import Blueprint, Response

from tokendealer.errors import InvalidRequest, UnsupportedGrantType
from tokendealer.http.params import read_form
from tokendealer.http.ratelimit import PER_CLIENT, limits
from tokendealer.http.requests import authenticate_client
from tokendealer.http.responses import NO_STORE, dealer, json_response
from tokendealer.policy import resolve_audience, resolve_scope
from tokendealer.tokens import TOKEN_TYPE

blueprint = Blueprint("token", __name__)

GRANT_TYPE = "client_credentials"


def require_grant(params: dict[str, str]) -> None:
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("The grant_type parameter is missing.")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType()


@blueprint.post("/oauth/token")
@limits(PER_CLIENT)
async def token() -> Response:
    params = await read_form()
    require_grant(params)
    client = await authenticate_client()
    scopes = resolve_scope(client, params.get("scope"))
    audience = resolve_audience(client, params, dealer().settings.audience)
    issued = dealer().issue(client, scopes, audience)
    # RFC 6749 §5.1 successful response; no refresh token for this grant (§4.4.3).
    body = {
        "access_token": issued.access_token,
        "token_type": TOKEN_TYPE,
        "expires_in": issued.expires_in,
    }
    if issued.scope:
        body["scope"] = issued.scope
    return json_response(body, headers=NO_STORE)
