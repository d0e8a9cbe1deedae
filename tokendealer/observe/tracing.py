"""Optional OpenTelemetry tracing (the ``tokendealer[otel]`` extra).

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: then ``configure`` (called by
``create_app``) imports OpenTelemetry and, unless the process already has an SDK tracer
provider (``opentelemetry-instrument``, a test's), installs one exporting over OTLP/HTTP
in batches, its resource named ``tokendealer`` (``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` override it; the SDK reads the other ``OTEL_*`` variables).
The variable set without the extra installed is one warning line, and no tracing.

What is traced, once on:

* each HTTP request, a ``SERVER`` span started by ``tokendealer.http.observed`` whose
  parent is the incoming W3C ``traceparent`` (``request_span``), named after its route
  (``POST /oauth/token``), with the method, path, status code, request id and the
  authenticated client id; its status is ERROR for a 5xx answer;
* under it (``span``): ``sign`` (minting a token), ``store <operation>`` (each database
  operation) and ``rate_limit`` (each count against the limits).

Off, nothing of OpenTelemetry is imported and ``span`` returns one shared do-nothing
context manager (``NO_SPAN``): no allocation per request, and ``enabled`` is the one
boolean the request path checks. Everything that uses OpenTelemetry itself is in
``tokendealer.observe.otel``, imported only by ``configure``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from tokendealer.log import get_logger

if TYPE_CHECKING:  # OpenTelemetry is never imported here at run time
    from quart import Quart

    from tokendealer.observe import otel

#: Tracing is on when this variable is set (OpenTelemetry's own, read by its exporter too).
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: What ``span`` returns while tracing is off: shared, reusable, entered at no cost.
NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()

#: Whether spans are made (set by ``configure``): the one check on the request path.
enabled = False
_otel: otel.Tracing | None = None
_warned = False

log = get_logger("tokendealer.tracing")


def configure(app: Quart | None = None) -> bool:
    """Turn tracing on if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the extra is
    installed, else off; with ``app``, its spans are named after its routes.
    Returns whether tracing is on. Called by every ``create_app``; each call decides
    anew from the environment, and a tracer provider is installed once per process."""
    global enabled, _otel, _warned
    if not os.environ.get(ENDPOINT_VARIABLE):
        enabled, _otel = False, None
        return False
    try:
        from tokendealer.observe import otel
    except ImportError as exc:  # the extra is not installed
        if not _warned:
            log.warning(
                "tracing_unavailable",
                reason=f"{ENDPOINT_VARIABLE} is set but OpenTelemetry is not installed "
                f"(pip install 'tokendealer[otel]'): {exc}",
            )
            _warned = True
        enabled, _otel = False, None
        return False
    _otel = otel.Tracing.start()
    if app is not None:
        _otel.name_by_route(app)
    enabled = True
    return True


def span(name: str, /, **attributes: str | bool | int | float) -> AbstractContextManager[Any]:
    """A child span of the current one, current for the block, each attribute under
    ``tokendealer.<name>``; ``NO_SPAN`` while tracing is off. An exception leaving the
    block is recorded on the span."""
    if _otel is None:
        return NO_SPAN
    return _otel.span(name, attributes)


def request_span(scope: Mapping[str, Any], request_id: str) -> AbstractContextManager[Any]:
    """The server span of an ASGI HTTP request, child of its ``traceparent`` if any:
    yields the span to hand to ``answered``. Only called when ``enabled``."""
    if _otel is None:
        return NO_SPAN
    return _otel.request_span(scope, request_id)


def answered(span: Any, status: int, client_id: str | None, error: str | None) -> None:
    """What the request turned out to be, on its server span (from ``request_span``):
    the status code (0: never answered), the authenticated client, the OAuth error."""
    if _otel is not None and span is not None:
        _otel.answered(span, status, client_id, error)
