"""The library that clients and resource servers import: ``client`` (fetch tokens, with a
secret or a private key), ``assertions`` (the RFC 7523 client assertions a private key
signs), ``verify`` (verify tokens locally against the dealer's keys), ``protect`` (guard
routes), and what those share (``verification``, ``jwk``, ``fetching``). It imports
nothing of the server."""
