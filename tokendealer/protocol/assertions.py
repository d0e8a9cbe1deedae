"""JWT client assertions (RFC 7523 §2.2 and §3, RFC 7521 §4.2): what a ``private_key_jwt``
client presents instead of a secret, and the checks it must pass. Free of the framework,
the store and the network: the keys are given, the used ``jti`` values are the caller's.

A rejected assertion raises ``AssertionRejected`` with the reason, for the log only: the
client is answered the one ``invalid_client`` of every authentication failure.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK, PyJWKSet
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWKError, PyJWKSetError, PyJWTError

# The client library signs these assertions; what it sends and what this checks share
# their names and bounds (RFC 7523 §2.2: the client_assertion_type of a JWT).
from tokendealer.library.assertions import ASSERTION_TYPE
from tokendealer.library.jwk import MIN_RSA_BITS, thumbprint_kid

__all__ = ["ALGORITHMS", "ASSERTION_TYPE", "Accepted", "AssertionRejected"]


#: The signature algorithms accepted, each only with a public key of its type (never
#: ``none``, never an HMAC, whose "key" would be the client's public key).
_RSA = (rsa.RSAPublicKey,)
ALGORITHMS: dict[str, tuple[type, ...]] = {
    "RS256": _RSA,
    "RS384": _RSA,
    "RS512": _RSA,
    "PS256": _RSA,
    "PS384": _RSA,
    "PS512": _RSA,
    "ES256": (ec.EllipticCurvePublicKey,),
    "ES384": (ec.EllipticCurvePublicKey,),
    "EdDSA": (ed25519.Ed25519PublicKey,),
    # RFC 9864's fully-specified name for EdDSA with Ed25519, which openid-client and
    # oauth4webapi sign with; PyJWT knows only "EdDSA" (see _signature_checked).
    "Ed25519": (ed25519.Ed25519PublicKey,),
}
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}

#: Bounds on what is read before any signature is checked.
MAX_ASSERTION_LENGTH = 8192
MAX_JTI_LENGTH = 256
#: Keys tried for an assertion without a ``kid`` (each a signature check).
MAX_CANDIDATES = 4


class AssertionRejected(Exception):
    """The assertion does not authenticate its client; the message says why (logs only)."""


@dataclass(frozen=True)
class Accepted:
    """An assertion that passed: its ``jti`` must now be used once, until ``expires_at``."""

    jti: str
    expires_at: float


def peek_subject(assertion: str) -> str | None:
    """The ``sub`` of an assertion, unverified: which client it claims to be, to look its
    keys up. ``None`` when it has no string ``sub`` (or is no JWT)."""
    if len(assertion) > MAX_ASSERTION_LENGTH:
        return None
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except (PyJWTError, ValueError):
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) else None


def key_set(document: Any) -> list[PyJWK]:
    """The usable public verification keys of a JWK Set (a JWK alone is a set of one);
    ``ValueError`` when there is none."""
    if isinstance(document, dict) and "keys" not in document and "kty" in document:
        document = {"keys": [document]}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    members = [jwk for jwk in document["keys"] if _for_signatures(jwk)]
    kids = [jwk.get("kid") for jwk in members]
    # A kid named twice could mean either key: neither is used (library/jwk does so too).
    members = [jwk for jwk in members if jwk.get("kid") is None or kids.count(jwk.get("kid")) == 1]
    # PyJWK knows Ed25519 keys by the polymorphic "EdDSA" only (RFC 9864 §2.2 names both).
    members = [{**jwk, "alg": "EdDSA"} if jwk.get("alg") == "Ed25519" else jwk for jwk in members]
    try:
        keys = PyJWKSet(members).keys if members else []
    except (PyJWKSetError, PyJWKError, PyJWTError) as exc:
        raise ValueError(f"no usable key: {exc}") from None
    usable = [key for key in keys if _public(key.key)]
    if not usable:
        raise ValueError(
            f"no public signing key: RSA of {MIN_RSA_BITS} bits or more, EC P-256 or P-384, "
            "or Ed25519"
        )
    return usable


def _for_signatures(jwk: object) -> bool:
    """A JWK that may verify signatures (RFC 7517 §4.2, §4.3): not one for encryption."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return False
    operations = jwk.get("key_ops")
    return operations is None or (isinstance(operations, list) and "verify" in operations)


#: The longest key set a client may register (its JSON text).
MAX_KEY_SET_LENGTH = 16 * 1024
#: JWK members of private or secret material (RFC 7518 §6.2.2, §6.3.2, §6.4, RFC 8037).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def registered_key_set(text: str) -> str:
    """The JWK Set a client registers, as stored: from a JWK, a JWK Set (JSON) or a PEM
    public key, only the public signing keys this server can use, each with its kid.
    ``ValueError`` says why not (private material is refused: it is the client's own)."""
    text = text.strip()
    if len(text) > MAX_KEY_SET_LENGTH:
        raise ValueError(f"a key set is at most {MAX_KEY_SET_LENGTH} characters")
    if text.startswith("-----BEGIN"):
        return _pem_key_set(text)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not a JWK, a JWK Set or a PEM public key") from None
    members = document.get("keys", [document]) if isinstance(document, dict) else None
    if not isinstance(members, list):
        raise ValueError("not a JWK or a JWK Set")
    if any(isinstance(m, dict) and _PRIVATE_MEMBERS & m.keys() for m in members):
        raise ValueError("the key set holds private key material: give the public key")
    kept = [member for member in members if _usable(member)]
    kids = [member.get("kid") for member in kept if member.get("kid") is not None]
    twice = sorted({kid for kid in kids if kids.count(kid) > 1})
    if twice:
        raise ValueError(f"kid {twice[0]!r} names two keys")
    key_set({"keys": kept})  # at least one: ValueError saying what a usable key is
    return json.dumps({"keys": kept}, sort_keys=True, separators=(",", ":"))


def _usable(member: object) -> bool:
    try:
        key_set({"keys": [member]})
    except ValueError:
        return False
    return True


def _pem_key_set(text: str) -> str:
    if "PRIVATE KEY" in text.split("\n", 1)[0]:
        raise ValueError("a private key: give the public key")
    try:
        public = load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        raise ValueError("not an RSA, EC or Ed25519 public key")
    jwk["kid"] = thumbprint_kid(jwk)
    return registered_key_set(json.dumps(jwk))


def parse_key_set(text: str) -> list[PyJWK]:
    try:
        return key_set(json.loads(text))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not a JWK Set: {exc}") from None


def _public(key: object) -> bool:
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size >= MIN_RSA_BITS  # RFC 7518 §3.3
    return isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey))


def header(assertion: str) -> dict[str, Any]:
    """The assertion's JOSE header, its ``alg`` one of ``ALGORITHMS``."""
    if len(assertion) > MAX_ASSERTION_LENGTH:
        raise AssertionRejected("the assertion is too long")
    try:
        found = jwt.get_unverified_header(assertion)
    except (PyJWTError, ValueError):
        raise AssertionRejected("not a JWT") from None
    if found.get("alg") not in ALGORITHMS:
        raise AssertionRejected(f"algorithm {found.get('alg')!r} is not accepted")
    return found


def candidates(keys: Iterable[PyJWK], alg: str, kid: str | None) -> list[PyJWK]:
    """The keys that may have signed with ``alg``: those of its type (and curve), the one
    named ``kid`` when the header names one."""
    kinds = ALGORITHMS[alg]
    fitting = [
        key
        for key in keys
        if isinstance(key.key, kinds)
        and (alg not in _CURVES or _curve(key.key) == _CURVES[alg])
        and (kid is None or key.key_id == kid)
    ]
    return fitting[:MAX_CANDIDATES]


def _curve(key: object) -> str | None:
    return key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else None


def verify(
    assertion: str,
    found: dict[str, Any],
    keys: Sequence[PyJWK],
    *,
    client_id: str,
    audiences: Collection[str],
    max_age: float,
    leeway: float,
    now: float,
) -> Accepted:
    """Check ``assertion`` as a client assertion of ``client_id`` signed by one of
    ``keys`` (RFC 7523 §3):

    - ``iss`` and ``sub`` are the client id;
    - ``aud`` is one of ``audiences`` (the issuer identifier, or the URL of the endpoint
      called), or an array of them: nothing else;
    - ``exp`` is required, in the future (with ``leeway``) and at most ``max_age`` after
      ``iat`` (or now, without ``iat``); ``nbf`` and ``iat`` not in the future;
    - ``jti`` is required: the caller uses it once (``Accepted``).

    ``found`` is the assertion's header, as ``header`` read it (the caller looked the
    keys up by its ``kid``).
    """
    alg = str(found["alg"])
    kid = found.get("kid")  # PyJWT refuses a header whose kid is not a string
    usable = candidates(keys, alg, kid)
    if not usable:
        raise AssertionRejected(f"no key of the client fits alg {alg} and kid {kid!r}")
    claims = _verified_claims(assertion, usable, alg, leeway)
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRejected("iss and sub must both be the client id")
    audience = claims.get("aud")
    named = [audience] if isinstance(audience, str) else audience
    if (
        not isinstance(named, list)
        or not named
        or not all(isinstance(value, str) and value in audiences for value in named)
    ):
        raise AssertionRejected("aud must name this server and nothing else")
    expires = float(claims["exp"])  # required, a number in the future: PyJWT checked it
    issued = _seconds(claims.get("iat"))
    start = now if issued is None else issued
    if expires - min(start, now) > max_age + leeway:
        raise AssertionRejected(f"the assertion lives longer than {max_age:g} s")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise AssertionRejected("jti is required")
    return Accepted(jti, expires + leeway)


#: The longest a workload platform's token may live (``exp - iat``) to be accepted.
MAX_FEDERATED_LIFETIME = 3600


def verify_federated(
    assertion: str,
    found: dict[str, Any],
    keys: Sequence[PyJWK],
    *,
    issuer: str,
    audience: str,
    subject: str | None,
    subject_pattern: str | None,
    leeway: float,
) -> None:
    """Check ``assertion`` as a workload platform's token (a Kubernetes service-account
    token, a SPIFFE JWT-SVID, a GitHub Actions OIDC token) signed by one of ``keys``, the
    keys of the trusted issuer:

    - ``iss`` is ``issuer``, exactly;
    - ``aud`` is ``audience`` or an array containing it (platform tokens often name
      several audiences: the others are allowed);
    - ``sub`` is ``subject`` exactly, or matches the glob ``subject_pattern``
      (``fnmatch``, case-sensitive: ``*`` also matches ``:`` and ``/``);
    - ``exp`` is required and in the future (with ``leeway``), ``iat`` is required and at
      most ``MAX_FEDERATED_LIFETIME`` before it; ``nbf`` and ``iat`` not in the future;
    - ``jti`` is not required, and not used once: the platform hands the workload one
      token to present until it renews it (a Kubernetes projected token is read again
      from its file for most of its life). A stolen token is good until it expires, at
      this dealer only (its audience): lifetimes are bounded for that reason.
    """
    alg = str(found["alg"])
    kid = found.get("kid")
    usable = candidates(keys, alg, kid)
    if not usable:
        raise AssertionRejected(f"no key of the trusted issuer fits alg {alg} and kid {kid!r}")
    claims = _verified_claims(assertion, usable, alg, leeway, required=("exp", "iat"))
    if claims.get("iss") != issuer:
        raise AssertionRejected("iss is not the trusted issuer")
    named = claims.get("aud")
    named = [named] if isinstance(named, str) else named
    if not isinstance(named, list) or audience not in named:
        raise AssertionRejected(f"aud does not name {audience}")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not (
        (subject is not None and sub == subject)
        or (subject_pattern is not None and fnmatch.fnmatchcase(sub, subject_pattern))
    ):
        raise AssertionRejected("sub is not the subject the client is bound to")
    issued, expires = _seconds(claims.get("iat")), _seconds(claims.get("exp"))
    if issued is None or expires is None or expires - issued > MAX_FEDERATED_LIFETIME:
        raise AssertionRejected(f"the token lives longer than {MAX_FEDERATED_LIFETIME} s")


def _seconds(value: object) -> float | None:
    """A NumericDate (RFC 7519 §2) as a float; ``None`` for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _verified_claims(
    assertion: str,
    keys: Sequence[PyJWK],
    alg: str,
    leeway: float,
    required: Sequence[str] = ("exp",),
) -> dict[str, Any]:
    """The claims, once one of ``keys`` verifies the signature; ``exp`` (required),
    ``nbf`` and ``iat`` checked by PyJWT with ``leeway``, ``required`` present."""
    failure = "bad signature"
    for key in keys:
        try:
            claims: dict[str, Any] = (
                jwt.decode(
                    assertion,
                    key.key,
                    algorithms=[alg],
                    leeway=leeway,
                    options={"verify_aud": False, "require": list(required)},
                )
                if alg not in _FULLY_SPECIFIED
                else _signature_checked(assertion, key.key, alg, leeway, required)
            )
        except jwt.InvalidSignatureError:
            continue
        except PyJWTError as exc:
            failure = str(exc)
            break
        return claims
    raise AssertionRejected(failure)


#: RFC 9864 algorithm names PyJWT does not know, each on its own JWS decoder that knows it
#: and nothing else.
_FULLY_SPECIFIED: dict[str, jwt.PyJWS] = {"Ed25519": jwt.PyJWS(algorithms=[])}
_FULLY_SPECIFIED["Ed25519"].register_algorithm("Ed25519", OKPAlgorithm())


def _signature_checked(
    assertion: str, key: Any, alg: str, leeway: float, required: Sequence[str]
) -> dict[str, Any]:
    """``jwt.decode`` for an algorithm of ``_FULLY_SPECIFIED``: its decoder checks the
    signature, then PyJWT checks the claims as for any other algorithm."""
    _FULLY_SPECIFIED[alg].decode_complete(assertion, key, algorithms=[alg])
    claims: dict[str, Any] = jwt.decode(
        assertion,
        leeway=leeway,
        options={
            "verify_signature": False,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_aud": False,
            "require": list(required),
        },
    )
    return claims
