"""What the tests share, one module per concern; fixtures live in ``tests/conftest.py``.

- ``environment``: the issuer the tests use, the reachable services (PostgreSQL, Redis)
  and how a test reports one missing;
- ``tokens``: the one way to get a token (``get_token``/``request_token`` from the test
  client, ``fetch_token``/``post_token`` from a real server), Basic credentials,
  introspection and ``/verify_token`` calls, reading, forging and tampering with a JWT;
- ``apps``: another app over a test's store, a client registered in it, and client
  addresses for rate limits;
- ``openapi``: openapi.yaml and ``SpecChecker``, which checks request bodies and
  responses against it (``call``: a test-client request, its response checked);
- ``cli``: the one CLI runner, in process (click's runner) or as the console script;
- ``processes``: processes that must end by themselves, and packages taken away;
- ``servers``: real ``tokendealer serve`` processes, and ``wait_until`` (polling with a
  deadline: no test waits a fixed time for what a server does);
- ``issuer``: a fake issuer (metadata and JWK Set over httpx) for the library's tests;
- ``keyserver``, ``workloads``: a client's jwks_uri, and a workload platform's issuer
  (OpenID discovery and a JWK Set on a loopback port, Kubernetes, SPIFFE and GitHub
  Actions token shapes), served by a thread of the test;
- ``faults``: a TCP proxy that can be frozen like a partitioned network;
- ``nodejs``: the Node.js project for interop tests.
"""
