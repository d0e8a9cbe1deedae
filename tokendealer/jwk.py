"""RSA public keys as JWKs (RFC 7517, RFC 7518 §6.3) and their thumbprints (RFC 7638).

Plain functions over ``cryptography`` key objects, shared by the server (to publish its
JWKS) and by ``tokendealer.verify`` (to read someone else's).
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
