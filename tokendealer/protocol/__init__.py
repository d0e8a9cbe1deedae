"""The OAuth 2.0 rules themselves (RFC 6749, 7009, 7662, 8414, 8707, 9068): errors, form
parsing, client credentials, scope and audience policy, server metadata. Imports no web
framework and no storage."""
