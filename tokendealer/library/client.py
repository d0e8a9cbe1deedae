"""Fetching access tokens from the dealer: ``TokenClient`` and ``TokenAuth``.

A service trades its client id and secret for a token (RFC 6749 §4.4), keeps it until
shortly before it expires, and sends it as a Bearer token (RFC 6750 §2.1)::

    tokens = TokenClient("https://dealer.example/oauth/token", "worker", secret,
                         audience="orders-api", scope="write")
    async with httpx.AsyncClient(auth=TokenAuth(tokens)) as http:
        await http.post("https://orders.example/items", json=item)

* ``get_token()`` (async) and ``get_token_sync()`` return the cached token while it has
  more than ``min(30 s, 10 % of expires_in)`` left, else fetch a new one; concurrent
  callers share one fetch (single flight); ``force=True`` fetches anew.
* ``TokenAuth`` adds the header and, when the target answers 401, fetches a new token
  once and retries the request once (a revoked key, a service enforcing a maximum token
  age, a clock jump: the cached token can be refused before its ``expires_in``).
* Instead of a secret, a client may hold a private key (``private_key=``, PEM or JWK, with
  ``kid``): each token request then carries a fresh RFC 7523 client assertion signed
  with it (``private_key_jwt``, see ``tokendealer.library.assertions``)::

      tokens = TokenClient("https://dealer.example/oauth/token", "worker",
                           private_key=pem, kid="worker-1", issuer="https://dealer.example")

* Every failure raises ``TokenError`` with the RFC 6749 §5.2 ``error`` code the dealer
  sent (``invalid_client``, ``invalid_scope``, ...); when the dealer could not be reached
  or answered something that is not an OAuth token-endpoint response (another code, no
  JSON), the code is ``server_error`` and ``status_code`` tells what happened (None: no
  answer at all).
* When the application uses OpenTelemetry, each token request carries the trace context
  of the caller's current span (W3C ``traceparent``; ``fetching.traced_headers``).

This module imports nothing of the server. Tokens, secrets, keys and assertions are never
logged.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx

from tokendealer.library.assertions import ASSERTION_TYPE, ClientAssertionSigner, SigningKey
from tokendealer.library.fetching import Fetcher, traced_headers

__all__ = ["AUTH_METHODS", "Token", "TokenAuth", "TokenClient", "TokenError"]

log = logging.getLogger("tokendealer.client")

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
PRIVATE_KEY_JWT = "private_key_jwt"
AUTH_METHODS = (*SECRET_METHODS, PRIVATE_KEY_JWT)
#: A token is refreshed this long before it expires: min(EARLY_SECONDS, EARLY_FRACTION).
EARLY_SECONDS = 30.0
EARLY_FRACTION = 0.1
#: Used when a token response carries no ``expires_in`` (RFC 6749 §5.1: RECOMMENDED).
DEFAULT_EXPIRES_IN = 60
MAX_RESPONSE_BYTES = 64 * 1024


#: The codes a token endpoint answers: RFC 6749 §5.2, RFC 8707 §2 (invalid_target) and
#: the "retry later" pair this dealer uses for 429 and 503 (§4.1.2.1).
TOKEN_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "temporarily_unavailable",
        "server_error",
    }
)


class TokenError(Exception):
    """The dealer refused or could not issue a token.

    ``error`` is the RFC 6749 §5.2 code (``server_error`` when the dealer gave none),
    ``description`` its ``error_description``, ``status_code`` the HTTP status (None when
    the dealer could not be reached).
    """

    def __init__(self, error: str, description: str = "", status_code: int | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status_code = status_code


@dataclass(frozen=True)
class Token:
    """One issued token. ``refresh_at`` is on the client's monotonic clock."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str | None
    refresh_at: float

    def __repr__(self) -> str:
        # Never show the token itself.
        return f"Token(expires_in={self.expires_in}, scope={self.scope!r})"


def _basic(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1 / App. B: "The client identifier is encoded using the
    # application/x-www-form-urlencoded encoding algorithm ... and the encoded value is
    # used as the username; the client password is encoded using the same algorithm
    # and used as the password."
    userpass = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(userpass.encode("utf-8")).decode("ascii")


def _parse_token_response(status: int, body: bytes, refresh_at: Callable[[int], float]) -> Token:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise TokenError(
            "server_error", f"the token endpoint answered HTTP {status} without JSON", status
        )
    if status != 200:
        error = document.get("error")
        if not isinstance(error, str) or error not in TOKEN_ERRORS:
            # Not an answer of a token endpoint (a 404 page of a proxy, a wrong URL).
            raise TokenError("server_error", f"the token endpoint answered HTTP {status}", status)
        description = document.get("error_description")
        raise TokenError(
            error,
            description if isinstance(description, str) else f"HTTP {status}",
            status,
        )
    access_token = document.get("access_token")
    token_type = document.get("token_type")
    expires_in = document.get("expires_in", DEFAULT_EXPIRES_IN)
    scope = document.get("scope")
    if not isinstance(access_token, str) or not access_token:
        raise TokenError("server_error", "the token response has no access_token", status)
    # RFC 6749 §7.1: "The client MUST NOT use an access token if it does not understand
    # the token type"; RFC 6750 §4: the value is case-insensitive.
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenError("server_error", "the token type is not Bearer", status)
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
        raise TokenError("server_error", "the token response has an invalid expires_in", status)
    return Token(
        access_token=access_token,
        token_type=token_type,
        expires_in=expires_in,
        scope=scope if isinstance(scope, str) else None,
        refresh_at=refresh_at(expires_in),
    )


class TokenClient(Fetcher):
    """Get, cache and renew access tokens with the client-credentials grant.

    ``scope`` is a space-separated string or an iterable of scopes; ``audience`` the
    service the token is for (sent as the dealer's ``audience`` parameter).
    ``http_client`` / ``sync_http_client`` may be given (proxies, TLS settings, tests);
    without them each fetch uses a short-lived client of its own, so there is nothing to
    close.

    The client authenticates with ``client_secret`` (``auth_method``
    ``client_secret_basic``, the default, or ``client_secret_post``) or with
    ``private_key`` (``private_key_jwt``): a PEM private key (``private_key_password``
    when encrypted), a private JWK (``dict`` or JSON text) or a ``cryptography`` key, with
    the ``kid`` the dealer knows it by (default: the JWK's) and ``alg`` (default: from the
    JWK or the key; see ``tokendealer.library.assertions``). Each token request then sends
    ``client_id``, ``client_assertion_type`` and a freshly signed ``client_assertion``
    (new ``jti``, 60 s lifetime) in the form body. The assertion's ``aud`` is
    ``assertion_audience`` when given, else ``issuer`` (the dealer's issuer identifier,
    draft-ietf-oauth-rfc7523bis) when given, else ``token_url`` (RFC 7523 §3). Giving
    both a secret and a key, or neither, is a ``ValueError``; so is a key the dealer
    cannot accept.

    >>> tokens = TokenClient(url, "worker", secret, audience="orders-api")
    >>> tokens = TokenClient(url, "worker", private_key=pem, kid="worker-1", issuer=issuer)
    >>> token = await tokens.get_token()
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None = None,
        *,
        private_key: str | bytes | Mapping[str, Any] | SigningKey | None = None,
        private_key_password: str | bytes | None = None,
        kid: str | None = None,
        alg: str | None = None,
        issuer: str | None = None,
        assertion_audience: str | None = None,
        audience: str | None = None,
        scope: str | Iterable[str] | None = None,
        auth_method: str | None = None,
        timeout: float = 10,
        http_client: httpx.AsyncClient | None = None,
        sync_http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if auth_method is not None and auth_method not in AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {', '.join(AUTH_METHODS)}")
        self._signer: ClientAssertionSigner | None = None
        if client_secret is not None and private_key is not None:
            raise ValueError("give either client_secret or private_key, not both")
        if private_key is not None:
            if auth_method not in (None, PRIVATE_KEY_JWT):
                raise ValueError(f"a private key authenticates with {PRIVATE_KEY_JWT}")
            auth_method = PRIVATE_KEY_JWT
            self._signer = ClientAssertionSigner(
                client_id,
                private_key,
                kid=kid,
                alg=alg,
                audience=assertion_audience or issuer or token_url,
                password=private_key_password,
            )
        elif client_secret is not None:
            if auth_method == PRIVATE_KEY_JWT:
                raise ValueError(f"{PRIVATE_KEY_JWT} needs private_key, not client_secret")
            unused = {
                "private_key_password": private_key_password,
                "kid": kid,
                "alg": alg,
                "assertion_audience": assertion_audience,
            }
            given = [name for name, value in unused.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with private_key")
            auth_method = auth_method or "client_secret_basic"
        else:
            raise ValueError("a client_secret or a private_key is required")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.issuer = issuer
        self.audience = audience
        self.scope = scope if isinstance(scope, str) or scope is None else " ".join(scope)
        self.auth_method = auth_method
        Fetcher.__init__(self, timeout, http_client, sync_http_client)
        self._clock = clock
        self._token: Token | None = None
        self._sync_lock = threading.Lock()
        self.fetches = 0

    @property
    def assertion_audience(self) -> str | None:
        """The ``aud`` of the client assertions (None when authenticating with a secret)."""
        return None if self._signer is None else self._signer.audience

    def __repr__(self) -> str:
        return f"TokenClient({self.token_url!r}, {self.client_id!r})"

    # -- public API ----------------------------------------------------------------------

    async def get_token(self, *, force: bool = False, rejected: str | None = None) -> str:
        """A valid access token, from the cache or freshly fetched.

        ``force=True`` fetches a new one, unless one was fetched while this call waited
        for the fetch in flight. ``rejected`` is a token the target service refused: a
        new one is fetched unless the cache already holds a different one.
        """
        seen = self._token
        if not force and rejected is None and seen is not None and self._usable(seen):
            return seen.access_token
        async with self._async_lock():
            current = self._reusable(seen, force=force, rejected=rejected)
            if current is not None:
                return current.access_token
            status, body = await self._post()
            return self._store(status, body)

    def get_token_sync(self, *, force: bool = False, rejected: str | None = None) -> str:
        """The blocking counterpart of ``get_token``."""
        seen = self._token
        if not force and rejected is None and seen is not None and self._usable(seen):
            return seen.access_token
        with self._sync_lock:
            current = self._reusable(seen, force=force, rejected=rejected)
            if current is not None:
                return current.access_token
            status, body = self._post_sync()
            return self._store(status, body)

    @property
    def token(self) -> Token | None:
        """The cached token, if any (its ``repr`` never shows the token)."""
        return self._token

    # -- internals ---------------------------------------------------------------------------

    def _usable(self, token: Token) -> bool:
        return self._clock() < token.refresh_at

    def _reusable(self, seen: Token | None, *, force: bool, rejected: str | None) -> Token | None:
        """Decided under the lock: the cached token if it may be returned without a fetch."""
        current = self._token
        if current is None or not self._usable(current):
            return None
        if rejected is not None:
            return current if current.access_token != rejected else None
        if force:
            # Fetched by another caller while this one waited: that is the fresh token.
            return current if current is not seen else None
        return current

    def _refresh_at(self, expires_in: int) -> float:
        early = min(EARLY_SECONDS, EARLY_FRACTION * expires_in)
        return self._clock() + expires_in - early

    def _request(self) -> tuple[dict[str, str], dict[str, str]]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        headers = {"Accept": "application/json"}
        if self._signer is not None:
            # RFC 7523 §2.2, with client_id (RFC 6749 §2.3; the dealer asks for it): a
            # new assertion for each request, as the dealer accepts each jti once.
            form["client_id"] = self.client_id
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self._signer.sign()
        elif self._secret is None:  # pragma: no cover - refused by __init__
            raise AssertionError("no credentials")
        elif self.auth_method == "client_secret_basic":
            headers["Authorization"] = _basic(self.client_id, self._secret)
        else:
            form["client_id"] = self.client_id
            form["client_secret"] = self._secret
        return form, traced_headers(headers)

    def _store(self, status: int, body: bytes) -> str:
        token = _parse_token_response(status, body, self._refresh_at)
        self._token = token
        log.debug(
            "token_fetched",
            extra={"client_id": self.client_id, "expires_in": token.expires_in},
        )
        return token.access_token

    async def _post(self) -> tuple[int, bytes]:
        form, headers = self._request()
        self.fetches += 1
        try:
            async with (
                self._async_http() as http,
                http.stream("POST", self.token_url, data=form, headers=headers) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        break
                return response.status_code, bytes(body)
        except httpx.HTTPError as exc:
            raise TokenError(
                "server_error", f"the token endpoint is unreachable ({type(exc).__name__})"
            ) from exc

    def _post_sync(self) -> tuple[int, bytes]:
        form, headers = self._request()
        self.fetches += 1
        try:
            with (
                self._sync_http_client() as http,
                http.stream("POST", self.token_url, data=form, headers=headers) as response,
            ):
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        break
                return response.status_code, bytes(body)
        except httpx.HTTPError as exc:
            raise TokenError(
                "server_error", f"the token endpoint is unreachable ({type(exc).__name__})"
            ) from exc


class TokenAuth(httpx.Auth):
    """``httpx`` authentication with tokens from a ``TokenClient`` (sync and async).

    Adds ``Authorization: Bearer <token>``. When the target answers 401, the token is
    taken as refused: a new one is fetched (once, shared with concurrent requests that
    were refused the same token) and the request is retried once. A second 401 is
    returned to the caller as is.

    >>> http = httpx.AsyncClient(auth=TokenAuth(tokens))
    """

    # The body is replayed on retry, so it must be read first.
    requires_request_body = True

    def __init__(self, client: TokenClient) -> None:
        self.client = client

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        token = self.client.get_token_sync()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = self.client.get_token_sync(rejected=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.client.get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await self.client.get_token(rejected=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
