"""The library that clients and resource servers import: ``client`` (fetch tokens),
``verify`` (verify them locally against the dealer's keys), ``protect`` (guard routes),
and what those share (``verification``, ``jwk``, ``fetching``). It imports nothing of the
server."""
