"""RSA public keys as JWKs (RFC 7517, RFC 7518 §6.3) and their thumbprints (RFC 7638).

Plain functions over ``cryptography`` key objects, shared by the server (to publish its
JWKS) and by ``tokendealer.library.verify`` (to read someone else's).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

#: The RSA signature algorithms a key may be published for (RFC 7518 §3.3).
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_uint(value: int) -> str:
    """RFC 7518 §6.3.1.1: "represented as the base64url encoding of the value's unsigned
    big-endian representation as an octet sequence. The octet sequence MUST utilize the
    minimum number of octets needed to represent the value."
    """
    return b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members in lexicographic order, no spaces."""
    numbers = public_key.public_numbers()
    canonical = json.dumps(
        {"e": b64url_uint(numbers.e), "kty": "RSA", "n": b64url_uint(numbers.n)},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(public_key: rsa.RSAPublicKey, alg: str, kid: str) -> dict[str, Any]:
    """The public members only: never ``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``."""
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": alg,
        "kid": kid,
        "n": b64url_uint(numbers.n),
        "e": b64url_uint(numbers.e),
    }


#: RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
MIN_RSA_BITS = 2048


def _b64url_uint_decode(value: object) -> int | None:
    """The inverse of ``b64url_uint``: strict base64url, no padding; None if malformed."""
    if not isinstance(value, str) or not value or len(value) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        return None
    if b64url(data) != value:
        return None
    return int.from_bytes(data, "big")


def verification_keys(
    jwks: object, algorithms: tuple[str, ...] = RSA_ALGORITHMS
) -> dict[str, tuple[str, rsa.RSAPublicKey]]:
    """Read a JWK Set into ``{kid: (alg, public key)}`` for ``verification.verify_access_token``.

    Only keys a verifier can trust to mean one thing are kept; every other entry is
    skipped (RFC 7517 §5: "Implementations SHOULD ignore JWKs within a JWK Set that use
    "kty" (key type) values that are not understood by them"):

    * ``kty`` RSA, ``use`` absent or ``sig``, ``key_ops`` absent or containing ``verify``;
    * the algorithm is the JWK's ``alg`` and must be in ``algorithms``; a JWK without
      ``alg`` is kept only when ``algorithms`` names exactly one algorithm (the verifier's
      configuration then binds it), never taken from a token header;
    * a string ``kid``; a ``kid`` given to two keys names neither (RFC 7517 §4.5);
    * ``n`` and ``e`` canonical base64url, modulus of at least 2048 bits; private members
      (``d``, ``p``, ...) are ignored, only ``n`` and ``e`` are read.

    Raises ``ValueError`` when ``jwks`` is not a JWK Set at all.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK Set")
    found: dict[str, tuple[str, rsa.RSAPublicKey]] = {}
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
        key = _rsa_verification_key(jwk, algorithms)
        if key is not None:
            found[kid] = key
    return found


def _rsa_verification_key(
    jwk: dict[str, Any], algorithms: tuple[str, ...]
) -> tuple[str, rsa.RSAPublicKey] | None:
    if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    alg = jwk.get("alg")
    if alg is None and len(algorithms) == 1:
        alg = algorithms[0]
    if alg not in algorithms or alg not in RSA_ALGORITHMS:
        return None
    n = _b64url_uint_decode(jwk.get("n"))
    e = _b64url_uint_decode(jwk.get("e"))
    if n is None or e is None or n.bit_length() < MIN_RSA_BITS:
        return None
    try:
        public_key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        return None
    return str(alg), public_key
