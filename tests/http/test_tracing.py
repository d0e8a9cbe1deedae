"""Tracing (issue 14, the ``tokendealer[otel]`` extra): with ``OTEL_EXPORTER_OTLP_ENDPOINT``
set, a server span per request, child of the incoming ``traceparent``, with ``sign``,
``store <operation>`` and ``rate_limit`` spans under it; the library's ``TokenClient``
and ``TokenVerifier`` send the caller's trace context; without the variable nothing of
OpenTelemetry is imported.

The SDK's tracer provider can be set once per process: the session's, with an in-memory
exporter (``exporter``), is set before any app of these tests is created, so ``configure``
keeps it rather than install its OTLP one. The OTLP export itself and the absence of any
import are tested in subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support.apps import add_client
from tests.support.environment import QuartClient
from tests.support.issuer import AUDIENCE, FakeIssuer
from tests.support.tokens import request_token
from tokendealer.http import create_app
from tokendealer.library.client import TokenClient
from tokendealer.library.verify import TokenVerifier
from tokendealer.observe import tracing
from tokendealer.service.dealer import Dealer
from tokendealer.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(name="exporter", scope="session")
def _exporter() -> InMemorySpanExporter:
    """The session's SDK tracer provider, exporting to memory (set once per process)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(name="spans")
def _spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture(name="traced")
async def _traced(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter
) -> AsyncIterator[QuartClient]:
    """A test client of an app created with the variable set (nothing listens there: the
    session's provider is kept, which exports to memory)."""
    monkeypatch.setenv(tracing.ENDPOINT_VARIABLE, "http://127.0.0.1:9")
    app = create_app(replace(settings, client_cache_ttl=0.0))
    assert tracing.enabled
    try:
        async with app.test_app():
            yield app.test_client()
    finally:
        monkeypatch.delenv(tracing.ENDPOINT_VARIABLE)
        assert not tracing.configure()


def _server_span(finished: Sequence[ReadableSpan]) -> ReadableSpan:
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    return server


def _descendants(finished: Sequence[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    """The spans under ``root`` (children, their children...)."""
    ids = {root.context.span_id}
    found: list[ReadableSpan] = []
    grew = True
    while grew:
        grew = False
        for span in finished:
            if span.parent is not None and span.parent.span_id in ids and span not in found:
                found.append(span)
                ids.add(span.context.span_id)
                grew = True
    return found


async def _issue(client: QuartClient, **headers: str) -> tuple[Any, str]:
    dealer: Dealer = client.app.extensions["tokendealer"]  # type: ignore[attr-defined]
    secret = await add_client(dealer, "svc")
    response = await request_token(client, "svc", secret, headers=headers)
    return response, secret


# -- the server's spans ---------------------------------------------------------------------


async def test_a_token_request_is_a_server_span_under_the_incoming_trace(
    traced: QuartClient, spans: InMemorySpanExporter
) -> None:
    dealer: Dealer = traced.app.extensions["tokendealer"]  # type: ignore[attr-defined]
    secret = await add_client(dealer, "svc")
    spans.clear()  # the registration's own store span
    response = await request_token(traced, "svc", secret, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    finished = spans.get_finished_spans()
    server = _server_span(finished)
    assert server.name == "POST /oauth/token"
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and server.parent.is_remote
    assert format(server.parent.span_id, "016x") == PARENT_ID
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == attributes["http.route"] == "/oauth/token"
    assert attributes["http.response.status_code"] == 200
    assert attributes["tokendealer.client_id"] == "svc"
    assert attributes["tokendealer.request_id"] == response.headers["X-Request-ID"]
    assert server.status.status_code is StatusCode.UNSET

    under = _descendants(finished, server)
    names = {span.name for span in under}
    assert {"sign", "rate_limit", "store get_client"} <= names, names
    # Everything the request did is in its trace, under its span.
    assert {span.context.trace_id for span in finished} == {server.context.trace_id}
    assert len(under) == len(finished) - 1
    [sign] = [span for span in under if span.name == "sign"]
    assert sign.parent is not None and sign.parent.span_id == server.context.span_id
    key = dealer.keyset.active()
    assert key is not None
    assert dict(sign.attributes or {}) == {"tokendealer.alg": key.alg, "tokendealer.kid": key.kid}


async def test_without_traceparent_each_request_starts_a_trace(
    traced: QuartClient, spans: InMemorySpanExporter
) -> None:
    first = await traced.get("/.well-known/jwks.json")
    second = await traced.get("/.well-known/jwks.json")
    assert first.status_code == second.status_code == 200
    servers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["GET /.well-known/jwks.json"] * 2
    assert all(s.parent is None for s in servers)
    assert servers[0].context.trace_id != servers[1].context.trace_id


async def test_a_refused_client_is_a_401_not_an_error(
    traced: QuartClient, spans: InMemorySpanExporter
) -> None:
    dealer: Dealer = traced.app.extensions["tokendealer"]  # type: ignore[attr-defined]
    await add_client(dealer, "svc")
    spans.clear()
    response = await request_token(traced, "svc", "not-the-secret")
    assert response.status_code == 401
    server = _server_span(spans.get_finished_spans())
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 401
    assert attributes["tokendealer.error"] == "invalid_client"
    assert "tokendealer.client_id" not in attributes
    assert server.status.status_code is StatusCode.UNSET


async def test_a_store_outage_is_an_error_span(
    traced: QuartClient, spans: InMemorySpanExporter
) -> None:
    dealer: Dealer = traced.app.extensions["tokendealer"]  # type: ignore[attr-defined]
    secret = await add_client(dealer, "svc")
    dealer.store.outage.failed("a test's outage")  # type: ignore[attr-defined]
    spans.clear()
    response = await request_token(traced, "svc", secret)
    assert response.status_code == 503
    finished = spans.get_finished_spans()
    server = _server_span(finished)
    assert dict(server.attributes or {})["http.response.status_code"] == 503
    assert server.status.status_code is StatusCode.ERROR
    failed = [s for s in _descendants(finished, server) if s.name.startswith("store ")]
    assert failed and all(s.status.status_code is StatusCode.ERROR for s in failed)
    assert any(e.name == "exception" for s in failed for e in s.events)


async def test_spans_are_named_by_route_never_by_an_arbitrary_path(
    traced: QuartClient, spans: InMemorySpanExporter
) -> None:
    assert (await traced.get("/healthz")).status_code == 200
    assert (await traced.get("/no/such/path/4711")).status_code == 404
    names = [s.name for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert names == ["GET /healthz", "GET"]


async def test_without_the_variable_nothing_is_traced(
    settings: Settings, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(tracing.ENDPOINT_VARIABLE, raising=False)
    app = create_app(settings)
    assert not tracing.enabled
    # The off path is one shared context manager, whatever the span.
    assert tracing.span("sign", alg="RS512") is tracing.span("rate_limit") is tracing.NO_SPAN
    async with app.test_app():
        response, _ = await _issue(app.test_client(), traceparent=TRACEPARENT)
    assert response.status_code == 200
    assert spans.get_finished_spans() == ()


# -- without the variable, or exporting for real: in a process of its own -----------------

_SERVE_ONE_TOKEN = """
import asyncio, json, sys, time
from pathlib import Path

from tokendealer.http import create_app
from tokendealer.protocol.clients import Client
from tokendealer.protocol.credentials import digest_secret
from tokendealer.settings import Settings

directory = Path(sys.argv[1])

async def main():
    settings = Settings(
        issuer="https://dealer.test",
        database_url=f"sqlite:///{directory / 'tokendealer.db'}",
        keys_dir=directory / "keys",
        access_log=False,
    )
    app = create_app(settings)
    async with app.test_app():
        dealer = app.extensions["tokendealer"]
        await dealer.store.add_client(
            Client(client_id="svc", secret_digest=digest_secret("s3cret-s3cret"),
                   created_at=time.time())
        )
        response = await app.test_client().post(
            "/oauth/token",
            form={"grant_type": "client_credentials", "client_id": "svc",
                  "client_secret": "s3cret-s3cret"},
        )
    loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    print(json.dumps({"status": response.status_code, "loaded": loaded}))

asyncio.run(main())
"""


def _serve_one_token(tmp_path: Path, **environment: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(environment)
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_ONE_TOKEN, str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_without_the_variable_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    result = _serve_one_token(tmp_path)
    assert result == {"status": 200, "loaded": []}


class _Recorder(ThreadingHTTPServer):
    """An HTTP server on a free port that records each request's path, headers and body
    and answers with ``answers[path]`` (JSON), else 200 and no body."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers = answers or {}
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = self.path.split("?")[0]
                recorder.requests.append((path, dict(self.headers.items()), body))
                payload = b""
                if path in recorder.answers:
                    payload = json.dumps(recorder.answers[path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> _Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def headers_of(self, path: str) -> list[dict[str, str]]:
        return [
            {k.lower(): v for k, v in headers.items()}
            for seen, headers, _ in self.requests
            if seen == path
        ]


def test_with_the_variable_spans_are_exported_over_otlp(tmp_path: Path) -> None:
    with _Recorder() as collector:
        result = _serve_one_token(
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.base,
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
        )
    assert result["status"] == 200 and "opentelemetry.sdk.trace" in result["loaded"]
    exported = [body for path, _, body in collector.requests if path == "/v1/traces"]
    assert exported, collector.requests
    names: set[str] = set()
    resources: list[dict[str, Any]] = []
    for body in exported:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resources.append(
                {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            )
            for scope_spans in resource_spans.scope_spans:
                names.update(span.name for span in scope_spans.spans)
    assert {"POST /oauth/token", "sign", "store get_client"} <= names, names
    assert all(r["service.name"] == "tokendealer" for r in resources)
    assert all(r["deployment.environment"] == "test" for r in resources)


# -- the library propagates the caller's context -----------------------------------------


def _traceparent(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


TOKEN_ANSWER = {"access_token": "a.b.c", "token_type": "Bearer", "expires_in": 300}


async def test_token_client_sends_the_callers_trace_context(
    exporter: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer(__name__)
    with _Recorder({"/oauth/token": TOKEN_ANSWER}) as dealer:
        client = TokenClient(f"{dealer.base}/oauth/token", "svc", "s3cret")
        with tracer.start_as_current_span("caller") as caller:
            await client.get_token()
            await client.get_token(force=True)
        client.get_token_sync(force=True)  # outside any span: nothing to propagate
        with tracer.start_as_current_span("sync caller") as sync_caller:
            client.get_token_sync(force=True)
        sent = dealer.headers_of("/oauth/token")
    assert [h.get("traceparent") for h in sent] == [
        _traceparent(caller),
        _traceparent(caller),
        None,
        _traceparent(sync_caller),
    ]
    # The other headers are the client's own, untouched.
    assert all(h["authorization"].startswith("Basic ") for h in sent)


async def test_token_verifier_sends_the_callers_trace_context(
    exporter: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer(__name__)
    with _Recorder() as issuer_server:
        issuer = FakeIssuer(issuer=issuer_server.base)
        issuer_server.answers.update(
            {
                "/.well-known/oauth-authorization-server": {
                    "issuer": issuer.issuer,
                    "jwks_uri": f"{issuer.issuer}/jwks",
                },
                "/jwks": issuer.jwks(),
            }
        )
        with tracer.start_as_current_span("verifying") as verifying:
            claims = await TokenVerifier(issuer.issuer, AUDIENCE).verify(issuer.token())
        with tracer.start_as_current_span("verifying sync") as verifying_sync:
            TokenVerifier(issuer.issuer, AUDIENCE).verify_sync(issuer.token())
        paths = [path for path, _, _ in issuer_server.requests]
        sent = [
            {k.lower(): v for k, v in headers.items()}.get("traceparent")
            for _, headers, _ in issuer_server.requests
        ]
    assert claims["aud"] == AUDIENCE
    assert paths == ["/.well-known/oauth-authorization-server", "/jwks"] * 2
    assert sent == [_traceparent(verifying)] * 2 + [_traceparent(verifying_sync)] * 2
