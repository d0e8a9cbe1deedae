"""The book's data service: a Quart app that accepts only tokens from the dealer.

``GET /items`` needs a token with scope ``read``, ``POST /items`` one with scope ``write``;
``GET /healthz`` is open. Tokens are verified locally with ``TokenVerifier`` against the
dealer's published keys: the dealer is not called per request.

Run it (the dealer at http://127.0.0.1:5000)::

    DATA_ISSUER=http://127.0.0.1:5000 python examples/data_service.py --port 8000

Environment:

``DATA_ISSUER``         the dealer's issuer URL (required; tokens' ``iss`` must equal it)
``DATA_AUDIENCE``       this service's identifier in the tokens' ``aud`` (``data-service``)
``DATA_MAX_TOKEN_AGE``  refuse tokens issued more than this many seconds ago (optional):
                        a service holding sensitive data can demand fresh tokens even when
                        the dealer hands out long-lived ones; callers using ``TokenAuth``
                        get a 401 and transparently fetch a new token.

Each request is logged as one JSON line (method, path, status, client and ``jti``; never
the token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from quart import Quart, Response, g, jsonify, request

from tokendealer.library.protect import require_token, token_claims
from tokendealer.library.verify import KeySetUnavailable, TokenVerifier


def create_app() -> Quart:
    issuer = os.environ["DATA_ISSUER"]
    audience = os.environ.get("DATA_AUDIENCE", "data-service")
    max_age = os.environ.get("DATA_MAX_TOKEN_AGE")
    verifier = TokenVerifier(
        issuer,
        audience,
        max_token_age=float(max_age) if max_age else None,
        jwks_url=os.environ.get("DATA_JWKS_URL") or None,
    )
    items: list[dict[str, Any]] = []
    app = Quart("data_service")

    @app.before_serving
    async def warm_up() -> None:
        # Not fatal: the verifier fetches the keys again on the first request.
        try:
            await verifier.refresh()
        except KeySetUnavailable:
            log(event="keys_unavailable_at_startup", issuer=issuer)

    @app.after_request
    async def access_log(response: Response) -> Response:
        claims = g.get("token_claims") or {}
        log(
            event="request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            client_id=claims.get("client_id"),
            jti=claims.get("jti"),
            challenge=response.headers.get("WWW-Authenticate"),
        )
        return response

    @app.get("/healthz")
    async def healthz() -> Any:
        return jsonify(status="ok")

    @app.get("/items")
    @require_token(verifier, scopes=["read"])
    async def list_items() -> Any:
        return jsonify(items=items)

    @app.post("/items")
    @require_token(verifier, scopes=["write"])
    async def add_item() -> Any:
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return jsonify(error="a JSON object is required"), 400
        item = {"id": len(items) + 1, "data": body, "by": token_claims()["client_id"]}
        items.append(item)
        return jsonify(item), 201

    return app


def log(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def serve(host: str, port: int) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await hypercorn_serve(create_app(), config, shutdown_trigger=stop.wait)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if "DATA_ISSUER" not in os.environ:
        sys.exit("DATA_ISSUER must be set to the dealer's issuer URL")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
