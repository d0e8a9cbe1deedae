"""The JWS algorithms an access token may be signed with, and the one key type each needs.

RFC 7518 §3.3 (RS256, RS384, RS512: RSASSA-PKCS1-v1_5), §3.5 (PS256, PS384, PS512:
RSASSA-PSS), §3.4 (ES256 on P-256, ES384 on P-384) and RFC 8037 §3.1 (EdDSA, here with
Ed25519 only). Never ``none`` and never an HMAC: a verifier holds public keys only.

Each ``Algorithm`` says which key it needs (``fits``) and how long its signature is. It
signs through PyJWT's implementations, which produce the JWS signature encodings (for
ECDSA the fixed-size ``R || S`` of RFC 7518 §3.4, not DER), and verifies by calling
``cryptography`` directly with padding and hash objects made once (verification is on
every resource server's hot path; PyJWT builds them anew on each call).
Shared by the dealer (its keys, ``tokendealer.keys``), the verification core
(``verification``) and the JWK reader (``jwk``); it imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import Algorithm as _PyJWTAlgorithm
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

__all__ = [
    "ALGORITHMS",
    "EC_ALGORITHMS",
    "MIN_RSA_BITS",
    "RSA_ALGORITHMS",
    "SIGNING_ALGORITHMS",
    "Algorithm",
    "PrivateKey",
    "PublicKey",
    "algorithm_for",
    "describe_key",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

#: RFC 7518 §3.3 and §3.5: "A key of size 2048 bits or larger MUST be used".
MIN_RSA_BITS = 2048

#: The JWK ``crv`` of each curve (RFC 7518 §6.2.1.1), by ``cryptography``'s curve name.
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384"}


@dataclass(frozen=True, eq=False)
class Algorithm:
    """One JWS algorithm: its name, the JWK key type (``kty``) and curve (``crv``) of the
    key it signs with, and PyJWT's implementation of it."""

    name: str
    kty: str
    crv: str | None
    _impl: _PyJWTAlgorithm
    #: What ``verifier`` hands to ``cryptography``, made once (stateless descriptions):
    #: the padding and hash of an RSA algorithm, the signature algorithm of an ECDSA one.
    _rsa: tuple[padding.AsymmetricPadding, hashes.HashAlgorithm] | None = None
    _ecdsa: ec.ECDSA | None = None

    def fits(self, key: object) -> bool:
        """True when ``key`` (public or private) is of the one type this algorithm uses:
        RSA of ``MIN_RSA_BITS`` or more, EC on the algorithm's own curve, or Ed25519."""
        if self.kty == "RSA":
            return (
                isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey)
                and key.key_size >= MIN_RSA_BITS
            )
        if self.kty == "EC":
            return (
                isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey)
                and _CURVE_NAMES.get(key.curve.name) == self.crv
            )
        return isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey)

    def signature_length(self, key: PublicKey | PrivateKey) -> int:
        """The octets of a JWS signature by ``key``: the modulus size for RSA, both
        coordinates for ECDSA (RFC 7518 §3.4), 64 for Ed25519 (RFC 8032 §5.1.6)."""
        if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
            return (key.key_size + 7) // 8
        if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
            return 2 * ((key.curve.key_size + 7) // 8)
        return 64

    def sign(self, message: bytes, key: PrivateKey) -> bytes:
        """The JWS signature of ``message`` (``key`` must fit: see ``fits``)."""
        signature: bytes = self._impl.sign(message, key)
        return signature

    def verify(self, message: bytes, key: PublicKey, signature: bytes) -> bool:
        """True when ``signature`` is this algorithm's JWS signature of ``message`` by
        ``key`` (which must fit: see ``fits``); False for any other signature."""
        try:
            self.verifier(key)(signature, message)
        except InvalidSignature:
            return False
        return True

    def verifier(self, key: PublicKey) -> Callable[[bytes, bytes], None]:
        """``check(signature, message)`` for ``key`` (which must fit: see ``fits``):
        raises ``cryptography.exceptions.InvalidSignature`` unless ``signature`` is this
        algorithm's JWS signature of ``message``. Made once per key by a verifier that
        keeps it, each check is then one call into ``cryptography`` (for RSA and EdDSA).
        A private key (``fits`` accepts one) checks with its public half."""
        public_key = getattr(key, "public_key", None)
        if public_key is not None:
            key = public_key()
        if self._rsa is not None:  # PKCS#1 v1.5 or PSS
            verify, (scheme, digest) = cast(rsa.RSAPublicKey, key).verify, self._rsa
            return lambda signature, message: verify(signature, message, scheme, digest)
        if self._ecdsa is None:
            return cast(ed25519.Ed25519PublicKey, key).verify
        curve_key, ecdsa = cast(ec.EllipticCurvePublicKey, key), self._ecdsa
        size = (curve_key.curve.key_size + 7) // 8

        def check(signature: bytes, message: bytes) -> None:
            # RFC 7518 §3.4: R || S, each the curve's size, which cryptography reads as DER.
            if len(signature) != 2 * size:
                raise InvalidSignature()
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            curve_key.verify(encode_dss_signature(r, s), message, ecdsa)

        return check


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def _rsa(name: str, impl: type[RSAAlgorithm]) -> Algorithm:
    digest = _HASHES[name[2:]]()
    scheme: padding.AsymmetricPadding
    if impl is RSAPSSAlgorithm:
        # RFC 7518 §3.5: MGF1 with the same hash, a salt as long as the hash output.
        scheme = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    else:
        scheme = padding.PKCS1v15()
    return Algorithm(name, "RSA", None, impl(type(digest)), _rsa=(scheme, digest))


#: Every algorithm a dealer key may sign with, by name; the order is the CLI's.
ALGORITHMS: dict[str, Algorithm] = {
    **{name: _rsa(name, RSAAlgorithm) for name in ("RS256", "RS384", "RS512")},
    **{name: _rsa(name, RSAPSSAlgorithm) for name in ("PS256", "PS384", "PS512")},
    **{
        name: Algorithm(name, "EC", crv, ECAlgorithm(digest), _ecdsa=ec.ECDSA(digest()))
        for name, crv, digest in (
            ("ES256", "P-256", hashes.SHA256),
            ("ES384", "P-384", hashes.SHA384),
        )
    },
    "EdDSA": Algorithm("EdDSA", "OKP", "Ed25519", OKPAlgorithm()),
}
SIGNING_ALGORITHMS = tuple(ALGORITHMS)
#: The algorithms of RSA keys (PKCS#1 v1.5 and PSS), and those of EC keys.
RSA_ALGORITHMS = tuple(name for name, alg in ALGORITHMS.items() if alg.kty == "RSA")
EC_ALGORITHMS = tuple(name for name, alg in ALGORITHMS.items() if alg.kty == "EC")


def algorithm_for(key: PublicKey | PrivateKey, rsa_default: str = "RS512") -> str | None:
    """The algorithm a key of this type signs with (``rsa_default`` for RSA, which has
    six); ``None`` for a key no algorithm here fits (a small RSA key, another curve)."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return rsa_default if ALGORITHMS[rsa_default].fits(key) else None
    for name, algorithm in ALGORITHMS.items():
        if algorithm.kty != "RSA" and algorithm.fits(key):
            return name
    return None


def describe_key(key: object) -> str:
    """The key's type in words, for messages: ``an RSA key of 2048 bits``, ``an EC
    P-256 key``, ``an EC secp521r1 key``, ``an Ed25519 key``, ``a DSA key``..."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"an RSA key of {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"an EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)} key"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    name = type(key).__name__.lstrip("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name} key"


def key_needed(alg: str) -> str:
    """What ``alg`` signs with, in words: ``an RSA key of 2048 bits or more``..."""
    algorithm = ALGORITHMS[alg]
    if algorithm.kty == "RSA":
        return f"an RSA key of {MIN_RSA_BITS} bits or more"
    if algorithm.kty == "EC":
        return f"an EC {algorithm.crv} key"
    return f"an {algorithm.crv} key"
