"""Public keys as JWKs (RFC 7517) and their thumbprints (RFC 7638), for the three key types
of ``algorithms``: RSA (RFC 7518 §6.3), EC (RFC 7518 §6.2) and OKP (RFC 8037 §2).

Plain functions over ``cryptography`` key objects, shared by the server (to publish its
JWKS) and by ``tokendealer.library.verify`` (to read someone else's).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokendealer.library.algorithms import (
    ALGORITHMS,
    MIN_RSA_BITS,
    RSA_ALGORITHMS,
    SIGNING_ALGORITHMS,
    PublicKey,
)

__all__ = [
    "MIN_RSA_BITS",
    "RSA_ALGORITHMS",
    "SIGNING_ALGORITHMS",
    "b64url",
    "b64url_uint",
    "public_jwk",
    "public_members",
    "thumbprint",
    "thumbprint_kid",
    "verification_keys",
]


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_uint(value: int) -> str:
    """RFC 7518 §6.3.1.1: "represented as the base64url encoding of the value's unsigned
    big-endian representation as an octet sequence. The octet sequence MUST utilize the
    minimum number of octets needed to represent the value."
    """
    return b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


#: The JWK ``crv`` of each supported curve, and the curve of each ``crv``.
_CRV = {"secp256r1": "P-256", "secp384r1": "P-384"}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
#: RFC 7638 §3.2: the members of each key type that its thumbprint hashes.
_REQUIRED = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def _coordinate(value: int, curve: ec.EllipticCurve) -> str:
    """RFC 7518 §6.2.1.2: "The length of this octet string MUST be the full size of a
    coordinate for the curve specified in the "crv" parameter" (32 octets for P-256)."""
    return b64url(value.to_bytes((curve.key_size + 7) // 8, "big"))


def public_members(public_key: PublicKey) -> dict[str, str]:
    """The key's type and public members: ``kty``, ``n``, ``e`` (RSA); ``kty``, ``crv``,
    ``x``, ``y`` (EC, RFC 7518 §6.2.1); ``kty``, ``crv``, ``x`` (OKP, RFC 8037 §2)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = _CRV.get(public_key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported curve {public_key.curve.name}")
        point = public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _coordinate(point.x, public_key.curve),
            "y": _coordinate(point.y, public_key.curve),
        }
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    raise ValueError(f"unsupported key type {type(public_key).__name__}")


def thumbprint_kid(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3: the SHA-256 JWK thumbprint, base64url: the hash of the key type's
    required members only (§3.2), in lexicographic order, without whitespace. ``KeyError``
    for a key type other than RSA, EC and OKP, or a required member missing."""
    members = {name: jwk[name] for name in _REQUIRED[str(jwk["kty"])]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    return b64url(digest)


def thumbprint(public_key: PublicKey) -> str:
    """The RFC 7638 thumbprint of ``public_key``: the ``kid`` of the dealer's keys."""
    return thumbprint_kid(public_members(public_key))


def public_jwk(public_key: PublicKey, alg: str, kid: str) -> dict[str, Any]:
    """The public members only: never ``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``."""
    members = public_members(public_key)
    return {"kty": members.pop("kty"), "use": "sig", "alg": alg, "kid": kid, **members}


def _b64url_decode(value: object) -> bytes | None:
    """Strict base64url, no padding, one encoding per value; None if malformed."""
    if not isinstance(value, str) or not value or len(value) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        return None
    return data if b64url(data) == value else None


def _b64url_uint_decode(value: object) -> int | None:
    """The inverse of ``b64url_uint``: strict base64url, no padding; None if malformed."""
    data = _b64url_decode(value)
    return None if data is None else int.from_bytes(data, "big")


def verification_keys(
    jwks: object, algorithms: tuple[str, ...] = SIGNING_ALGORITHMS
) -> dict[str, tuple[str, PublicKey]]:
    """Read a JWK Set into ``{kid: (alg, public key)}`` for ``verification.verify_access_token``.

    Only keys a verifier can trust to mean one thing are kept; every other entry is
    skipped (RFC 7517 §5: "Implementations SHOULD ignore JWKs within a JWK Set that use
    "kty" (key type) values that are not understood by them"):

    * ``use`` absent or ``sig``, ``key_ops`` absent or containing ``verify``;
    * the algorithm is the JWK's ``alg`` and must be in ``algorithms``; a JWK without
      ``alg`` is kept only when ``algorithms`` names exactly one algorithm (the verifier's
      configuration then binds it), never taken from a token header;
    * the key is of the algorithm's own type: ``kty`` RSA with ``n`` and ``e`` canonical
      base64url and a modulus of at least 2048 bits for RS* and PS*; ``kty`` EC with the
      algorithm's ``crv`` (P-256 for ES256, P-384 for ES384) and ``x``, ``y`` of the
      curve's full coordinate size, a point on the curve; ``kty`` OKP with ``crv``
      Ed25519 and a 32-octet ``x`` for EdDSA;
    * a string ``kid``; a ``kid`` given to two keys names neither (RFC 7517 §4.5);
    * private members (``d``, ``p``, ...) are ignored: only the public ones are read.

    Raises ``ValueError`` when ``jwks`` is not a JWK Set at all.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK Set")
    found: dict[str, tuple[str, PublicKey]] = {}
    duplicated: set[str] = set()
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str):
            continue
        if kid in found or kid in duplicated:
            found.pop(kid, None)
            duplicated.add(kid)
            continue
        key = _verification_key(jwk, algorithms)
        if key is not None:
            found[kid] = key
    return found


def _verification_key(
    jwk: dict[str, Any], algorithms: tuple[str, ...]
) -> tuple[str, PublicKey] | None:
    if jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    alg = jwk.get("alg")
    if alg is None and len(algorithms) == 1:
        alg = algorithms[0]
    if not isinstance(alg, str) or alg not in algorithms or alg not in ALGORITHMS:
        return None
    algorithm = ALGORITHMS[alg]
    if jwk.get("kty") != algorithm.kty:
        return None
    try:
        public_key = _public_key(jwk, algorithm.crv)
    except ValueError:
        return None
    if public_key is None or not algorithm.fits(public_key):
        return None
    return alg, public_key


def _public_key(jwk: dict[str, Any], crv: str | None) -> PublicKey | None:
    """The public key of a JWK whose ``kty`` is known; None (or ``ValueError``) when its
    members are malformed or of another curve than ``crv``."""
    kty = jwk["kty"]
    if kty == "RSA":
        n = _b64url_uint_decode(jwk.get("n"))
        e = _b64url_uint_decode(jwk.get("e"))
        if n is None or e is None or n.bit_length() < MIN_RSA_BITS:
            return None
        return rsa.RSAPublicNumbers(e, n).public_key()
    if jwk.get("crv") != crv or crv is None:
        return None
    if kty == "EC":
        curve = _CURVES[crv]
        size = (curve.key_size + 7) // 8
        x, y = _b64url_decode(jwk.get("x")), _b64url_decode(jwk.get("y"))
        if x is None or y is None or len(x) != size or len(y) != size:
            return None
        # Refuses a point that is not on the curve (ValueError).
        point = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        )
        return point.public_key()
    raw = _b64url_decode(jwk.get("x"))
    if raw is None or len(raw) != 32:
        return None
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)
