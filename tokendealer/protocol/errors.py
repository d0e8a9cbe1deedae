"""OAuth 2.0 error classes (RFC 6749 §5.2, RFC 6750 §3.1, RFC 8707 §2).

Each error is a small class that carries its ``error`` code, HTTP status and extra
headers; ``tokendealer.http.errors`` is the one place that turns them into responses.
Descriptions are fixed strings in the RFC 6749 §5.2 charset and never echo input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# RFC 6749 §5.2: error_description "MUST NOT include characters outside the set
# %x20-21 / %x23-5B / %x5D-7E."
_DESCRIPTION_CHARSET = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]*$")


class OAuthError(Exception):
    """Base class: a standard OAuth error answered to the client."""

    error: str = "invalid_request"
    status: int = 400
    default_description: str = "The request is invalid."

    def __init__(self, description: str | None = None) -> None:
        text = description or self.default_description
        if not _DESCRIPTION_CHARSET.match(text):
            raise ValueError("error_description outside the RFC 6749 §5.2 charset")
        super().__init__(text)
        self.description = text

    @property
    def headers(self) -> Mapping[str, str]:
        return {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    """Every client-authentication failure: one body, one status, one header.

    Unknown client, wrong secret and disabled client must be indistinguishable, so the
    description is fixed and cannot be overridden.
    """

    error = "invalid_client"
    status = 401
    default_description = "Client authentication failed."

    def __init__(self) -> None:
        super().__init__()

    @property
    def headers(self) -> Mapping[str, str]:
        # RFC 6749 §5.2: the server "MUST include the WWW-Authenticate response header
        # field matching the authentication scheme used by the client".
        return {"WWW-Authenticate": 'Basic realm="tokendealer"'}


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2: the grant (here: a token presented for revocation) "was issued to
    another client"."""

    error = "invalid_grant"
    default_description = "The grant is invalid."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    default_description = "Only the client_credentials grant is supported."


class InvalidScope(OAuthError):
    error = "invalid_scope"
    default_description = "The requested scope is not allowed for this client."


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the requested resource/audience is invalid or not allowed."""

    error = "invalid_target"
    default_description = "The requested audience is not allowed for this client."


class TokenRejected(OAuthError):
    """``/verify_token`` answer for any token that does not verify."""

    error = "invalid_token"
    default_description = "The token is invalid."


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503
    default_description = "The service is temporarily unavailable."

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": "5"}


class ServerError(OAuthError):
    error = "server_error"
    status = 500
    default_description = "The server encountered an unexpected error."


# -- RFC 6750: bearer tokens at a protected resource (the admin API) -----------------------

#: The scope a token needs at the admin API.
ADMIN_SCOPE = "tokendealer:admin"
_BEARER_REALM = 'Bearer realm="tokendealer"'


class BearerError(OAuthError):
    """An RFC 6750 §3 refusal; its ``WWW-Authenticate`` challenge carries the realm and
    the attributes ``challenge`` names."""

    def challenge(self) -> dict[str, str]:
        return {"error": self.error}

    @property
    def headers(self) -> Mapping[str, str]:
        attributes = "".join(f', {name}="{value}"' for name, value in self.challenge().items())
        return {"WWW-Authenticate": _BEARER_REALM + attributes}


class BearerRequired(BearerError):
    """No bearer token: RFC 6750 §3.1, "the resource server SHOULD NOT include an error
    code or other error information" in the challenge."""

    error = "invalid_token"
    status = 401
    default_description = "A bearer token is required."

    def challenge(self) -> dict[str, str]:
        return {}


class MalformedBearer(BearerError):
    """RFC 6750 §3.1 ``invalid_request``: a Bearer header without one token."""

    error = "invalid_request"
    status = 400
    default_description = "The Authorization header must carry exactly one bearer token."


class InvalidBearerToken(BearerError):
    """RFC 6750 §3.1 ``invalid_token``: expired, revoked, malformed, or not for us."""

    error = "invalid_token"
    status = 401
    default_description = "The access token is invalid."

    def challenge(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InsufficientScope(BearerError):
    """RFC 6750 §3.1 ``insufficient_scope``: a valid token without the scope needed."""

    error = "insufficient_scope"
    status = 403
    default_description = "The access token lacks the scope this resource needs."

    def challenge(self) -> dict[str, str]:
        return {"error": self.error, "scope": ADMIN_SCOPE}


class MissingCsrfToken(OAuthError):
    """A console session calling the admin API without its CSRF token (``X-CSRF-Token``):
    the cookie alone may have been sent by another site's page."""

    error = "invalid_request"
    status = 403
    default_description = "A console session needs its CSRF token in the X-CSRF-Token header."
