"""A client's keys as the dealer sees them: public JWKs and JWK Sets made from private
keys, and a ``jwks_uri`` served on a loopback port by a thread of the test."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    """The public JWK of a private RSA, EC or Ed25519 key, named ``kid``."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid}


def key_set(*pairs: tuple[Any, str]) -> str:
    """The JWK Set (JSON text) of the public keys of (private key, kid) pairs."""
    return json.dumps({"keys": [public_jwk(key, kid) for key, kid in pairs]})


class KeyServer:
    """A client's jwks_uri: serves ``document`` (bytes) and counts the GETs
    (``requests``), or hangs until closed."""

    def __init__(self) -> None:
        self.document = b'{"keys": []}'
        self.hang = False
        self.requests = 0
        self._closed = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.hang:
                    outer._closed.wait(10)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.document)))
                self.end_headers()
                self.wfile.write(outer.document)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def publish(self, *pairs: tuple[Any, str]) -> None:
        """Serve the public keys of (private key, kid) pairs from now on."""
        self.document = key_set(*pairs).encode()

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
