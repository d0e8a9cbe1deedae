"""The verification core's fast path (``tokendealer.library.verification``).

What it keeps between calls depends on a header or a key set's entry, never on a token:
a header read once per key (bounded cache), the key's signature check bound to the very
entry of the key set that was checked (a key set mapping the kid to another key is
checked again), and compact JSON read by orjson when it is exactly what orjson writes,
everything else by ``json`` with its own rules. Each test here would fail if the fast path
decided something the strict reading does not.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature as BadSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokendealer.library import verification
from tokendealer.library.algorithms import ALGORITHMS
from tokendealer.library.verification import (
    InvalidClaims,
    InvalidSignature,
    MalformedToken,
    UnknownKey,
    verify_access_token,
)

ISSUER = "https://dealer.test"
KID = "k1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "svc",
        "client_id": "svc",
        "aud": "api",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
        "scope": "read",
    }
    claims.update(changes)
    return claims


def _sign(
    key: Any, payload: bytes, *, alg: str = "RS512", kid: str = KID, header: bytes | None = None
) -> str:
    header = header or json.dumps({"alg": alg, "typ": "at+jwt", "kid": kid}).encode()
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = ALGORITHMS[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{_b64(signature)}"


def _compact(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _verify(token: str | bytes, keys: Any) -> dict[str, Any]:
    return verify_access_token(token, keys, issuer=ISSUER, audience="api")


def test_a_kid_bound_to_another_key_is_checked_against_that_key(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    """The cached header names kid k1; a key set that now maps k1 to another key must
    refuse the first key's token and accept the other's, whatever was verified before."""
    first = {KID: ("RS512", rsa_key.public_key())}
    rotated = {KID: ("RS512", other_rsa_key.public_key())}
    token = _sign(rsa_key, _compact(_claims()))
    assert _verify(token, first)["sub"] == "svc"
    with pytest.raises(InvalidSignature):
        _verify(token, rotated)
    assert _verify(_sign(other_rsa_key, _compact(_claims())), rotated)["sub"] == "svc"
    assert _verify(token, first)["sub"] == "svc"  # and back


def test_a_kid_bound_to_another_algorithm_is_refused_after_a_success(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    token = _sign(rsa_key, _compact(_claims()))
    assert _verify(token, {KID: ("RS512", rsa_key.public_key())})["jti"] == "j1"
    with pytest.raises(InvalidSignature, match="algorithm does not match"):
        _verify(token, {KID: ("RS256", rsa_key.public_key())})
    with pytest.raises(UnknownKey):
        _verify(token, {"k2": ("RS512", rsa_key.public_key())})


def test_every_call_checks_the_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    """Nothing about a token is remembered: the same token with one signature byte
    changed is refused right after the genuine one verified."""
    keys = {KID: ("RS512", rsa_key.public_key())}
    token = _sign(rsa_key, _compact(_claims()))
    assert _verify(token, keys)["sub"] == "svc"
    head, _, signature = token.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 1
    with pytest.raises(InvalidSignature):
        _verify(f"{head}.{_b64(bytes(raw))}", keys)
    assert _verify(token, keys)["sub"] == "svc"


def test_the_header_cache_is_bounded(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verification, "_HEADERS", {})
    keys = {f"k{n}": ("RS512", rsa_key.public_key()) for n in range(20)}
    for n in range(verification.HEADER_CACHE_SIZE + 10):
        kid = f"k{n % 20}"
        header = json.dumps({"alg": "RS512", "typ": "at+jwt", "kid": kid, "n": n}).encode()
        _verify(_sign(rsa_key, _compact(_claims()), kid=kid, header=header), keys)
        assert len(verification._HEADERS) <= verification.HEADER_CACHE_SIZE
    assert len(verification._HEADERS) == 10  # emptied when full, then filled again


def test_bad_characters_are_malformed_before_the_kid_is_looked_up(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """As with the strict reading: a cached header does not let a bad byte elsewhere in
    the token through as UnknownKey or InvalidSignature."""
    keys = {KID: ("RS512", rsa_key.public_key())}
    token = _sign(rsa_key, _compact(_claims()))
    _verify(token, keys)  # the header is cached now
    head, payload, signature = token.split(".")
    for bad in (
        f"{head}.{payload[:-1]}+.{signature}",
        f"{head}.{payload}.{signature[:-2]}/A",
        f"{head}.{payload}=.{signature}",
        f"{head}.{payload}.{signature}.",
        f"{head}..{signature}",
        f"{head}.{payload}.",
        f"{head}.{payload}.{signature}\n",
        f"{head}.{payload}é.{signature}",
    ):
        with pytest.raises(MalformedToken):
            _verify(bad, {})  # no key: UnknownKey if the bytes were not checked first
        with pytest.raises(MalformedToken):
            _verify(bad.encode(), keys)
    with pytest.raises(UnknownKey):
        _verify(token, {})


def test_a_payload_of_an_impossible_length_with_a_bad_signature_is_a_bad_signature(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """Base64 of the payload is read after the signature is checked (as before)."""
    keys = {KID: ("RS512", rsa_key.public_key())}
    head, payload, signature = _sign(rsa_key, _compact(_claims())).split(".")
    odd = payload + "A" * (5 - len(payload) % 4)  # 1 mod 4: no base64 has that length
    assert len(odd) % 4 == 1
    with pytest.raises(InvalidSignature):
        _verify(f"{head}.{odd}.{signature}", keys)
    with pytest.raises(MalformedToken):  # signed: then it is the payload that is wrong
        _verify(f"{head}.{odd}.{_sign_input(rsa_key, f'{head}.{odd}')}", keys)


def _sign_input(key: rsa.RSAPrivateKey, signing_input: str) -> str:
    return _b64(ALGORITHMS["RS512"].sign(signing_input.encode(), key))


@pytest.mark.parametrize(
    "payload",
    [
        # Not what orjson writes, so read by json: each is still valid JSON.
        b'{ "iss": "https://dealer.test", "sub": "svc", "client_id": "svc", "aud": "api",'
        b' "iat": NOW, "exp": EXP, "jti": "j1" }',
        b'{"iss":"https:\\/\\/dealer.test","sub":"svc","client_id":"svc","aud":"api",'
        b'"iat":NOW,"exp":EXP,"jti":"j\\u0031"}',
        b'{"iss":"https://dealer.test","sub":"svc","client_id":"svc","aud":"api",'
        b'"iat":NOW,"exp":EXP,"jti":"j1","big":123456789012345678901234567890}',
    ],
    ids=["whitespace", "escapes", "big-integer"],
)
def test_json_that_orjson_would_write_otherwise_is_read_by_json(
    rsa_key: rsa.RSAPrivateKey, payload: bytes
) -> None:
    now = int(time.time())
    payload = payload.replace(b"NOW", str(now).encode()).replace(b"EXP", str(now + 60).encode())
    claims = _verify(_sign(rsa_key, payload), {KID: ("RS512", rsa_key.public_key())})
    assert claims == json.loads(payload)
    assert claims["jti"] == "j1" and claims["iss"] == ISSUER
    if "big" in claims:
        assert claims["big"] == 123456789012345678901234567890  # an int, not a float


def test_duplicate_claims_are_malformed_even_when_compact(rsa_key: rsa.RSAPrivateKey) -> None:
    keys = {KID: ("RS512", rsa_key.public_key())}
    compact = _compact(_claims())
    duplicated = compact[:-1] + b',"sub":"someone-else"}'
    with pytest.raises(MalformedToken):
        _verify(_sign(rsa_key, duplicated), keys)
    nested = compact[:-1] + b',"extra":{"a":1,"a":2}}'
    with pytest.raises(MalformedToken):
        _verify(_sign(rsa_key, nested), keys)
    header = b'{"alg":"RS512","typ":"at+jwt","kid":"k1","kid":"k1"}'
    with pytest.raises(MalformedToken):
        _verify(_sign(rsa_key, compact, header=header), keys)


def test_nan_expiry_is_invalid_claims_not_malformed(rsa_key: rsa.RSAPrivateKey) -> None:
    """json reads NaN (orjson refuses it): the claim check, not the parser, refuses it."""
    keys = {KID: ("RS512", rsa_key.public_key())}
    payload = _compact(_claims(exp=0))[:-1].replace(b'"exp":0', b'"exp":NaN') + b"}"
    assert b"NaN" in payload
    with pytest.raises(InvalidClaims):
        _verify(_sign(rsa_key, payload), keys)
    with pytest.raises(MalformedToken):
        _verify(_sign(rsa_key, b'{"iss": NaN'), keys)
    with pytest.raises(MalformedToken):
        _verify(_sign(rsa_key, b"[1, 2]"), keys)


@pytest.mark.parametrize("alg", list(ALGORITHMS))
def test_each_algorithm_verifier_accepts_its_signature_only(alg: str) -> None:
    algorithm = ALGORITHMS[alg]
    private: Any
    if algorithm.kty == "RSA":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm.kty == "EC":
        curve = ec.SECP256R1() if algorithm.crv == "P-256" else ec.SECP384R1()
        private = ec.generate_private_key(curve)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key()
    signature = algorithm.sign(b"message", private)
    assert len(signature) == algorithm.signature_length(public)
    check = algorithm.verifier(public)
    check(signature, b"message")  # no exception
    assert algorithm.verify(b"message", public, signature)
    assert not algorithm.verify(b"massage", public, signature)
    with pytest.raises(BadSignature):
        check(signature, b"massage")
    with pytest.raises(BadSignature):
        check(signature[:-1], b"message")
    token = _sign(private, _compact(_claims()), alg=alg)
    assert _verify(token, {KID: (alg, public)})["sub"] == "svc"


@pytest.mark.parametrize("alg", ["RS512", "ES256", "EdDSA"])
def test_a_private_key_in_the_key_set_verifies_with_its_public_half(
    rsa_key: rsa.RSAPrivateKey, alg: str
) -> None:
    """A caller may hand the key set a private key (``Algorithm.fits`` accepts one, as
    PyJWT's verifiers did): its public half checks the signature, for every key type,
    rather than an AttributeError (a 500 at a protected route)."""
    private: Any = {
        "RS512": rsa_key,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }[alg]
    token = _sign(private, _compact(_claims()), alg=alg, kid=f"private-{alg}")
    assert _verify(token, {f"private-{alg}": (alg, private)})["sub"] == "svc"
    forged = _sign(private, _compact(_claims(sub="admin")), alg=alg, kid=f"private-{alg}")
    with pytest.raises(InvalidSignature):
        _verify(
            forged[: forged.rindex(".")] + token[token.rindex(".") :],
            {f"private-{alg}": (alg, private)},
        )
