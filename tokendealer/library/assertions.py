"""Client assertions for ``private_key_jwt`` (RFC 7523 §2.2, §3): a client proves who it is
with a short JWT signed by its own private key instead of a shared secret.

``ClientAssertionSigner`` holds the client id, the private key and the assertion's
audience, and signs a fresh assertion for each token request::

    signer = ClientAssertionSigner("worker", pem, kid="worker-2025",
                                   audience="https://dealer.example")
    form["client_assertion"] = signer.sign()

* The key is a PEM private key (``str`` or ``bytes``, ``password`` when encrypted), a
  private JWK (a ``dict`` or its JSON text) or a ``cryptography`` private key object.
  Public keys, shared secrets (``kty`` ``oct``) and JWK Sets are refused.
* The algorithm is the one given, else the JWK's ``alg``, else derived from the key: RSA
  → RS256 (the most widely supported; PS256/384/512 and RS384/512 when asked for), EC
  P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA. These are the dealer's algorithms; any
  other key type, curve or algorithm (``none``, HS*, an RSA algorithm with an EC key, an
  RSA key under 2048 bits) is refused with ``ValueError`` when the signer is made, not
  when a token is requested.
* The header is ``{"alg", "typ": "JWT", "kid"}`` (``kid`` when given, else the JWK's; left
  out when neither has one). The claims are ``iss`` = ``sub`` = the client id, ``aud``,
  ``iat``, ``exp`` = ``iat`` + 60 s and a fresh random ``jti`` (the dealer accepts each
  ``jti`` once).

The ``aud`` is the authorization server's issuer identifier (draft-ietf-oauth-rfc7523bis,
which the dealer prefers) or its token endpoint URL (RFC 7523 §3); ``TokenClient`` picks
one. The key and the assertions are never logged nor shown in a ``repr``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = [
    "ASSERTION_LIFETIME",
    "ASSERTION_TYPE",
    "SIGNING_ALGORITHMS",
    "ClientAssertionSigner",
]

#: RFC 7523 §2.2: the ``client_assertion_type`` of a JWT client assertion.
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds from ``iat`` to ``exp`` (the dealer accepts at most 300).
ASSERTION_LIFETIME = 60

RSA_SIGNING = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
#: The algorithms the dealer accepts, each with the one key type it signs with.
SIGNING_ALGORITHMS = (*RSA_SIGNING, "ES256", "ES384", "EdDSA")
#: RFC 7518 §3.3 and §3.5: "A key of size 2048 bits or larger MUST be used".
MIN_RSA_BITS = 2048
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384"}
#: Key text starting so is JSON (a JWK), else PEM.
_JSON_STARTS = ("{", "[", b"{", b"[")

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _load_pem(data: bytes, password: str | bytes | None) -> object:
    if isinstance(password, str):
        password = password.encode("utf-8")
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError as exc:
        # cryptography: a password for an unencrypted key, or none for an encrypted one.
        raise ValueError(f"the private key cannot be read: {exc}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(
            "the private key is not a readable PEM private key (a public key, a"
            " certificate, or a wrong password?)"
        ) from None


def _load_jwk(jwk: Mapping[str, Any]) -> object:
    """The private key of a JWK, through PyJWT's readers (which check its members)."""
    if "keys" in jwk:
        raise ValueError("the key is a JWK Set: pass the one private JWK to sign with")
    kty = jwk.get("kty")
    if kty == "oct":
        raise ValueError(
            "a symmetric JWK (kty oct) is a shared secret: private_key_jwt signs with an"
            " asymmetric private key"
        )
    readers: dict[str, Callable[[dict[str, Any]], object]] = {
        "RSA": RSAAlgorithm.from_jwk,
        "EC": ECAlgorithm.from_jwk,
        "OKP": OKPAlgorithm.from_jwk,
    }
    reader = readers.get(kty) if isinstance(kty, str) else None
    if reader is None:
        raise ValueError(f"unsupported JWK key type {kty!r} (use RSA, EC or OKP)")
    if "d" not in jwk:
        raise ValueError("the JWK is a public key: signing needs the private key (its 'd')")
    if jwk.get("use", "sig") != "sig":
        raise ValueError("the JWK's 'use' is not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "sign" not in key_ops):
        raise ValueError("the JWK's 'key_ops' do not include 'sign'")
    try:
        return reader(dict(jwk))
    except (jwt.exceptions.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"the JWK cannot be read: {exc}") from None


def _default_algorithm(key: SigningKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _EC_ALGORITHMS[key.curve.name]
    return "EdDSA"


def _check_key(key: object) -> SigningKey:
    """The key if the dealer accepts its type, size and curve; else ValueError."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"the RSA key has {key.key_size} bits: at least 2048 are needed")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _EC_ALGORITHMS:
            raise ValueError(
                f"unsupported EC curve {key.curve.name} (use P-256 for ES256 or P-384 for ES384)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError("the key is a public key: signing needs the private key")
    raise ValueError(
        f"unsupported key {type(key).__name__}: use an RSA (2048 bits or more), EC P-256,"
        " EC P-384 or Ed25519 private key"
    )


def _check_algorithm_name(alg: object) -> str:
    if not isinstance(alg, str):
        raise ValueError("alg must be a string")
    if alg.lower() == "none":
        raise ValueError("alg 'none' is refused: a client assertion must be signed")
    if alg.upper().startswith("HS"):
        raise ValueError(
            f"alg {alg!r} is a shared-secret algorithm (client_secret_jwt): private_key_jwt"
            " signs with an asymmetric private key"
        )
    if alg not in SIGNING_ALGORITHMS:
        raise ValueError(f"unsupported alg {alg!r} (use one of {', '.join(SIGNING_ALGORITHMS)})")
    return alg


def _check_algorithm(alg: str, key: SigningKey) -> str:
    expected = _default_algorithm(key)
    fits = alg in RSA_SIGNING if isinstance(key, rsa.RSAPrivateKey) else alg == expected
    if not fits:
        raise ValueError(f"alg {alg!r} does not fit the key ({_describe(key)}: use {expected})")
    return alg


def _describe(key: SigningKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC {key.curve.name} key"
    return "an Ed25519 key"


class ClientAssertionSigner:
    """Signs RFC 7523 client assertions for ``client_id`` with ``private_key``.

    ``private_key``: PEM text or bytes (``password`` if encrypted), a private JWK as a
    ``dict`` or JSON text, or a ``cryptography`` private key. ``kid`` names the key for
    the dealer (default: the JWK's ``kid``); ``alg`` defaults to the JWK's ``alg``, else
    to the key's default (see the module). ``audience`` is the assertion's ``aud``: the
    dealer's issuer identifier or its token endpoint URL. Every problem with the key or
    the algorithm raises ``ValueError`` here.
    """

    def __init__(
        self,
        client_id: str,
        private_key: str | bytes | Mapping[str, Any] | SigningKey,
        *,
        kid: str | None = None,
        alg: str | None = None,
        audience: str,
        password: str | bytes | None = None,
    ) -> None:
        if not client_id:
            raise ValueError("client_id is required")
        if not audience:
            raise ValueError("audience is required (the issuer or the token endpoint URL)")
        jwk: Mapping[str, Any] | None = None
        if alg is not None:
            _check_algorithm_name(alg)
        if isinstance(private_key, str | bytes) and private_key.lstrip()[:1] in _JSON_STARTS:
            try:
                parsed = json.loads(private_key)
            except ValueError:
                raise ValueError("the key looks like JSON but is not valid JSON") from None
            if not isinstance(parsed, dict):
                raise ValueError("the JSON key is not a JWK (a JSON object)")
            jwk = parsed
        elif isinstance(private_key, Mapping):
            jwk = private_key
        if jwk is not None:
            if password is not None:
                raise ValueError("a password is for an encrypted PEM key, not for a JWK")
            jwk_alg, jwk_kid = jwk.get("alg"), jwk.get("kid")
            if jwk_alg is not None:
                if alg is not None and alg != jwk_alg:
                    raise ValueError(f"alg {alg!r} differs from the JWK's alg {jwk_alg!r}")
                alg = _check_algorithm_name(jwk_alg)
            if kid is None and isinstance(jwk_kid, str):
                kid = jwk_kid
            loaded = _load_jwk(jwk)
        elif isinstance(private_key, str | bytes):
            data = private_key.encode("utf-8") if isinstance(private_key, str) else private_key
            loaded = _load_pem(data, password)
        else:
            if password is not None:
                raise ValueError("a password is for an encrypted PEM key")
            loaded = private_key
        key = _check_key(loaded)
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise ValueError("kid must be a non-empty string")
        self.client_id = client_id
        self.audience = audience
        self.kid = kid
        self.alg = _check_algorithm(alg if alg is not None else _default_algorithm(key), key)
        self._key = key

    def __repr__(self) -> str:
        # Never the key.
        return f"ClientAssertionSigner({self.client_id!r}, alg={self.alg!r}, kid={self.kid!r})"

    def sign(self, now: float | None = None) -> str:
        """A new assertion (a fresh ``jti``), issued at ``now`` (Unix time; default: now)
        and valid for ``ASSERTION_LIFETIME`` seconds."""
        issued_at = int(time.time() if now is None else now)
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "iat": issued_at,
            "exp": issued_at + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(16),
        }
        headers = {"typ": "JWT"}
        if self.kid is not None:
            headers["kid"] = self.kid
        return jwt.encode(claims, self._key, algorithm=self.alg, headers=headers)
