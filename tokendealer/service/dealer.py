"""The token service's state and operations, free of any web framework.

``Dealer`` owns the settings, the store, the client registry and the key set; the HTTP
layer calls it one named step at a time.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tokendealer.keys.keyset import (
    KeyFileError,
    KeySet,
    SigningKey,
    load_keyset,
    manifest_stamp,
)
from tokendealer.library.verification import (
    MAX_TOKEN_LENGTH,
    InvalidToken,
    RevokedToken,
    UnknownKey,
    verify_access_token,
)
from tokendealer.log import get_logger
from tokendealer.observe import events, metrics, tracing
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import valid_client_id
from tokendealer.protocol.errors import InvalidGrant, InvalidScope, ServerError
from tokendealer.protocol.metadata import metadata_bytes
from tokendealer.protocol.policy import may_introspect
from tokendealer.service.activity import TokenActivity
from tokendealer.service.authentication import (
    METHOD_NAMES,
    Authenticator,
    Credentials,
    authenticate,
)
from tokendealer.service.denylist import DenyList
from tokendealer.service.key_sources import KeySource, key_source
from tokendealer.service.registry import ClientRegistry
from tokendealer.service.tokens import EPOCH_CLAIM, IssuedToken, mint
from tokendealer.service.waste import TokenWaste
from tokendealer.settings import Settings
from tokendealer.store import Store, StoreError, StoreUnavailable, store_for

log = get_logger("tokendealer.keys")


def _timed_mint(key: SigningKey, **claims: Any) -> tuple[IssuedToken, float]:
    """``mint``, and the seconds it took where it ran (a pool's queue not included)."""
    started = time.perf_counter()
    issued = mint(key, **claims)
    return issued, time.perf_counter() - started


@dataclass
class Dealer:
    settings: Settings
    store: Store
    keyset: KeySet
    #: The manifest stamp the key set was loaded from (see keywatch).
    keys_stamp: object = None
    registry: ClientRegistry = field(init=False)
    activity: TokenActivity = field(init=False)
    waste: TokenWaste = field(init=False)
    denylist: DenyList = field(init=False)
    authenticator: Authenticator = field(init=False)

    metadata_bytes: bytes = field(init=False)
    _failed_stamp: object = field(init=False, default=None)
    #: Where the keys live (``key_sources``), and whether a set was loaded from there.
    key_source: KeySource = field(init=False)
    keys_loaded: bool = field(init=False, default=False)
    _active_kid: str | None = field(init=False, default=None)
    _readiness: asyncio.Future[dict[str, str]] | None = field(init=False, default=None)
    _readiness_until: float = field(init=False, default=0.0)
    #: The threads that sign (``Settings.signing_threads``); None: the loop signs.
    _signing: ThreadPoolExecutor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.settings.signing_threads:
            self._signing = ThreadPoolExecutor(
                self.settings.signing_threads, thread_name_prefix="tokendealer-sign"
            )
        self.registry = ClientRegistry(self.store, self.settings.client_cache_ttl)
        self.activity = TokenActivity(self.store)
        self.waste = TokenWaste()
        self.denylist = DenyList(self.store, self.settings.client_cache_ttl)
        self.authenticator = Authenticator.of(self.registry, self.store, self.settings)
        self.key_source = key_source(self.settings, self.store)
        self.use_keyset(self.keyset, self.keys_stamp)

    async def refresh_keys(self) -> bool:
        """Reload the key set if its stamp changed (the manifest, or the database's key
        rows); True when a new set was swapped in.

        Writers replace the manifest atomically, and change the database's keys in one
        transaction, so a changed stamp means a complete new set. A set that fails to
        load is logged once per change, and the last good set stays in use; so it does
        while the database does not answer.
        """
        try:
            stamp = await self.key_source.stamp()
            if stamp == self.keys_stamp and self.keys_loaded:
                self._note_active_key()  # a next key may have reached its time
                return False
            keyset = await self.key_source.load()
            if not keyset.keys and self.keyset.keys:
                raise KeyFileError("the key set is empty now: every key was removed")
        except StoreError:
            return False  # the outage is logged by the store
        except KeyFileError as exc:
            # Tried again at every look (a bad file beside an unchanged manifest may go),
            # logged once per change.
            if stamp != self._failed_stamp:
                self._failed_stamp = stamp
                log.error("keys_reload_failed_keeping_last_good_set", reason=str(exc))
            return False
        self.use_keyset(keyset, stamp)
        self.keys_loaded = True
        log.info("keys_reloaded", kids=[key.kid for key in keyset.keys])
        return True

    def use_keyset(self, keyset: KeySet, stamp: object) -> None:
        """Swap in a new key set; the JWKS and metadata bytes are rebuilt only here."""
        algorithms = (key.alg for key in keyset.keys)
        self.metadata_bytes = metadata_bytes(self.settings, algorithms, METHOD_NAMES)
        self.keyset = keyset
        self.keys_stamp = stamp
        self._note_active_key()

    def _note_active_key(self) -> None:
        """Log the active key's change (a key state change: the next key reached its time,
        or the set loaded has another active key); the first key seen is no change."""
        active = self.keyset.active()
        kid = active.kid if active is not None else None
        if kid is not None and self._active_kid is not None and kid != self._active_kid:
            events.signing_key_activated(kid, self._active_kid)
        self._active_kid = kid

    @classmethod
    def from_settings(cls, settings: Settings, store: Store | None = None) -> Dealer:
        """Build the dealer; keys are loaded (and parsed) here, once, not per request:
        from the keys directory now, from the database once the store is open
        (``refresh_keys``, which the app's start awaits)."""
        store = store or store_for(settings)
        if settings.key_store == "database":
            return cls(settings=settings, store=store, keyset=KeySet(()), keys_stamp=None)
        stamp = manifest_stamp(settings.keys_dir)  # before loading: a change after it is seen
        dealer = cls(
            settings=settings,
            store=store,
            keyset=load_keyset(settings.keys_dir),
            keys_stamp=stamp,
        )
        dealer.keys_loaded = True
        return dealer

    async def readiness(self) -> dict[str, str]:
        """Each check's state (``"ok"`` or why not): the store answers, a key signs.

        The answer is reused for ``readiness_cache`` seconds, and callers arriving while a
        check runs share it: a flood of probes costs the database one query per interval.
        """
        now = time.monotonic()
        if self._readiness is not None and now < self._readiness_until:
            return await asyncio.shield(self._readiness)
        self._readiness = asyncio.ensure_future(self._check_readiness())
        self._readiness_until = now + self.settings.readiness_cache
        return await asyncio.shield(self._readiness)

    async def _check_readiness(self) -> dict[str, str]:
        try:
            await self.store.ping()
            store = "ok"
        except StoreUnavailable:
            store = "unavailable"
        if not self.keys_loaded:
            keys = "not loaded"
        elif self.keyset.active() is None:
            keys = "no active signing key"
        else:
            keys = "ok"
        return {"store": store, "keys": keys}

    async def authenticate(self, credentials: Credentials) -> Client:
        return await authenticate(self.authenticator, credentials)

    def reading(self, credentials: Credentials) -> ReadClaim:
        """Whether authenticating ``credentials`` is what reads their client from the
        store (``ClientRegistry.claim_read``), as a context manager: ``with
        dealer.reading(credentials) as reads:`` holds the claim for the block."""
        client_id = credentials.client_id
        return ReadClaim(
            self.registry,
            client_id,
            valid_client_id(client_id) and self.registry.claim_read(client_id),
        )

    async def issue(self, client: Client, scopes: tuple[str, ...], audience: str) -> IssuedToken:
        """A token for ``client``, signed by the active key: on the event loop, or by one
        of the signing threads while the loop serves other requests."""
        now = time.time()
        key = self.keyset.active(now)
        if key is None:
            if not self.keys_loaded:  # the database held them, and has not answered yet
                raise StoreUnavailable("the signing keys are not loaded yet")
            raise ServerError("No signing key is active.")
        minting = functools.partial(
            _timed_mint,
            key,
            issuer=self.settings.issuer,
            client_id=client.client_id,
            audience=audience,
            scopes=scopes,
            ttl=client.ttl or self.settings.token_ttl,
            now=now,
            epoch=client.token_epoch,
            claims=client.claims,
        )
        with tracing.span("sign", alg=key.alg, kid=key.kid):
            if self._signing is None:
                issued, seconds = minting()
            else:
                loop = asyncio.get_running_loop()
                issued, seconds = await loop.run_in_executor(self._signing, minting)
        if len(issued.access_token) > MAX_TOKEN_LENGTH:
            # Every verifier, ours and the library's, refuses such a token unread.
            raise InvalidScope("The token would be too large; request fewer scopes.")
        metrics.signing_duration(key.alg).observe(seconds)
        client_id = client.client_id
        metrics.tokens_issued(client_id).inc()
        expires_at = now + issued.expires_in
        if self.waste.issued(
            client_id, client.token_epoch, issued.scope, audience, now, expires_at
        ):
            metrics.early_token_requests(client_id).inc()
            self.activity.early_request(client_id)
        self.activity.token_issued(client_id, now)
        return issued

    def close(self) -> None:
        """Stop the signing threads (at shutdown, once no request is left)."""
        if self._signing is not None:
            self._signing.shutdown(wait=False, cancel_futures=True)

    async def verify_signed(
        self, token: str, audience: str | None = None, *, exact_expiry: bool = False
    ) -> dict[str, Any]:
        """Signature and claims against our own published keys (no revocation check).

        ``exact_expiry``: no leeway on ``exp``; ``nbf`` and ``iat`` keep theirs.

        A kid we do not know may belong to a key another worker or replica has just
        added: check the manifest once (a stat, cheap) before refusing.
        """
        try:
            return self._verify_with_current_keys(token, audience, exact_expiry)
        except UnknownKey:
            if not await self.refresh_keys():
                if not self.keys_loaded:  # the database holds them and has not answered
                    raise StoreUnavailable("the signing keys are not loaded yet") from None
                raise
        return self._verify_with_current_keys(token, audience, exact_expiry)

    def _verify_with_current_keys(
        self, token: str, audience: str | None, exact_expiry: bool
    ) -> dict[str, Any]:
        return verify_access_token(
            token,
            self.keyset.verification_keys,
            issuer=self.settings.issuer,
            audience=audience,
            leeway=self.settings.leeway,
            expiry_leeway=0 if exact_expiry else None,
        )

    async def verify(
        self, token: str, audience: str | None = None, *, exact_expiry: bool = False
    ) -> dict[str, Any]:
        """Everything the dealer knows: signature, claims, then revocation.

        Raises ``verification.InvalidToken`` (``RevokedToken`` when revoked) or
        ``StoreUnavailable`` when the deny-list cannot be read: never a yes by default.
        """
        claims = await self.verify_signed(token, audience, exact_expiry=exact_expiry)
        await self._check_not_revoked(claims)
        return claims

    async def introspect(self, caller: Client, token: str) -> dict[str, Any]:
        """The claims of ``token`` if it is active *for the caller* (RFC 7662 §4), else
        raise ``verification.InvalidToken``.

        Expiry is judged by this server's own clock, the one that set ``exp``, with no
        leeway: the server "MUST determine whether or not the token has expired". And a
        token meant for other resource servers is not active for this caller: it "MUST
        determine whether or not the token can be used at the resource server making the
        introspection call" (``policy.may_introspect``).
        """
        try:
            claims = await self.verify_signed(token, exact_expiry=True)
            await self._check_not_revoked(claims)
            if not may_introspect(caller, claims, self.settings.audience):
                raise InvalidToken("The token is not for this caller.")
        except InvalidToken:
            metrics.INTROSPECTIONS.labels("false").inc()
            raise
        metrics.INTROSPECTIONS.labels("true").inc()
        return claims

    async def _check_not_revoked(self, claims: dict[str, Any]) -> None:
        client = await self.registry.get(claims["client_id"])
        if client is None:
            # The client was removed: nothing it was issued is honoured any more.
            raise RevokedToken()
        # Only tokens of the client's current epoch are honoured: a registration, and
        # every revocation of the client's tokens, starts a new one. A worker minting from
        # a cached record that predates the change stamps the old epoch, so its tokens
        # are refused too, once this process's copy of the record is current (within
        # ``client_cache_ttl``).
        if claims.get(EPOCH_CLAIM, "") != client.token_epoch:
            raise RevokedToken()
        # Tokens minted before epochs existed carry none, like the records of that time:
        # one issued before this registration of the id (in an earlier whole second, as
        # iat counts them) belongs to a removed client.
        if claims["iat"] < int(client.created_at):
            raise RevokedToken()
        if await self.denylist.contains(claims["jti"], float(claims["exp"])):
            raise RevokedToken()

    async def revoke(self, client: Client, token: str) -> None:
        """RFC 7009 §2.1: revoke ``token`` if it is ours and belongs to ``client``.

        Invalid or expired tokens are left alone without error (§2.2: "invalid tokens do
        not cause an error response"). A valid token issued to another client is refused:
        the server "verifies whether the token was issued to the client making the
        revocation request. If this validation fails, the request is refused and the
        client is informed of the error" (``invalid_grant``: "issued to another client",
        RFC 6749 §5.2).
        """
        try:
            claims = await self.verify_signed(token)
        except InvalidToken:
            metrics.REVOCATIONS.inc()
            return
        if claims["client_id"] != client.client_id:
            raise InvalidGrant("The token was issued to another client.")
        await self.denylist.add(claims["jti"], client.client_id, float(claims["exp"]))
        metrics.REVOCATIONS.inc()
        events.token_revoked(client.client_id, claims["jti"])


class ReadClaim:
    """``Dealer.reading``: whether this attempt reads its client, and the claim on that
    read, given up when the block ends."""

    __slots__ = ("_client_id", "_registry", "reads")

    def __init__(self, registry: ClientRegistry, client_id: str, reads: bool) -> None:
        self._registry = registry
        self._client_id = client_id
        self.reads = reads

    def __enter__(self) -> bool:
        return self.reads

    def __exit__(self, *_exc: object) -> None:
        if self.reads:
            self._registry.release_read(self._client_id)
