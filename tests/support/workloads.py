"""A workload platform's issuer run by the test: an OpenID discovery document and a JWK
Set on a loopback port (as a Kubernetes API server, a SPIFFE OIDC discovery provider or
GitHub Actions serve them), and tokens shaped like each platform's, signed with its key.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.keyserver import public_jwk

#: Generated once: the issuer's signing key, and one it never publishes.
ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"


class LocalIssuer:
    """An issuer at ``http://127.0.0.1:PORT`` (``issuer``), serving its discovery document
    (naming ``discovered_issuer``, the issuer itself unless a test changes it) and its JWK
    Set (``jwks``: its key, ``kid``), counting the GETs of each path (``requests``)."""

    def __init__(self, key: Any = ISSUER_KEY, kid: str = "platform-1") -> None:
        self.key = key
        self.kid = kid
        self.requests: dict[str, int] = {}
        self.jwks: dict[str, Any] = {"keys": [public_jwk(key, kid)]}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests[self.path] = outer.requests.get(self.path, 0) + 1
                if self.path == DISCOVERY_PATH:
                    body: Any = outer.discovery()
                elif self.path == JWKS_PATH:
                    body = outer.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.discovered_issuer = self.issuer
        self.jwks_uri = self.issuer + JWKS_PATH
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def discovery(self) -> dict[str, Any]:
        """The OpenID discovery document, as a Kubernetes API server serves it."""
        return {
            "issuer": self.discovered_issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }

    def sign(
        self, claims: dict[str, Any], *, key: Any = None, alg: str = "ES256", kid: Any = ""
    ) -> str:
        """``claims`` signed with the issuer's key (or ``key``), ``kid`` in the header
        (the issuer's unless given; ``None``: no kid)."""
        headers = {"kid": self.kid if kid == "" else kid} if kid is not None else {}
        return jwt.encode(claims, key or self.key, algorithm=alg, headers=headers)

    def kubernetes(
        self, audience: str, namespace: str = "billing", account: str = "worker", **changed: Any
    ) -> dict[str, Any]:
        """A projected service-account token's claims (no jti: as before Kubernetes 1.30)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": [audience],
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": f"{account}-7d9f8b6c5-x2x4z", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
            },
            "sub": f"system:serviceaccount:{namespace}:{account}",
        }
        return _changed(claims, changed)

    def spiffe(self, audience: str, path: str = "ns/billing/sa/worker", **changed: Any) -> Any:
        """A SPIFFE JWT-SVID's claims."""
        now = int(time.time())
        claims = {
            "aud": [audience],
            "exp": now + 300,
            "iat": now,
            "iss": self.issuer,
            "sub": f"spiffe://example.org/{path}",
        }
        return _changed(claims, changed)

    def github(self, audience: str, repository: str = "org/repo", **changed: Any) -> Any:
        """A GitHub Actions OIDC token's claims."""
        now = int(time.time())
        claims = {
            "jti": str(uuid.uuid4()),
            "sub": f"repo:{repository}:ref:refs/heads/main",
            "aud": audience,
            "ref": "refs/heads/main",
            "sha": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
            "repository": repository,
            "repository_owner": repository.split("/")[0],
            "run_id": "6174384929",
            "event_name": "push",
            "workflow": "deploy",
            "iss": self.issuer,
            "nbf": now - 5,
            "exp": now + 300,
            "iat": now - 5,
        }
        return _changed(claims, changed)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _changed(claims: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
    """``claims`` with ``changed`` set (``None`` removes a claim)."""
    claims = {**claims, **changed}
    return {name: value for name, value in claims.items() if value is not None}
