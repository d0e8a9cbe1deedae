"""Signing keys of every algorithm on disk and as JWKs (issue 15, "More algorithms").

``keys generate/rotate --alg``: a PKCS#8 PEM of the algorithm's key type, mode 0600, the
manifest naming the algorithm; ``--bits`` refused for EC and Ed25519 keys; a manifest
entry whose file holds a key of another type stops loading with one line; PEMs dropped
in are adopted with the algorithm of their type. Thumbprints per RFC 7638 (the RFC's own
example for RSA, jwcrypto's for EC and OKP), the JWK members of each type, and what the
JWK reader keeps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto import jwk as jwcrypto_jwk

from tests.support.cli import CLI, cli_env
from tests.support.tokens import b64url_decode, b64url_encode
from tokendealer.keys.keyset import (
    MANIFEST,
    KeyFileError,
    atomic_write,
    ensure_key,
    generate_key,
    load_keyset,
    rotate_key,
)
from tokendealer.library.jwk import public_jwk, thumbprint, thumbprint_kid, verification_keys
from tokendealer.library.verification import InvalidSignature, verify_access_token

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
#: The key each algorithm's keys are: (cryptography type, curve name or None, bits).
KEY_TYPES: dict[str, tuple[type, str | None, int]] = {
    **{alg: (rsa.RSAPrivateKey, None, 2048) for alg in ALGORITHMS[:6]},
    "ES256": (ec.EllipticCurvePrivateKey, "secp256r1", 256),
    "ES384": (ec.EllipticCurvePrivateKey, "secp384r1", 384),
    "EdDSA": (ed25519.Ed25519PrivateKey, None, 256),
}

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _jwcrypto(public_key: Any) -> jwcrypto_jwk.JWK:
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return jwcrypto_jwk.JWK.from_pem(pem)


@pytest.fixture(name="rsa_key", scope="module")
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- new keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_generate_writes_a_key_of_the_algorithms_type(tmp_path: Path, alg: str) -> None:
    """A PKCS#8 PEM, mode 0600, of the algorithm's key type, its kid the RFC 7638
    thumbprint; the manifest names the algorithm, and the loaded key signs with it."""
    keys_dir = tmp_path / "keys"
    kid = generate_key(keys_dir, alg=alg)
    path = keys_dir / f"{kid}.pem"
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert path.stat().st_mode & 0o777 == 0o600
    kind, curve, bits = KEY_TYPES[alg]
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, kind)
    if curve is not None:
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == curve
    assert kid == _jwcrypto(key.public_key()).thumbprint()
    (entry,) = json.loads((keys_dir / MANIFEST).read_text())["keys"]
    assert (entry["kid"], entry["alg"]) == (kid, alg)
    (loaded,) = load_keyset(keys_dir).keys
    assert (loaded.kid, loaded.alg, loaded.bits) == (kid, alg, bits)


def test_rotate_takes_an_algorithm_and_keeps_each_keys_own(tmp_path: Path) -> None:
    """Keys of several algorithms side by side: each keeps the algorithm it was made for."""
    keys_dir = tmp_path / "keys"
    first = generate_key(keys_dir)
    second = rotate_key(keys_dir, activate_after=0, alg="ES384").kid
    third = rotate_key(keys_dir, activate_after=3600, alg="EdDSA").kid
    keyset = load_keyset(keys_dir)
    assert [(k.kid, k.alg) for k in keyset.keys] == [
        (first, "RS512"),
        (second, "ES384"),
        (third, "EdDSA"),
    ]
    assert keyset.verification_keys[second][0] == "ES384"
    active = keyset.active()
    assert active is not None and active.kid == second


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA"])
def test_bits_is_refused_for_keys_that_are_not_rsa(tmp_path: Path, alg: str) -> None:
    """--bits is an RSA key's size: with an EC or Ed25519 algorithm it is one line of
    refusal, and no key is written."""
    keys_dir = tmp_path / "keys"
    with pytest.raises(KeyFileError) as caught:
        generate_key(keys_dir, alg=alg, bits=2048)
    assert "\n" not in str(caught.value) and "bits is for RSA keys only" in str(caught.value)
    assert not list(keys_dir.glob("*.pem"))

    cli = CLI(cli_env(tmp_path)).create_database()
    for command in (("generate",), ("rotate", "--activate-after", "0")):
        result = cli.run("keys", *command, "--alg", alg, "--bits", "2048")
        result.assert_one_line_error("Invalid value for '--bits': bits is for RSA keys only")
        assert alg in result.stderr
    assert not list(keys_dir.glob("*.pem"))
    # Without --bits the same command makes the key; RSA takes --bits as before.
    kid = cli.ok("keys", "generate", "--alg", alg).stdout.strip()
    rsa_kid = cli.ok("keys", "rotate", "--activate-after", "0", "--alg", "PS384", "--bits", "3072")
    rows = {row["kid"]: row for row in cli.ok("keys", "list", "--json").json()}
    assert (rows[kid]["alg"], rows[kid]["bits"]) == (alg, KEY_TYPES[alg][2])
    assert (rows[rsa_kid.stdout.strip()]["alg"], rows[rsa_kid.stdout.strip()]["bits"]) == (
        "PS384",
        3072,
    )


def test_an_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    cli = CLI(cli_env(tmp_path)).create_database()
    result = cli.run("keys", "generate", "--alg", "ES512")
    assert result.code != 0 and "ES512" in result.stderr
    with pytest.raises(KeyFileError, match="unsupported algorithm 'HS256'"):
        generate_key(tmp_path / "keys", alg="HS256")


# -- loading ---------------------------------------------------------------------------------


def _write_manifest_entry(keys_dir: Path, key: Any, alg: str) -> Path:
    """A keys directory whose manifest names ``key`` (under its own kid) for ``alg``."""
    keys_dir.mkdir(mode=0o700, exist_ok=True)
    kid = thumbprint(key.public_key())
    path = keys_dir / f"{kid}.pem"
    atomic_write(path, _pem(key))
    now = time.time()
    entry = {"kid": kid, "alg": alg, "created_at": now, "activate_at": now}
    atomic_write(keys_dir / MANIFEST, json.dumps({"keys": [entry]}).encode())
    return path


@pytest.mark.parametrize(
    ("alg", "kind", "needed"),
    [
        ("ES256", "rsa", "an EC P-256 key"),
        ("EdDSA", "rsa", "an Ed25519 key"),
        ("RS512", "p256", "an RSA key of 2048 bits or more"),
        ("PS256", "ed25519", "an RSA key of 2048 bits or more"),
        ("ES384", "p256", "an EC P-384 key"),
        ("ES256", "p384", "an EC P-256 key"),
        ("EdDSA", "p256", "an Ed25519 key"),
        ("ES256", "ed25519", "an EC P-256 key"),
    ],
)
def test_a_key_of_another_type_than_its_algorithm_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, alg: str, kind: str, needed: str
) -> None:
    """An ES256 entry whose file holds an RSA key (or any such mismatch) is a
    KeyFileError of one line naming the file, what it holds and what the alg needs."""
    keys = {
        "rsa": rsa_key,
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    path = _write_manifest_entry(tmp_path / "keys", keys[kind], alg)
    with pytest.raises(KeyFileError) as caught:
        load_keyset(tmp_path / "keys")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert f"manifest.json names it for {alg}, which signs with {needed}" in message


@pytest.mark.parametrize(
    ("make", "alg"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
)
def test_a_dropped_in_key_is_adopted_for_the_algorithm_of_its_type(
    tmp_path: Path, make: Any, alg: str
) -> None:
    """A PEM dropped into a directory without a manifest: EC keys by their curve, Ed25519
    keys as EdDSA (RSA keys as RS512, as before)."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    key = make()
    (keys_dir / "dropped.pem").write_bytes(_pem(key))
    os.chmod(keys_dir / "dropped.pem", 0o600)
    ensure_key(keys_dir)
    (loaded,) = load_keyset(keys_dir).keys
    assert (loaded.kid, loaded.alg) == (thumbprint(key.public_key()), alg)


# -- thumbprints -----------------------------------------------------------------------------

#: RFC 7638 §3.1: the example RSA key and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
        "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt"
        "-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDK"
        "gw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rsa_thumbprint_is_rfc7638s_example() -> None:
    """The RFC's worked example, from the JWK and from the key: only e, kty, n hashed."""
    assert thumbprint_kid(RFC7638_JWK) == RFC7638_THUMBPRINT
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(b64url_decode(RFC7638_JWK["e"]), "big"),
        int.from_bytes(b64url_decode(RFC7638_JWK["n"]), "big"),
    )
    assert thumbprint(numbers.public_key()) == RFC7638_THUMBPRINT


def _with_short_coordinate(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    """A key whose x coordinate has a leading zero octet (one key in 256): the JWK must
    still carry the curve's full coordinate size (RFC 7518 §6.2.1.2)."""
    size = (curve.key_size + 7) // 8
    while True:
        key = ec.generate_private_key(curve)
        if key.public_key().public_numbers().x < 1 << (8 * (size - 1)):
            return key


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: _with_short_coordinate(ec.SECP256R1()),
        lambda: _with_short_coordinate(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate,
    ],
    ids=["p256", "p384", "p256-leading-zero", "p384-leading-zero", "ed25519"],
)
def test_ec_and_okp_jwks_and_thumbprints_match_jwcrypto(make: Any) -> None:
    """The public JWK has the members of RFC 7518 §6.2.1 (EC) or RFC 8037 §2 (OKP) with
    jwcrypto's values, and the thumbprint is jwcrypto's RFC 7638 thumbprint."""
    public = make().public_key()
    theirs = json.loads(_jwcrypto(public).export_public())
    kid = thumbprint(public)
    assert kid == _jwcrypto(public).thumbprint()
    alg = {"P-256": "ES256", "P-384": "ES384", "Ed25519": "EdDSA"}[theirs["crv"]]
    ours = public_jwk(public, alg, kid)
    members = {"kty", "crv", "x", "y"} if theirs["kty"] == "EC" else {"kty", "crv", "x"}
    assert set(ours) == members | {"use", "alg", "kid"}
    assert {name: ours[name] for name in members} == {name: theirs[name] for name in members}
    size = {"P-256": 32, "P-384": 48, "Ed25519": 32}[theirs["crv"]]
    assert len(b64url_decode(ours["x"])) == size
    assert thumbprint_kid(ours) == kid


# -- reading JWKs ----------------------------------------------------------------------------


def _jwk(key: Any, alg: str, /, **members: Any) -> dict[str, Any]:
    """The key's public JWK for ``alg``, ``members`` changed (None removes one)."""
    jwk = public_jwk(key.public_key(), alg, thumbprint(key.public_key()))
    jwk.update(members)
    return {k: v for k, v in jwk.items() if v is not None}


P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
ED25519 = ed25519.Ed25519PrivateKey.generate()
_P256_X = b64url_decode(_jwk(P256, "ES256")["x"])


@pytest.mark.parametrize(
    ("jwk", "kept"),
    [
        (_jwk(P256, "ES256"), True),
        (_jwk(P384, "ES384"), True),
        (_jwk(ED25519, "EdDSA"), True),
        (_jwk(P256, "ES384"), False),  # the algorithm of the other curve
        (_jwk(P384, "ES256"), False),
        (_jwk(P256, "ES256", crv="P-384"), False),
        (_jwk(P256, "EdDSA"), False),  # the algorithm of another type
        (_jwk(ED25519, "ES256"), False),
        (_jwk(ED25519, "RS256"), False),
        (_jwk(P256, "ES256", kty="OKP"), False),
        (_jwk(ED25519, "EdDSA", crv="Ed448"), False),
        (_jwk(ED25519, "EdDSA", crv="X25519"), False),
        (_jwk(P256, "ES256", y=None), False),
        (_jwk(P256, "ES256", x=b64url_encode(_P256_X[1:])), False),  # not the full size
        (_jwk(P256, "ES256", x=b64url_encode(b"\x00" + _P256_X)), False),
        (_jwk(P256, "ES256", x=b64url_encode(_P256_X[:-1] + bytes([_P256_X[-1] ^ 1]))), False),
        (_jwk(ED25519, "EdDSA", x=b64url_encode(b"\x01" * 31)), False),
        (_jwk(P256, "ES256", x=_jwk(P256, "ES256")["x"] + "="), False),
        (_jwk(P256, "ES256", use="enc"), False),
        (_jwk(ED25519, "EdDSA", key_ops=["sign"]), False),
        (_jwk(P256, "ES256", d="c2VjcmV0"), True),  # a private member is ignored
        (_jwk(P256, "ES256", alg=None), False),  # no alg: only with one algorithm configured
        (_jwk(P256, "ES256", alg="ES512"), False),
    ],
)
def test_jwks_parsing_keeps_ec_and_okp_keys_of_their_algorithm_only(
    jwk: dict[str, Any], kept: bool
) -> None:
    """EC keys on the curve of their alg, with both coordinates of the full size and on
    the curve; OKP keys on Ed25519 with a 32-octet x; for their own algorithm only."""
    assert bool(verification_keys({"keys": [jwk]})) is kept


def test_a_jwk_without_alg_is_bound_by_the_one_configured_algorithm() -> None:
    """Without alg, the verifier's one algorithm binds the key, if it is of that type."""
    jwk = _jwk(P256, "ES256", alg=None)
    assert verification_keys({"keys": [jwk]}, ("ES256",))[jwk["kid"]][0] == "ES256"
    assert not verification_keys({"keys": [jwk]}, ("ES384",))
    assert not verification_keys({"keys": [jwk]}, ("RS256",))


def test_a_key_bound_to_another_types_algorithm_verifies_nothing(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """``verify_access_token`` given a mapping that binds a key to an algorithm of another
    type (the caller's mistake) refuses, rather than fail inside the signature check."""
    header = b64url_encode(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "k"}).encode())
    token = f"{header}.e30.{b64url_encode(bytes(64))}"
    for key in (rsa_key.public_key(), ED25519.public_key(), P384.public_key()):
        with pytest.raises(InvalidSignature, match="does not match its key"):
            verify_access_token(token, {"k": ("ES256", key)}, issuer="https://x")
