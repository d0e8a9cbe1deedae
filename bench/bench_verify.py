"""Local token verification rate per core: TokenVerifier against raw RSA verify.

Mints one RS512 access token (the dealer's default: 2048-bit key, RFC 9068 claims),
serves the key as a JWK Set through an in-memory httpx transport, and measures, in one
process on one core, for ``--seconds`` per round and ``--rounds`` alternating rounds:

* raw: ``public_key.verify(signature, signing_input, PKCS1v15, SHA512)`` with
  cryptography, the ceiling for any RS512 verifier on this key;
* sync: ``TokenVerifier.verify_sync(token)`` (keys cached after the first call);
* async: ``await TokenVerifier.verify(token)`` in a loop on one event loop.

Rates are per CPU-second of the measuring thread (``time.thread_time``), so that time
the machine gives to other processes does not count against either side. Each round
measures the three in turn; a round's ratios use that round's own raw rate. Prints the
median rate of each and the median of the rounds' ratios, with their range::

    .venv/bin/python bench/bench_verify.py --seconds 2 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import httpx
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tokendealer.library.jwk import public_jwk, thumbprint
from tokendealer.library.verify import TokenVerifier

ISSUER = "https://dealer.bench"
AUDIENCE = "orders-api"


def make_token(key: rsa.RSAPrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "worker",
        "client_id": "worker",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": "bench",
        "scope": "read write",
    }
    return jwt.encode(claims, key, algorithm="RS512", headers={"typ": "at+jwt", "kid": kid})


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Calls per CPU-second of this thread: what the core gave, whatever else ran."""
    count = 0
    started = time.thread_time()
    deadline = started + seconds
    while True:
        for _ in range(50):
            operation()
        count += 50
        now = time.thread_time()
        if now >= deadline:
            return count / (now - started)


async def async_rate(verifier: TokenVerifier, token: str, seconds: float) -> float:
    count = 0
    started = time.thread_time()
    deadline = started + seconds
    while True:
        for _ in range(50):
            await verifier.verify(token)
        count += 50
        now = time.thread_time()
        if now >= deadline:
            return count / (now - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per round and measure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=2048)
    args = parser.parse_args()

    key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
    public = key.public_key()
    kid = thumbprint(public)
    token = make_token(key, kid)
    jwks = json.dumps({"keys": [public_jwk(public, "RS512", kid)]}).encode()

    def issuer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("jwks.json"):
            return httpx.Response(200, content=jwks, headers={"Cache-Control": "max-age=3600"})
        return httpx.Response(404)

    head, _, signature_b64 = token.rpartition(".")
    signing_input = head.encode()
    signature = base64.urlsafe_b64decode(signature_b64 + "==")

    def raw() -> None:
        public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA512())

    sync_http = httpx.Client(transport=httpx.MockTransport(issuer))
    verifier = TokenVerifier(ISSUER, AUDIENCE, sync_http_client=sync_http)
    verifier.verify_sync(token)  # fetch and cache the keys

    async def run_async(seconds: float) -> float:
        async with httpx.AsyncClient(transport=httpx.MockTransport(issuer)) as http:
            async_verifier = TokenVerifier(ISSUER, AUDIENCE, http_client=http)
            await async_verifier.verify(token)
            return await async_rate(async_verifier, token, seconds)

    results: dict[str, list[float]] = {"raw": [], "sync": [], "async": []}
    for _ in range(args.rounds):
        results["raw"].append(rate(raw, args.seconds))
        results["sync"].append(rate(lambda: verifier.verify_sync(token), args.seconds))
        results["async"].append(asyncio.run(run_async(args.seconds)))
    sync_http.close()

    medians = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"RS512 {args.bits}-bit, one core ({platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs), "
        f"{args.rounds} x {args.seconds:g} CPU-s rounds, median per CPU-second:"
    )
    print(f"  raw RSA verify (cryptography)   {medians['raw']:10,.0f} /s")
    for name in ("sync", "async"):
        ratios = [got / raw for got, raw in zip(results[name], results["raw"], strict=True)]
        print(
            f"  TokenVerifier.verify{'_sync' if name == 'sync' else '     '}       "
            f"{medians[name]:10,.0f} /s   ratio {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
