"""tokendealer: an OAuth 2.0 client-credentials token service.

Services trade a registered ``client_id`` and secret for a short-lived RS512-signed
JWT access token (RFC 6749 §4.4, RFC 9068) and verify tokens against the published
JWKS (RFC 7517).
"""

__version__ = "0.1.0"
