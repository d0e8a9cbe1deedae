"""The part of tracing that uses OpenTelemetry: imported only by
``tokendealer.observe.tracing.configure``, with tracing on (an ImportError here means the
``tokendealer[otel]`` extra is not installed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from quart import Quart, request

from tokendealer import __version__
from tokendealer.protocol import paths

#: The service's name in its spans' resource, unless OTEL_SERVICE_NAME or
#: OTEL_RESOURCE_ATTRIBUTES name it.
SERVICE = "tokendealer"
#: Paths that are their own route (the pipeline's, which Quart never routes, and the
#: documents'): a request to any other is named after its Quart route, or its method only.
FIXED_ROUTES = frozenset(
    {
        paths.TOKEN,
        paths.INTROSPECTION,
        paths.REVOCATION,
        paths.VERIFICATION,
        paths.JWKS,
        paths.METADATA,
        paths.METRICS,
    }
)
#: HTTP semantic conventions: any other method is ``_OTHER`` (a bounded span name).
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

Headers = Sequence[tuple[bytes, bytes]]


class _HeaderGetter(Getter[Headers]):
    """Reads a propagated field (``traceparent``, ``tracestate``...) from ASGI headers."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        found = [value.decode("latin-1") for name, value in carrier if name.lower() == wanted]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_GETTER = _HeaderGetter()


def install_provider() -> None:
    """Have the process export its spans over OTLP/HTTP in batches, unless a tracer
    provider is set already (by ``opentelemetry-instrument``, the application, a test):
    the SDK sets one once per process."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    named = Resource({SERVICE_NAME: SERVICE}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=Resource.create(dict(named.attributes)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


@dataclass(frozen=True, slots=True)
class Tracing:
    tracer: trace.Tracer

    @classmethod
    def start(cls) -> Tracing:
        install_provider()
        return cls(trace.get_tracer("tokendealer", __version__))

    def span(
        self, name: str, attributes: Mapping[str, str | bool | int | float]
    ) -> AbstractContextManager[Span]:
        return self.tracer.start_as_current_span(
            name, attributes={f"tokendealer.{key}": value for key, value in attributes.items()}
        )

    def request_span(
        self, scope: Mapping[str, Any], request_id: str
    ) -> AbstractContextManager[Span]:
        method = scope["method"]
        path = scope["path"]
        attributes: dict[str, str] = {
            "http.request.method": method if method in METHODS else "_OTHER",
            "url.path": path,
            "url.scheme": scope.get("scheme", "http"),
            "tokendealer.request_id": request_id,
        }
        if method not in METHODS:
            attributes["http.request.method_original"] = method
        name = attributes["http.request.method"]
        if path in FIXED_ROUTES:
            attributes["http.route"] = path
            name = f"{name} {path}"
        return self.tracer.start_as_current_span(
            name,
            context=propagate.extract(scope["headers"], getter=_GETTER),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )

    def answered(self, span: Span, status: int, client_id: str | None, error: str | None) -> None:
        if status:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                # Semantic conventions: a server span is an error for a 5xx only.
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        if client_id is not None:
            span.set_attribute("tokendealer.client_id", client_id)
        if error is not None:
            span.set_attribute("tokendealer.error", error)

    def name_by_route(self, app: Quart) -> None:
        """Name the server span of a request Quart routes after its route
        (``GET /admin/clients/<client_id>``), not its path: a bounded set of names."""

        @app.before_request
        async def _name_span() -> None:
            rule = request.url_rule
            if rule is not None and rule.rule not in FIXED_ROUTES:
                span = trace.get_current_span()
                method = request.method if request.method in METHODS else "_OTHER"
                span.update_name(f"{method} {rule.rule}")
                span.set_attribute("http.route", rule.rule)
