"""Signing keys: files, manifest and states (``keyset``), and following their changes in
a running server (``watch``)."""
