"""Where each endpoint is served: one source for routes, metadata and clients' defaults."""

TOKEN = "/oauth/token"  # noqa: S105  # nosec B105 - a path, not a password
INTROSPECTION = "/oauth/introspect"
REVOCATION = "/oauth/revoke"
#: The dealer verifies a token for services that would rather ask (not an RFC endpoint).
VERIFICATION = "/verify_token"
JWKS = "/.well-known/jwks.json"
#: RFC 8414 §3: the authorization server metadata document.
METADATA = "/.well-known/oauth-authorization-server"
METRICS = "/metrics"
