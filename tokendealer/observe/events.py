"""Hooks the service calls when something happens that an operator counts.

Each is a plain function, cheap and never raising, called on the request's path; the
metrics (``tokendealer.observe.metrics``) are to be wired into them.
"""

from __future__ import annotations


def rate_limit_monitored(endpoint: str, client_id: str) -> None:
    """A request of ``client_id`` to ``endpoint`` (the endpoint's name, as the limits
    count it: ``token``, ``introspect``, ``revoke``) went over the client's own rate
    limit, which is in ``monitor`` mode: it was not refused (the limiter has logged
    ``rate_limit_monitored``). ``client_id`` is always a registered client's.

    A placeholder for now: the metric (a counter by endpoint and client) goes here.
    """
