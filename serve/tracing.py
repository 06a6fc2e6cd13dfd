"""OpenTelemetry traces, opt-in: one trace per request (HTTP or gRPC), continuing the client's
W3C ``traceparent`` when it sends one, with a child span per stage (``decode``, ``queue``,
``inference``, ``encode``), and one ``batch`` span per model run, linked to every request it
served. Attributes: model, version, batch size, provider.

Off (see ``tracing_wanted`` in ``app``), this module is never imported and the server holds
``None`` where the tracer would be: the cost of tracing off is one ``is None`` test per stage.
The stage spans are recorded after the fact, from the times the server measures anyway
(``time.monotonic()``), so tracing on adds few clock reads either.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode


class Tracer:
    """What the server records; built on any ``TracerProvider`` (tests pass one with an
    in-memory exporter)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("ln2d.serve")
        # monotonic seconds -> epoch nanoseconds, fixed once: spans share one clock.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def request(self, name: str, carrier: Mapping[str, str], attributes: dict) -> Span:
        """The server span of one request, a child of the client's ``traceparent``, if any."""
        parent = propagate.extract(carrier)
        return self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    def stage(self, parent: Span | None, name: str, start: float, end: float, **attributes):
        """A finished child span of ``parent`` from ``start`` to ``end`` (monotonic s)."""
        if parent is None:
            return
        context = trace.set_span_in_context(parent)
        span = self._tracer.start_span(
            name, context=context, start_time=self._ns(start), attributes=attributes
        )
        span.end(end_time=self._ns(end))

    def batch(self, parents: Iterable[Span | None], start: float, end: float, **attributes):
        """One model run, linked to the span of every request it served."""
        links = [Link(p.get_span_context()) for p in parents if p is not None]
        if not links:
            return
        span = self._tracer.start_span(
            "batch", links=links, start_time=self._ns(start), attributes=attributes
        )
        span.end(end_time=self._ns(end))

    @staticmethod
    def finish(span: Span, status: int | str, ok: bool) -> None:
        """End a request span; a server error (not bad input) marks it failed."""
        if not ok:
            span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end()

    @staticmethod
    def trace_id(span: Span) -> str:
        """The span's trace id as W3C writes it, for the access log."""
        return format(span.get_span_context().trace_id, "032x")

    def shutdown(self) -> None:
        self.provider.shutdown()

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset_ns


def from_settings(otlp_endpoint: str | None) -> Tracer:
    """Spans batched to an OTLP/HTTP receiver: ``otlp_endpoint`` (the traces URL), or where the
    standard OTEL_EXPORTER_OTLP_* variables say; the service name from OTEL_SERVICE_NAME
    (default ``ln2d``)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "ln2d")})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracer(provider)
