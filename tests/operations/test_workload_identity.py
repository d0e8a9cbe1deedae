"""Workload identity federation: ``trust add`` an issuer the test runs (discovery and a
JWK Set on a loopback port), bind a client to a subject of it (``clients add
--auth-method federated``), and get tokens with the platform's own token as
``client_assertion``: Kubernetes projected service-account tokens, SPIFFE JWT-SVIDs and
GitHub Actions OIDC tokens. Every token that is not the bound workload's, for this
dealer, from this issuer, is ``invalid_client``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tests.support.cli import CLI
from tests.support.environment import ISSUER, QuartClient
from tests.support.tokens import unverified
from tests.support.workloads import OTHER_KEY, LocalIssuer
from tokendealer.protocol.assertions import ASSERTION_TYPE
from tokendealer.settings import Settings

K8S_SUBJECT = "system:serviceaccount:billing:worker"


@pytest.fixture(name="platform")
def _platform() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer()
    yield issuer
    issuer.close()


@pytest.fixture(name="cli")
def _cli(settings: Settings) -> CLI:
    return CLI.for_settings(settings)


def presented(client_id: str, token: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
    }


async def bind(cli: CLI, platform: LocalIssuer, *binding: str, trust: str = "k8s") -> None:
    """Trust ``platform`` (by discovery) and register ``billing-worker`` bound to it."""
    await cli.aok("trust", "add", trust, "--issuer", platform.issuer)
    await cli.aok(
        "clients",
        "add",
        "billing-worker",
        "--scope",
        "invoices",
        "--auth-method",
        "federated",
        "--trust",
        trust,
        *(binding or ("--subject", K8S_SUBJECT)),
    )


async def token_for(client: QuartClient, client_id: str, token: str) -> tuple[int, Any]:
    response = await client.post("/oauth/token", form=presented(client_id, token))
    return response.status_code, await response.get_json()


async def test_a_kubernetes_service_account_token_gets_a_token(
    cli: CLI, client: QuartClient, platform: LocalIssuer
) -> None:
    await bind(cli, platform)
    shown = (await cli.aok("trust", "list", "--json")).json()
    assert shown == [
        {
            "name": "k8s",
            "issuer": platform.issuer,
            "jwks_uri": platform.jwks_uri,
            "audience": ISSUER,
            "created_at": shown[0]["created_at"],
        }
    ]
    token = platform.sign(platform.kubernetes(ISSUER))
    status, body = await token_for(client, "billing-worker", token)
    assert status == 200, body
    _, claims = unverified(body["access_token"])
    assert claims["client_id"] == "billing-worker" and claims["scope"] == "invoices"
    # The pod reads the same projected token again until the kubelet renews it: no jti
    # to use once, and a jti (Kubernetes 1.30 and later) is not used once either.
    assert (await token_for(client, "billing-worker", token))[0] == 200
    with_jti = platform.sign(platform.kubernetes(ISSUER, jti="5e1a6b52-4b6c"))
    assert [(await token_for(client, "billing-worker", with_jti))[0] for _ in "ab"] == [200, 200]
    # Discovery ran once, at trust add; the keys are fetched as the dealer needs them.
    assert platform.requests["/.well-known/openid-configuration"] == 1
    described = (await cli.aok("clients", "show", "billing-worker", "--json")).json()
    assert described["auth_method"] == "federated"
    assert (described["trust"], described["subject"]) == ("k8s", K8S_SUBJECT)


async def test_a_spiffe_jwt_svid_matches_a_subject_pattern(
    cli: CLI, client: QuartClient, platform: LocalIssuer
) -> None:
    pattern = "spiffe://example.org/ns/billing/sa/*"
    await bind(cli, platform, "--subject-pattern", pattern, trust="spire")
    worker = platform.sign(platform.spiffe(ISSUER))
    assert (await token_for(client, "billing-worker", worker))[0] == 200
    outsider = platform.sign(platform.spiffe(ISSUER, path="ns/payments/sa/worker"))
    status, body = await token_for(client, "billing-worker", outsider)
    assert (status, body["error"]) == (401, "invalid_client")


async def test_a_github_actions_token_with_its_own_audience_and_key_url(
    cli: CLI, client: QuartClient, platform: LocalIssuer
) -> None:
    await cli.aok(
        "trust",
        "add",
        "github",
        "--issuer",
        platform.issuer,
        "--jwks-uri",
        platform.jwks_uri,
        "--audience",
        "tokendealer-ci",
    )
    assert "/.well-known/openid-configuration" not in platform.requests
    await cli.aok(
        "clients",
        "add",
        "deploy",
        "--auth-method",
        "federated",
        "--trust",
        "github",
        "--subject",
        "repo:org/repo:ref:refs/heads/main",
    )
    token = platform.sign(platform.github("tokendealer-ci"), key=None)
    assert (await token_for(client, "deploy", token))[0] == 200
    # The dealer's own issuer is not this trust's audience.
    other = platform.sign(platform.github(ISSUER))
    assert (await token_for(client, "deploy", other))[0] == 401


def _refused(platform: LocalIssuer, case: str) -> str:
    now = int(time.time())
    claims = platform.kubernetes
    tokens = {
        "another issuer": lambda: platform.sign(claims(ISSUER, iss="https://kubernetes.other")),
        "wrong audience": lambda: platform.sign(claims("https://other-dealer.test")),
        "no audience": lambda: platform.sign(claims(ISSUER, aud=None)),
        "subject outside the binding": lambda: platform.sign(claims(ISSUER, account="admin")),
        "expired": lambda: platform.sign(
            claims(ISSUER, iat=now - 4000, nbf=now - 4000, exp=now - 400)
        ),
        "no expiry": lambda: platform.sign(claims(ISSUER, exp=None)),
        "no iat": lambda: platform.sign(claims(ISSUER, iat=None)),
        "lives over an hour": lambda: platform.sign(claims(ISSUER, exp=now + 3601)),
        "key not published": lambda: platform.sign(claims(ISSUER), key=OTHER_KEY),
        "unknown kid": lambda: platform.sign(claims(ISSUER), key=OTHER_KEY, kid="other"),
        "HS256 with the public key": lambda: platform.sign(
            claims(ISSUER), key=str(platform.jwks["keys"][0]["x"]), alg="HS256"
        ),
        "HS256 with a secret": lambda: platform.sign(
            claims(ISSUER), key="s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t", alg="HS256"
        ),
        "not a JWT": lambda: "garbage",
    }
    return tokens[case]()


#: Each refusal, and what the log says of it.
REFUSALS = {
    "another issuer": "iss is not the trusted issuer",
    "wrong audience": "aud does not name",
    "no audience": "aud does not name",
    "subject outside the binding": "sub is not the subject",
    "expired": "expired",
    "no expiry": '"exp"',
    "no iat": '"iat"',
    "lives over an hour": "longer than 3600 s",
    "key not published": "bad signature",
    "unknown kid": "no key of the trusted issuer",
    "HS256 with the public key": "'HS256' is not accepted",
    "HS256 with a secret": "'HS256' is not accepted",
    "not a JWT": "not a JWT",
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_refused_tokens_are_invalid_client(
    cli: CLI, client: QuartClient, platform: LocalIssuer, case: str
) -> None:
    await bind(cli, platform)
    with structlog.testing.capture_logs() as logs:
        status, body = await token_for(client, "billing-worker", _refused(platform, case))
    assert (status, body["error"]) == (401, "invalid_client")
    [rejected] = [entry for entry in logs if entry["event"] == "client_authentication_failed"]
    assert rejected["client_id"] == "billing-worker"
    assert REFUSALS[case] in rejected["reason"], rejected["reason"]


async def test_a_token_works_only_for_the_client_bound_to_it(
    cli: CLI, client: QuartClient, platform: LocalIssuer
) -> None:
    await bind(cli, platform)
    await cli.aok("clients", "add", "svc")
    token = platform.sign(platform.kubernetes(ISSUER))
    # A secret client, an unknown id, a disabled federated client: all refused.
    assert (await token_for(client, "svc", token))[0] == 401
    assert (await token_for(client, "nobody", token))[0] == 401
    await cli.aok("clients", "disable", "billing-worker")
    assert (await token_for(client, "billing-worker", token))[0] == 401


async def test_trust_add_refuses_a_discovery_document_of_another_issuer(
    cli: CLI, platform: LocalIssuer
) -> None:
    platform.discovered_issuer = "https://kubernetes.default.svc"
    result = await cli.afails("trust", "add", "k8s", "--issuer", platform.issuer)
    result.assert_one_line_error("names the issuer 'https://kubernetes.default.svc'")
    assert (await cli.aok("trust", "list", "--json")).json() == []


async def test_trust_add_refuses_keys_it_cannot_use_and_issuers_it_cannot_reach(
    cli: CLI, platform: LocalIssuer
) -> None:
    platform.jwks = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}
    result = await cli.afails("trust", "add", "k8s", "--issuer", platform.issuer)
    result.assert_one_line_error("no public signing key")
    unreachable = await cli.afails("trust", "add", "k8s", "--issuer", "http://127.0.0.1:9")
    unreachable.assert_one_line_error("cannot fetch http://127.0.0.1:9/.well-known/")
    bad = await cli.afails("trust", "add", "k 8s", "--issuer", platform.issuer)
    bad.assert_one_line_error("Invalid value for 'NAME'")


async def test_trust_remove_is_refused_while_clients_are_bound(
    cli: CLI, platform: LocalIssuer
) -> None:
    await bind(cli, platform)
    refused = await cli.afails("trust", "remove", "k8s")
    refused.assert_one_line_error("billing-worker")
    await cli.aok("clients", "remove", "billing-worker")
    await cli.aok("trust", "remove", "k8s")
    assert (await cli.aok("trust", "list", "--json")).json() == []
    (await cli.afails("trust", "remove", "k8s")).assert_one_line_error("no trust 'k8s'")
    actions = [
        event["action"]
        for event in (await cli.aok("audit", "--target", "trust:k8s", "--json")).json()
    ]
    assert actions == ["trust.remove", "trust.create"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--trust", "nowhere", "--subject", "s"), "no trust 'nowhere'"),
        (("--trust", "k8s"), "Invalid value for '--subject'"),
        (("--trust", "k8s", "--subject", "a", "--subject-pattern", "b*"), "one of them"),
        (("--subject", "a"), "Invalid value for '--trust'"),
        (("--trust", "k8s", "--subject", "a", "--jwks-uri", "https://k.test"), "--jwks-uri"),
    ],
)
async def test_bad_bindings_are_one_line_and_register_nothing(
    cli: CLI, platform: LocalIssuer, args: tuple[str, ...], fragment: str
) -> None:
    await cli.aok("trust", "add", "k8s", "--issuer", platform.issuer)
    result = await cli.afails("clients", "add", "worker", "--auth-method", "federated", *args)
    result.assert_one_line_error(fragment)
    assert (await cli.aok("clients", "list", "--json")).json() == []
    secret_client = await cli.afails("clients", "add", "svc", "--trust", "k8s")
    secret_client.assert_one_line_error("is for federated clients")
