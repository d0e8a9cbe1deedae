"""Interop for every signing algorithm (issue 15): tokens from a real ``tokendealer serve``
signed RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 and EdDSA verify with PyJWT's
``PyJWKClient``, joserfc, jwcrypto, Node's ``jose`` (``createRemoteJWKSet``) and the
library's own ``TokenVerifier``, each reading the server's published JWK Set.

One server for the module: ``tokendealer keys generate --alg X`` makes each algorithm's
key the signing one in turn, and the server's key watcher (its interval shrunk to 0.1 s)
picks it up; a token is fetched with each. Every key stays published (retired keys are),
so each verifier meets the whole set of ten keys of three types, as a resource server
does during a change of algorithm.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from joserfc import jwt as joserfc_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet as JoserfcKeySet
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from tests.support.nodejs import node_project, run_node
from tests.support.servers import ServerProcess, run_server
from tests.support.tokens import segment
from tokendealer.library.verify import InvalidSignature, TokenVerifier

pytestmark = pytest.mark.e2e

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
AUDIENCE = "https://api.algorithms.test"
CLIENT_ID = "svc"
#: The longest wait for the server to sign with a key just made (its watcher: 0.1 s).
SWITCH_TIMEOUT = 10.0


@dataclass(frozen=True)
class Signed:
    """The server, and a token of each algorithm it signed (each by its own key)."""

    server: ServerProcess
    tokens: dict[str, str]
    kids: dict[str, str]
    jwks: dict[str, Any]

    @property
    def issuer(self) -> str:
        return self.server.url

    @property
    def jwks_url(self) -> str:
        return self.server.url + "/.well-known/jwks.json"


def _token_signed_with(server: ServerProcess, secret: str, kid: str) -> str:
    """A token from the server once it signs with ``kid`` (its watcher reloads the keys)."""
    deadline = time.monotonic() + SWITCH_TIMEOUT
    with httpx.Client(timeout=5) as http:
        while True:
            token = server.token(CLIENT_ID, secret, http=http, scope="read")
            if jwt.get_unverified_header(token)["kid"] == kid:
                return token
            assert time.monotonic() < deadline, f"the server never signed with {kid}"
            time.sleep(0.05)


@pytest.fixture(name="signed", scope="module")
def _signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    workdir = tmp_path_factory.mktemp("algorithms")
    with run_server(workdir, env={"TOKENDEALER_KEY_WATCH_INTERVAL": "0.1"}) as server:
        secret = server.add_client(CLIENT_ID, "--scope", "read", "--audience", AUDIENCE)
        tokens: dict[str, str] = {}
        kids: dict[str, str] = {}
        for alg in ALGORITHMS:
            kids[alg] = server.cli("keys", "generate", "--alg", alg).stdout.strip()
            tokens[alg] = _token_signed_with(server, secret, kids[alg])
        jwks = httpx.get(server.url + "/.well-known/jwks.json").json()
        yield Signed(server, tokens, kids, jwks)


def test_the_server_signed_with_each_algorithm_and_publishes_each_key(signed: Signed) -> None:
    """Each token's header names its algorithm and its key; the JWK Set has each key for
    its algorithm (and the first key, RS512), and the metadata lists the algorithms."""
    published = {jwk["kid"]: jwk["alg"] for jwk in signed.jwks["keys"]}
    assert len(published) == len(ALGORITHMS) + 1
    for alg, token in signed.tokens.items():
        header = jwt.get_unverified_header(token)
        assert header == {"alg": alg, "kid": signed.kids[alg], "typ": "at+jwt"}
        assert published[signed.kids[alg]] == alg
    metadata = httpx.get(signed.issuer + "/.well-known/oauth-authorization-server").json()
    assert metadata["access_token_signing_alg_values_supported"] == sorted(ALGORITHMS)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_pyjwt_pyjwkclient_verifies(signed: Signed, alg: str) -> None:
    """PyJWT's PyJWKClient fetches the JWK Set, picks the token's key by kid, and
    ``jwt.decode`` checks the signature, iss, aud and the required claims."""
    token = signed.tokens[alg]
    client = jwt.PyJWKClient(signed.jwks_url, cache_keys=True)
    key = client.get_signing_key_from_jwt(token)
    assert key.key_id == signed.kids[alg] and key.algorithm_name == alg
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[alg],
        audience=AUDIENCE,
        issuer=signed.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    assert claims["client_id"] == CLIENT_ID and claims["scope"] == "read"


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_joserfc_verifies(signed: Signed, alg: str) -> None:
    """joserfc imports the whole JWK Set and verifies each token, claims validated."""
    keyset = JoserfcKeySet.import_key_set(signed.jwks)
    with warnings.catch_warnings():
        # joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" for "Ed25519";
        # the dealer publishes "EdDSA", the name PyJWT, jwcrypto and jose all verify.
        warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)
        token = joserfc_jwt.decode(signed.tokens[alg], keyset, algorithms=[alg])
    assert token.header["alg"] == alg and token.header["typ"] == "at+jwt"
    joserfc_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": signed.issuer},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        client_id={"essential": True, "value": CLIENT_ID},
    ).validate(token.claims)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_jwcrypto_verifies(signed: Signed, alg: str) -> None:
    """jwcrypto reads the JWK Set and verifies each token, iss, aud and exp checked."""
    keyset = jwcrypto_jwk.JWKSet.from_json(json.dumps(signed.jwks))
    verified = jwcrypto_jwt.JWT(
        jwt=signed.tokens[alg],
        key=keyset,
        algs=[alg],
        check_claims={"iss": signed.issuer, "aud": AUDIENCE, "exp": None},
        expected_type="JWS",
    )
    assert json.loads(verified.header)["alg"] == alg
    assert json.loads(verified.claims)["sub"] == CLIENT_ID


@pytest.fixture(name="jose_results", scope="module")
def _jose_results(signed: Signed) -> dict[str, dict[str, Any]]:
    """Node's jose verifies every token in one run (one Node start for all algorithms)."""
    node_project()
    pairs = [f"{alg}={token}" for alg, token in signed.tokens.items()]
    output = run_node("verify_algorithms.mjs", signed.jwks_url, signed.issuer, AUDIENCE, *pairs)
    return {result["alg"]: result for result in output["results"]}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_node_jose_remote_jwk_set_verifies(
    signed: Signed, jose_results: dict[str, dict[str, Any]], alg: str
) -> None:
    """jose's jwtVerify with createRemoteJWKSet, typ at+jwt and the one algorithm."""
    result = jose_results[alg]
    assert result["ok"] is True, result
    assert result["protectedHeader"] == {"alg": alg, "kid": signed.kids[alg], "typ": "at+jwt"}
    assert result["payload"]["client_id"] == CLIENT_ID
    assert result["payload"]["aud"] == AUDIENCE


def test_node_jose_refuses_a_token_whose_header_names_another_algorithm(signed: Signed) -> None:
    """An ES256 token relabelled RS256 and an EdDSA one relabelled ES256: jose finds no key
    of that algorithm under the kid, and refuses, as the dealer's verifier does."""
    pairs = []
    for signer, claimed in (("ES256", "RS256"), ("EdDSA", "ES256")):
        _, payload, sig = signed.tokens[signer].split(".")
        header = segment({"alg": claimed, "kid": signed.kids[signer], "typ": "at+jwt"})
        pairs.append(f"{claimed}={header}.{payload}.{sig}")
    output = run_node("verify_algorithms.mjs", signed.jwks_url, signed.issuer, AUDIENCE, *pairs)
    for result in output["results"]:
        assert result["ok"] is False, result
        assert result["code"] == "ERR_JWKS_NO_MATCHING_KEY", result


def test_token_verifier_verifies_each_algorithm_and_refuses_a_relabelled_one(
    signed: Signed,
) -> None:
    """The library's TokenVerifier, by discovery, with its default algorithms (all nine):
    each token verifies; one whose header names another algorithm than its key's does not."""
    verifier = TokenVerifier(signed.issuer, AUDIENCE)
    for alg in ALGORITHMS:
        assert verifier.verify_sync(signed.tokens[alg], scopes=["read"])["client_id"] == CLIENT_ID
    assert verifier.fetches == 1
    _, payload, sig = signed.tokens["ES384"].split(".")
    header = segment({"alg": "PS384", "kid": signed.kids["ES384"], "typ": "at+jwt"})
    with pytest.raises(InvalidSignature):
        verifier.verify_sync(f"{header}.{payload}.{sig}")
    # A verifier limited to ES256 does not use the keys of the other algorithms.
    es256_only = TokenVerifier(signed.issuer, AUDIENCE, algorithms=["ES256"])
    assert es256_only.verify_sync(signed.tokens["ES256"])["sub"] == CLIENT_ID
    with pytest.raises(Exception, match="unknown key"):
        es256_only.verify_sync(signed.tokens["EdDSA"])
