"""The book's worker: fetches a token from the dealer and writes to the data service.

``TokenAuth`` does everything the book's worker did by hand: it fetches a token with
the client-credentials grant, caches it until shortly before it expires, sends it as a
Bearer token, and when the data service answers 401 it fetches a new token once and
retries the request once.

Run it (the secret from ``tokendealer clients add worker --scope write
--audience data-service``, passed in the environment, never on the command line)::

    WORKER_CLIENT_SECRET=... python examples/worker.py \\
        --dealer http://127.0.0.1:5000 --data-url http://127.0.0.1:8000 --items 3

Prints one JSON line per item written: its number, the final HTTP status and how many
tokens the worker has fetched so far (never the token). Exits 1 if any write failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx

from tokendealer.library.client import TokenAuth, TokenClient, TokenError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dealer", required=True, help="the dealer's base URL")
    parser.add_argument("--data-url", required=True, help="the data service's base URL")
    parser.add_argument("--client-id", default="worker")
    parser.add_argument("--audience", default="data-service")
    parser.add_argument("--scope", default="write")
    parser.add_argument("--items", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between writes")
    args = parser.parse_args(argv)
    secret = os.environ.get("WORKER_CLIENT_SECRET")
    if not secret:
        sys.exit("WORKER_CLIENT_SECRET must be set")

    tokens = TokenClient(
        args.dealer.rstrip("/") + "/oauth/token",
        args.client_id,
        secret,
        audience=args.audience,
        scope=args.scope,
    )
    failed = 0
    with httpx.Client(base_url=args.data_url, auth=TokenAuth(tokens), timeout=10) as http:
        for n in range(1, args.items + 1):
            if n > 1:
                time.sleep(args.interval)
            try:
                response = http.post("/items", json={"name": f"item-{n}"})
            except TokenError as exc:
                print(json.dumps({"item": n, "token_error": exc.error}), flush=True)
                return 1
            failed += response.status_code != 201
            record = {"item": n, "status": response.status_code, "token_fetches": tokens.fetches}
            print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
