"""Private signing keys sealed for the database key store: AES-256-GCM under the
key-encryption key (``TOKENDEALER_KEY_ENCRYPTION_KEY``).

A sealed key is ``version byte || 96-bit random nonce || ciphertext and tag`` of the PEM
(PKCS#8). What the row says about the key is the authenticated data: its kid, algorithm,
creation and activation times. A row whose kid, algorithm or times were changed (another
key's ciphertext copied in, an activation time moved) does not open: the tag no longer
matches. So the database holds no
private key in clear. Sealing binds each row, not the set: whoever can write to the
database can still delete rows or put back rows of an earlier copy, which changes which
key is active (README: after removing a compromised key, rekey).
"""

from __future__ import annotations

import json
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The format of what ``seal`` makes (its first byte), for a later change of scheme.
VERSION = 1
NONCE_BYTES = 12


class SealError(Exception):
    """A sealed key does not open: another key-encryption key, or an altered row."""


def associated_data(kid: str, alg: str, created_at: float, activate_at: float) -> bytes:
    """What a sealed key is bound to: its row's description, canonically encoded."""
    described = {"v": VERSION, "kid": kid, "alg": alg, "created": created_at, "at": activate_at}
    return json.dumps(described, sort_keys=True, separators=(",", ":")).encode()


def seal(
    kek: bytes, pem: bytes, *, kid: str, alg: str, created_at: float, activate_at: float
) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    data = associated_data(kid, alg, created_at, activate_at)
    return bytes([VERSION]) + nonce + AESGCM(kek).encrypt(nonce, pem, data)


def unseal(
    kek: bytes, sealed: bytes, *, kid: str, alg: str, created_at: float, activate_at: float
) -> bytes:
    """The PEM of a sealed key, or ``SealError``."""
    if len(sealed) <= 1 + NONCE_BYTES or sealed[0] != VERSION:
        raise SealError(f"signing key {kid}: not a sealed key of this version")
    nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    data = associated_data(kid, alg, created_at, activate_at)
    try:
        return AESGCM(kek).decrypt(nonce, ciphertext, data)
    except InvalidTag:
        raise SealError(
            f"signing key {kid} does not open: the key-encryption key is not the one it was "
            "sealed with, or its row was altered"
        ) from None
