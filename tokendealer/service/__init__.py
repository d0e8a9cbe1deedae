"""The token service: the dealer and what it keeps per process (the client registry, the
deny-list), client authentication against the registry, and minting tokens."""
