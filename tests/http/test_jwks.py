"""``GET /.well-known/jwks.json``: public keys only, exact encoding, RFC 7638 key ids.

The thumbprint and the base64url checks here are computed independently of
``tokendealer.library.jwk``, so a bug there cannot hide itself.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt as joserfc_jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet as JoserfcKeySet
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from tests.support.apps import running
from tests.support.environment import ISSUER, QuartClient, Register
from tests.support.tokens import (
    b64url_decode,
    b64url_encode,
    get_token,
    rfc7638_thumbprint,
    tamper,
    unverified,
)
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings

JWKS_PATH = "/.well-known/jwks.json"


BASE64URL_NO_PAD = re.compile(r"[A-Za-z0-9_-]+")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


async def fetch_jwks(client: QuartClient) -> tuple[Any, dict[str, Any]]:
    response = await client.get(JWKS_PATH)
    assert response.status_code == 200
    return response, json.loads(await response.get_data())


async def issue_token(client: QuartClient, register: Register) -> str:
    """A token from the token endpoint for client ``svc`` with scope ``read``."""
    return await get_token(client, "svc", await register("svc", scopes=("read",)))


async def test_jwks_content_type_and_caching(client: QuartClient, settings: Settings) -> None:
    """The JWK Set is served as application/jwk-set+json with the configured max-age."""
    response, _ = await fetch_jwks(client)
    assert response.mimetype == "application/jwk-set+json"
    cache_control = response.headers["Cache-Control"]
    match = re.search(r"(?:^|[ ,])max-age=(\d+)(?:$|[ ,])", cache_control)
    assert match is not None, cache_control
    assert int(match.group(1)) == settings.jwks_max_age
    assert "no-store" not in cache_control


async def test_jwks_max_age_follows_settings(settings: Settings) -> None:
    """A different TOKENDEALER_JWKS_MAX_AGE is what the Cache-Control header says."""
    async with running(dataclasses.replace(settings, jwks_max_age=42)) as client:
        response = await client.get(JWKS_PATH)
    assert response.status_code == 200
    assert re.search(r"(?:^|[ ,])max-age=42(?:$|[ ,])", response.headers["Cache-Control"])


async def test_jwks_keys_have_exactly_the_public_members(client: QuartClient) -> None:
    """Each key has exactly kty, use, alg, kid, n, e; no private member appears anywhere."""
    response, jwks = await fetch_jwks(client)
    assert set(jwks) == {"keys"}
    assert len(jwks["keys"]) >= 1
    for key in jwks["keys"]:
        assert set(key) == {"kty", "use", "alg", "kid", "n", "e"}
        assert key["kty"] == "RSA" and key["use"] == "sig" and key["alg"] == "RS512"
        for member in PRIVATE_MEMBERS:
            assert member not in key
    raw = await response.get_data()
    for member in PRIVATE_MEMBERS:
        assert f'"{member}"'.encode() not in raw


async def test_jwks_n_and_e_are_minimal_unpadded_base64url(
    client: QuartClient, dealer: Dealer
) -> None:
    """n and e are base64url without '=' and without a leading zero octet, and decode to the key."""
    _, jwks = await fetch_jwks(client)
    active = dealer.keyset.active()
    assert active is not None
    numbers = active.public_key.public_numbers()
    (key,) = [k for k in jwks["keys"] if k["kid"] == active.kid]
    for member in ("n", "e"):
        assert BASE64URL_NO_PAD.fullmatch(key[member]), member
        octets = b64url_decode(key[member])
        assert octets[0] != 0, f"{member} has a leading zero octet"
        # Canonical: re-encoding the octets gives back the same text.
        assert b64url_encode(octets) == key[member]
    assert int.from_bytes(b64url_decode(key["n"]), "big") == numbers.n
    assert int.from_bytes(b64url_decode(key["e"]), "big") == numbers.e
    assert key["e"] == "AQAB"
    assert len(b64url_decode(key["n"])) == 256  # 2048 bits, no extra octet


async def test_jwks_kid_is_the_rfc7638_thumbprint(client: QuartClient) -> None:
    """Every kid equals the RFC 7638 SHA-256 thumbprint of the key's own n and e."""
    _, jwks = await fetch_jwks(client)
    for key in jwks["keys"]:
        public_key = rsa.RSAPublicNumbers(
            e=int.from_bytes(b64url_decode(key["e"]), "big"),
            n=int.from_bytes(b64url_decode(key["n"]), "big"),
        ).public_key()
        assert key["kid"] == rfc7638_thumbprint(public_key)


def test_thumbprint_helper_matches_rfc7638_example() -> None:
    """The test's own thumbprint function reproduces the RFC 7638 §3.1 worked example."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
        "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt"
        "-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDK"
        "gw"
    )
    public_key = rsa.RSAPublicNumbers(
        e=65537, n=int.from_bytes(b64url_decode(n), "big")
    ).public_key()
    assert rfc7638_thumbprint(public_key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_jwks_is_the_same_bytes_every_time(client: QuartClient) -> None:
    """The JWKS is computed once: two fetches return identical bytes."""
    first = await (await client.get(JWKS_PATH)).get_data()
    second = await (await client.get(JWKS_PATH)).get_data()
    assert first == second


async def test_jwks_verifies_an_issued_token_with_jwcrypto(
    client: QuartClient, register: Register
) -> None:
    """jwcrypto, given only the published JWK Set, verifies a token from the token endpoint."""
    token = await issue_token(client, register)
    _, jwks = await fetch_jwks(client)
    keyset = jwcrypto_jwk.JWKSet.from_json(json.dumps(jwks))
    verified = jwcrypto_jwt.JWT(jwt=token, key=keyset, algs=["RS512"])
    claims = json.loads(verified.claims)
    assert claims["iss"] == ISSUER and claims["client_id"] == "svc"
    # And the key selected is the one the token's kid names.
    header, _ = unverified(token)
    assert keyset.get_key(header["kid"]) is not None


async def test_jwks_verifies_an_issued_token_with_joserfc(
    client: QuartClient, register: Register
) -> None:
    """joserfc, given only the published JWK Set, verifies a token from the token endpoint."""
    token = await issue_token(client, register)
    _, jwks = await fetch_jwks(client)
    decoded = joserfc_jwt.decode(token, JoserfcKeySet.import_key_set(jwks), algorithms=["RS512"])
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.claims["sub"] == "svc" and decoded.claims["scope"] == "read"


async def test_jwks_does_not_verify_a_token_with_a_changed_payload(
    client: QuartClient, register: Register
) -> None:
    """The published key rejects a token whose payload was altered (the check is real)."""
    token = await issue_token(client, register)
    _, jwks = await fetch_jwks(client)
    forged = tamper(token, scope="admin")
    with pytest.raises(BadSignatureError):
        joserfc_jwt.decode(forged, JoserfcKeySet.import_key_set(jwks), algorithms=["RS512"])


async def test_jwks_rejects_other_methods(client: QuartClient) -> None:
    """POST to the JWKS is 405 with an Allow header and a JSON error body."""
    response = await client.post(JWKS_PATH, data=b"")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    body = await response.get_json()
    assert set(body) == {"error", "error_description"}
