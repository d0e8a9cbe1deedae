"""What happens that an operator counts or reads: each event a metric and, for those that
deserve it, a line of its own (the access line says the rest).

Each is a plain function, cheap and never raising, called on the request's path. No
secret, assertion or token is ever given to them: client ids (registered ones, where an
attacker could invent them), key ids, token ids, reasons.
"""

from __future__ import annotations

from tokendealer.log import get_logger
from tokendealer.observe import metrics

log = get_logger("tokendealer.events")


def rate_limit_monitored(endpoint: str, client_id: str) -> None:
    """A request of ``client_id`` to ``endpoint`` (the endpoint's name, as the limits
    count it: ``token``, ``introspect``, ``revoke``) went over the client's own rate
    limit, which is in ``monitor`` mode: it was not refused (the limiter has logged
    ``rate_limit_monitored``). ``client_id`` is always a registered client's."""
    metrics.RATE_LIMIT_MONITORED.labels(endpoint, client_id).inc()


def client_auth_failed(method: str, reason: str, client_id: str | None) -> None:
    """A client failed to authenticate with ``method`` (a label of
    ``metrics.AUTH_METHODS``) for ``reason``; ``client_id`` only when it is registered."""
    metrics.client_auth_failed(method)
    if client_id is None:
        log.info("client_authentication_failed", method=method, reason=reason)
    else:
        log.info("client_authentication_failed", method=method, reason=reason, client_id=client_id)


def rate_limited(endpoint: str, address: str) -> None:
    """A request to ``endpoint`` from ``address`` was refused with 429."""
    metrics.RATE_LIMITED.labels(endpoint).inc()
    log.info("rate_limited", endpoint=endpoint, address=address)


def token_revoked(client_id: str, jti: str) -> None:
    log.info("token_revoked", client_id=client_id, jti=jti)


def signing_key_activated(kid: str, previous: str | None) -> None:
    """The active signing key changed (a rotation's next key reached its time, or a key
    set with another active key was loaded)."""
    log.info("signing_key_activated", kid=kid, previous=previous)
