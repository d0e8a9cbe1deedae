"""One pipeline for every OAuth endpoint: token, introspection, revocation, verification,
and any endpoint added later.

An endpoint is declared, not wired: an ``Endpoint`` names its method, its path, its limits
(required: an endpoint cannot be unlimited by omission), how its body is read, whether
the client authenticates, and a handler, a framework-free function from the parsed
``OAuthRequest`` to a ``Reply``. The ``Pipeline`` (ASGI middleware in front of the Quart
app, which it hands every other request) answers them all the same way, top to bottom:

1. the request head is checked (size, framing) and the method (405);
2. the body is read once, within the size and time limits;
3. the parameters and the client's credentials are parsed once (an error is kept, to be
   raised when the part is asked for, so that a malformed request is counted too);
4. the declared limits are applied (per presented client id, per address);
5. the endpoint's prechecks of its parameters (the grant type, for a token request);
   then, when the endpoint authenticates, the client authentication chain
   (``tokendealer.service.authentication``) runs under the failed-authentication limit;
6. the handler answers;
7. any error on the way is mapped to its reply in one place (``error_reply``).

The request's endpoint and authenticated client are noted on its ``RequestRecord``, for
its access line and metrics (``tokendealer.http.observed``, the layer around this one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from quart import Quart
from werkzeug.exceptions import MethodNotAllowed, RequestEntityTooLarge, RequestTimeout

from tokendealer.http import observed
from tokendealer.http.errors import error_reply
from tokendealer.http.exchange import (
    ClientDisconnected,
    Exchange,
    Receive,
    Scope,
    Send,
    read_head,
    scope_address,
    send_reply,
)
from tokendealer.http.limits import Limit, Limiter
from tokendealer.http.observed import RequestRecord
from tokendealer.http.responses import Reply
from tokendealer.observe import events
from tokendealer.protocol.clients import Client
from tokendealer.protocol.errors import InvalidClient, InvalidRequest, OAuthError
from tokendealer.protocol.form import MAX_VALUE_LENGTH, parse_form, require_form
from tokendealer.service.authentication import Credentials, Presentation, read_credentials
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings

#: Reads an endpoint's parameters from the Content-Type and the body.
BodyReader = Callable[[str | None, bytes], dict[str, str]]


def form_body(max_value_length: int | None = MAX_VALUE_LENGTH) -> BodyReader:
    """An ``application/x-www-form-urlencoded`` body; ``None``: values as long as the body
    (a token to introspect may be any size: one too large to be ours is inactive)."""

    def read(content_type: str | None, body: bytes) -> dict[str, str]:
        require_form(content_type)
        return parse_form(body, max_value_length=max_value_length or len(body))

    return read


@dataclass(slots=True)
class OAuthRequest:
    """What the pipeline read of a request, once; a parse error is kept and raised when
    the part is asked for."""

    address: str
    _params: dict[str, str] | OAuthError
    _credentials: Credentials | OAuthError | None

    def params(self) -> dict[str, str]:
        """The parameters; a malformed body raises its error (400)."""
        if isinstance(self._params, OAuthError):
            raise self._params
        return self._params

    def credentials(self) -> Credentials:
        """The client's credentials (RFC 6749 §2.3); malformed or conflicting ones raise
        their error (400 or 401)."""
        if self._credentials is None:
            raise InvalidRequest("This endpoint takes no client credentials.")
        if isinstance(self._credentials, OAuthError):
            raise self._credentials
        return self._credentials

    @property
    def client_id(self) -> str | None:
        """The client id the request presents, if its body and credentials parse."""
        if isinstance(self._credentials, Credentials):
            return self._credentials.client_id
        return None


@dataclass(slots=True)
class Call:
    """What a handler is given: the request, the authenticated client (None where the
    endpoint does not authenticate) and the dealer."""

    request: OAuthRequest
    client: Client | None
    dealer: Dealer

    @property
    def caller(self) -> Client:
        """The authenticated client of an endpoint that authenticates."""
        assert self.client is not None, "the endpoint does not authenticate"  # noqa: S101  # nosec B101
        return self.client


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True)
class Endpoint:
    """One OAuth endpoint, as the pipeline serves it."""

    method: str
    path: str
    #: Required and never empty: every endpoint is limited by declaration.
    limits: tuple[Limit, ...]
    handle: Handler
    #: Whether the client authenticates (through ``tokendealer.service.authentication``).
    authenticates: bool
    read_body: BodyReader = field(default_factory=form_body)
    #: Checks of the parameters that come before client authentication (the grant type
    #: of a token request: a request that could never succeed costs no secret check).
    precheck: Callable[[dict[str, str]], None] | None = None

    def __post_init__(self) -> None:
        if not self.limits:
            raise ValueError(f"{self.method} {self.path}: declare the endpoint's limits")

    @property
    def name(self) -> str:
        """The handler's name: the key under which the endpoint's limits are counted."""
        return self.handle.__name__


class Pipeline:
    """ASGI middleware answering ``endpoints`` itself and everything else with ``app``."""

    def __init__(
        self, app: Quart, endpoints: Sequence[Endpoint], settings: Settings, limiter: Limiter
    ) -> None:
        self.app = app
        self.downstream = app.asgi_app
        self.endpoints: Mapping[str, Endpoint] = {e.path: e for e in endpoints}
        self.settings = settings
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.downstream(scope, receive, send)  # type: ignore[arg-type]
            return
        record = observed.current()
        if record is not None:
            record.endpoint = endpoint.name
        try:
            reply = await self._answer(endpoint, scope, receive, record)
        except ClientDisconnected:
            return
        await send_reply(send, reply)

    async def _answer(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, record: RequestRecord | None
    ) -> Reply:
        settings = self.settings
        try:
            headers = read_head(scope, settings.max_head_bytes)
            if scope["method"] != endpoint.method:
                raise MethodNotAllowed(valid_methods=[endpoint.method])
            exchange = Exchange(
                scope, receive, settings.max_body_bytes, settings.body_timeout, headers
            )
            try:
                body = await exchange.body()
            except (RequestEntityTooLarge, RequestTimeout):
                # Too large or too slow: counted by address all the same (a 429 wins).
                address = scope_address(scope, settings.trusted_proxies)
                await self.limiter.admit(endpoint.name, endpoint.limits, None, address)
                raise
            request = read_request(endpoint, exchange, body, settings)
            if record is not None:
                record.address = request.address
            # Counted before any parse error is answered: malformed requests count too.
            await self.limiter.admit(
                endpoint.name, endpoint.limits, request.client_id, request.address
            )
            if endpoint.precheck is not None:
                endpoint.precheck(request.params())
            dealer: Dealer = self.app.extensions["tokendealer"]
            client = None
            if endpoint.authenticates:
                try:
                    credentials = request.credentials()
                except InvalidClient:
                    events.client_auth_failed("none", "no usable client credentials", None)
                    raise
                # RFC 6749 §2.3.1: failed attempts are counted and, over the limit, 429.
                with dealer.reading(credentials) as reads:
                    async with self.limiter.failures(
                        credentials.client_id, request.address, reads=reads
                    ):
                        client = await dealer.authenticate(credentials)
                if record is not None:
                    record.client_id = client.client_id
            return await endpoint.handle(Call(request, client, dealer))
        except ClientDisconnected:
            raise
        except Exception as error:
            return error_reply(error, scope["path"])


def read_request(
    endpoint: Endpoint, exchange: Exchange, body: bytes, settings: Settings
) -> OAuthRequest:
    """Parse ``body`` and, for an endpoint that authenticates, the client's credentials:
    once, keeping an error to raise when the part is asked for."""
    address = scope_address(exchange.scope, settings.trusted_proxies)
    try:
        params = endpoint.read_body(exchange.header(b"content-type"), body)
    except OAuthError as error:
        return OAuthRequest(address, error, error if endpoint.authenticates else None)
    credentials: Credentials | OAuthError | None = None
    if endpoint.authenticates:
        try:
            credentials = read_credentials(presentation(exchange, params, endpoint.path))
        except OAuthError as error:
            credentials = error
    return OAuthRequest(address, params, credentials)


def presentation(exchange: Exchange, params: dict[str, str], path: str) -> Presentation:
    """The request's one Authorization header and its parameters. More than one header is
    refused: which of them counts would depend on who reads it (a proxy may take another
    than this server does)."""
    authorizations = exchange.header_values(b"authorization")
    if len(authorizations) > 1:
        raise InvalidRequest("Send one Authorization header, not several.")
    return Presentation(authorizations[0] if authorizations else None, params, path)
