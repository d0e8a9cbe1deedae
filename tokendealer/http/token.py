"""The token endpoint: ``POST /oauth/token`` (RFC 6749 §4.4, client credentials grant).

Served as a plain ASGI route (``tokendealer.http.asgi``: it is the hot path), so it reads
top to bottom: read the request, count it against the client's limit, check the grant,
authenticate the client under the failed-authentication limit, apply its policy, mint.
Any error raised on the way is answered by ``tokendealer.http.errors.error_reply``.
"""

from __future__ import annotations

from tokendealer.http.asgi import Route
from tokendealer.http.exchange import Exchange
from tokendealer.http.params import Presented
from tokendealer.http.ratelimit import PER_CLIENT, Limiter, limits
from tokendealer.http.responses import NO_STORE, Reply, json_reply
from tokendealer.protocol.errors import InvalidRequest, UnsupportedGrantType
from tokendealer.protocol.policy import resolve_audience, resolve_scope
from tokendealer.service.dealer import Dealer
from tokendealer.service.tokens import TOKEN_TYPE

GRANT_TYPE = "client_credentials"
ENDPOINT = "token.token"


def require_grant(params: dict[str, str]) -> None:
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("The grant_type parameter is missing.")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType()


@limits(PER_CLIENT)
async def token(exchange: Exchange, dealer: Dealer, limiter: Limiter) -> Reply:
    presented = Presented.parse(
        exchange.header(b"content-type"),
        exchange.header_values(b"authorization"),
        await exchange.body(),
    )
    address = exchange.address(dealer.settings.trusted_proxies)
    # Counted per presented client id (per address when it presents none), before any
    # parse error is answered, so malformed requests are limited too.
    await limiter.acquire_for(token, ENDPOINT, presented.client_id, address)
    params = presented.params()
    require_grant(params)
    credentials = presented.credentials()
    # RFC 6749 §2.3.1: failed attempts are counted and, over the limit, refused (429).
    async with limiter.failures(credentials.client_id, address):
        client = await dealer.authenticate(credentials)
    scopes = resolve_scope(client, params.get("scope"))
    audience = resolve_audience(client, params, dealer.settings.audience)
    issued = dealer.issue(client, scopes, audience)
    # RFC 6749 §5.1 successful response; no refresh token for this grant (§4.4.3).
    body: dict[str, str | int] = {
        "access_token": issued.access_token,
        "token_type": TOKEN_TYPE,
        "expires_in": issued.expires_in,
    }
    if issued.scope:
        body["scope"] = issued.scope
    return json_reply(body, headers=NO_STORE)


ROUTE = Route("/oauth/token", "POST", ENDPOINT, token)
