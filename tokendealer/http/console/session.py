"""Console sessions: who is signed in, for how long, and the CSRF token of the session.

quart-auth keeps the session in a signed, timestamped cookie (``HttpOnly``,
``SameSite=Strict``, ``Secure`` when the issuer is https, path ``/admin``). Its lifetime
is the idle timeout (``admin_session_ttl``): every request of a signed-in administrator
renews it, so a session ends after that long without a request, or at sign-out (which
puts it on the deny-list, so a copy of the cookie is worthless too).

The cookie names the administrator, a fingerprint of the password hash they signed in
with, and a random nonce. Each request checks the account still exists and still has that
password: removing an account or setting its password signs out its sessions everywhere.
The CSRF token is an HMAC of the whole cookie value under the session secret, so it is
bound to this one session and worthless in any other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import warnings
from dataclasses import dataclass

from quart import Quart, Response, current_app, g
from quart_auth import AuthUser, QuartAuth, current_user, login_user, logout_user, renew_login

from tokendealer.protocol.admins import Admin
from tokendealer.settings import Settings
from tokendealer.store.base import Store

COOKIE = "tokendealer_console"
#: The form field and the API header that carry the session's CSRF token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SALT = "tokendealer console session"


@dataclass(frozen=True)
class Session:
    """The signed-in administrator of the current request."""

    name: str
    nonce: str
    csrf_token: str

    @property
    def actor(self) -> str:
        return f"admin:{self.name}"


class _Auth(QuartAuth):
    """quart-auth, without two warnings that do not apply here: the session cookie is
    set on the redirect that follows a same-site form post (SameSite=Strict cookies are
    stored from such a response), and ``Secure`` follows the issuer's scheme while a
    TLS-terminating proxy may speak plain HTTP to this process."""

    async def after_request(self, response: Response) -> Response:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Strict samesite cookies", UserWarning)
            warnings.filterwarnings("ignore", "Secure cookies will be ignored", UserWarning)
            return await super().after_request(response)


def install(app: Quart, settings: Settings) -> None:
    """Sessions for ``app``; the secret is set when the app starts (``app.secret_key``)."""
    _Auth(
        app,
        cookie_name=COOKIE,
        cookie_path="/admin",
        cookie_samesite="Strict",
        cookie_secure=settings.issuer.startswith("https:"),
        cookie_http_only=True,
        duration=settings.admin_session_ttl,
        salt=_SALT,
    )


def _secret() -> bytes:
    return str(current_app.secret_key).encode()


def _fingerprint(admin: Admin) -> str:
    """Which password the session was opened with, without saying anything about it."""
    return hmac.new(_secret(), admin.password_hash.encode(), hashlib.sha256).hexdigest()[:32]


def _csrf(auth_id: str) -> str:
    return hmac.new(_secret(), b"csrf\0" + auth_id.encode(), hashlib.sha256).hexdigest()


def sign_in(admin: Admin) -> None:
    """Open a session for ``admin`` (the cookie is set on this request's response)."""
    auth_id = f"{admin.name} {_fingerprint(admin)} {secrets.token_urlsafe(16)}"
    login_user(AuthUser(auth_id))


def _ended(nonce: str) -> str:
    """The deny-list entry of an ended session (the deny-list of tokens holds those too)."""
    return f"console-session:{nonce}"


async def sign_out(store: Store, current: Session, ttl: int) -> None:
    """End the session here and everywhere its cookie may have been copied to: it is put
    on the deny-list for as long as it could still be renewed."""
    await store.revoke_token(_ended(current.nonce), current.actor, time.time() + ttl)
    logout_user()


async def current(store: Store) -> Session | None:
    """The session of this request, renewed; ``None`` when there is none (no cookie, a bad
    signature, idle too long, or an account removed or given a new password since)."""
    auth_id = current_user.auth_id
    if auth_id is None:
        return None
    head, _, nonce = auth_id.rpartition(" ")
    name, _, fingerprint = head.partition(" ")
    admin = await store.get_admin(name)
    if (
        admin is None
        or not hmac.compare_digest(_fingerprint(admin), fingerprint)
        or await store.is_revoked(_ended(nonce))
    ):
        logout_user()
        return None
    renew_login()
    session = Session(name, nonce, _csrf(auth_id))
    g.console_session = session
    return session


def csrf_matches(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf_token, presented)
