"""The one way tests get a token, and what they do with one.

``request_token``/``get_token`` ask the app's test client; ``post_token``/``fetch_token``
ask a real server over HTTP. All build the same request: ``grant_type=client_credentials``,
the parameters given (``None`` leaves one out), and the credentials by ``method``: ``basic``
(RFC 6749 §2.3.1: each part form-urlencoded, then joined and base64-encoded), ``post``
(``client_id`` and ``client_secret`` in the body) or ``none`` (no credentials).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import leaks
from tests.support.environment import ISSUER, QuartClient
from tokendealer.service.dealer import Dealer
from tokendealer.service.tokens import mint

TOKEN_PATH = "/oauth/token"
INTROSPECT_PATH = "/oauth/introspect"
VERIFY_PATH = "/verify_token"
GRANT = {"grant_type": "client_credentials"}
#: RFC 7662 §2.2: the whole answer for a token that is not active.
INACTIVE = {"active": False}


def basic_credentials(client_id: str, secret: str) -> str:
    """The ``Authorization`` value for ``client_secret_basic`` (RFC 6749 §2.3.1)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode("utf-8")).decode("ascii")


def basic(client_id: str, secret: str) -> dict[str, str]:
    """The ``Authorization`` header for ``client_secret_basic``, as a headers dict."""
    return {"Authorization": basic_credentials(client_id, secret)}


def token_request_parts(
    client_id: str, secret: str, method: str = "basic", **params: str | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The form and the headers of a token request."""
    leaks.remember(secret)
    form = dict(GRANT)
    form.update({name: value for name, value in params.items() if value is not None})
    headers: dict[str, str] = {}
    if method == "basic":
        headers.update(basic(client_id, secret))
    elif method == "post":
        form.update(client_id=client_id, client_secret=secret)
    elif method != "none":
        raise ValueError(f"unknown client authentication method {method!r}")
    return form, headers


async def request_token(
    client: QuartClient,
    client_id: str,
    secret: str,
    *,
    method: str = "basic",
    headers: dict[str, str] | None = None,
    peer: str | None = None,
    **params: str | None,
) -> Any:
    """``POST /oauth/token`` through the test client; the response, whatever its status.
    ``peer`` is the client address the app sees."""
    form, auth = token_request_parts(client_id, secret, method, **params)
    return await client.post(
        TOKEN_PATH,
        form=form,
        headers={**auth, **(headers or {})},
        scope_base={"client": (peer, 40000)} if peer is not None else None,
    )


async def get_token(
    client: QuartClient, client_id: str, secret: str, *, method: str = "basic", **params: str | None
) -> str:
    """An access token from the test client; the request must succeed."""
    response = await request_token(client, client_id, secret, method=method, **params)
    assert response.status_code == 200, await response.get_data(as_text=True)
    token: str = (await response.get_json())["access_token"]
    leaks.remember(token)
    return token


def post_token(
    base_url: str,
    client_id: str,
    secret: str,
    *,
    http: httpx.Client | None = None,
    method: str = "basic",
    **params: str | None,
) -> httpx.Response:
    """``POST /oauth/token`` to a real server at ``base_url``; the response, whatever its
    status (``fetch_token`` is the one that must succeed)."""
    form, headers = token_request_parts(client_id, secret, method, **params)
    if http is None:
        return httpx.post(base_url + TOKEN_PATH, data=form, headers=headers, timeout=10)
    return http.post(base_url + TOKEN_PATH, data=form, headers=headers)


def fetch_token(
    base_url: str,
    client_id: str,
    secret: str,
    *,
    http: httpx.Client | None = None,
    method: str = "basic",
    **params: str | None,
) -> str:
    """An access token from a real server at ``base_url``; the request must succeed."""
    response = post_token(base_url, client_id, secret, http=http, method=method, **params)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    leaks.remember(token)
    return token


async def introspect(
    client: QuartClient, token: str, caller: tuple[str, str], **extra: str
) -> tuple[int, dict[str, Any], Any]:
    """``POST /oauth/introspect`` of ``token`` as ``caller`` (``(client_id, secret)``,
    client_secret_basic); the status, the JSON body and the headers."""
    response = await client.post(
        INTROSPECT_PATH, form={"token": token, **extra}, headers=basic(*caller)
    )
    return response.status_code, json.loads(await response.get_data()), response.headers


async def verify_status(client: QuartClient, token: str) -> int:
    """The status ``POST /verify_token`` answers for ``token``; a 400 must be
    ``invalid_token``."""
    response = await client.post(VERIFY_PATH, form={"access_token": token})
    if response.status_code == 400:
        assert (await response.get_json())["error"] == "invalid_token"
    return response.status_code


# -- reading and changing tokens ----------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(value: dict[str, Any] | list[Any] | str | bytes) -> str:
    """A JWS segment: JSON objects compact, strings and bytes as they are, base64url."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"))
    if isinstance(value, str):
        value = value.encode()
    return b64url_encode(value)


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the claims of a token, its signature not checked."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


def tamper(token: str, **changes: Any) -> str:
    """The token with claims changed (default: a wider scope), its header and signature
    kept: what an attacker who edits a token sends."""
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims.update(changes or {"scope": "read write admin"})
    return f"{header}.{segment(claims)}.{signature}"


def rfc7638_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 §3.1 by hand: '{"e":..,"kty":"RSA","n":..}', no whitespace, SHA-256."""
    numbers = public_key.public_numbers()

    def uint(value: int) -> str:
        return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    canonical = '{"e":"' + uint(numbers.e) + '","kty":"RSA","n":"' + uint(numbers.n) + '"}'
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


async def forge(
    dealer: Dealer,
    client_id: str = "svc",
    *,
    issuer: str = ISSUER,
    now: float | None = None,
    ttl: int = 300,
) -> str:
    """A token for ``client_id`` signed with the dealer's own active key, in the client's
    current token epoch, without a token request: for claims a request cannot produce."""
    key = dealer.keyset.active()
    assert key is not None
    record = await dealer.store.get_client(client_id)
    return mint(
        key,
        issuer=issuer,
        client_id=client_id,
        audience=ISSUER,
        scopes=("read",),
        ttl=ttl,
        now=time.time() if now is None else now,
        epoch=record.token_epoch if record else "",
    ).access_token
