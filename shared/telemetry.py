"""OpenTelemetry traces: one trace per invocation across gateway, dispatcher and worker.

The W3C `traceparent` travels in the envelope (and the AMQP header of the same name), so
a caller's trace continues through pyfc. Export is chosen by `PYFC_OTEL_EXPORTER`:
`""` (off: the API's no-op tracer, near-free), `console` (stderr), or `jsonl:<dir>`
(one JSON span per line in `<dir>/<role>-<pid>.jsonl`, for local inspection and tests).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.errors import BadRequest

_propagator = TraceContextTextMapPropagator()


class JsonLinesExporter(SpanExporter):
    """Writes each finished span as one JSON line (OTel's own JSON form)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self._file.write(span.to_json(indent=None) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def setup(role: str, exporter: str) -> TracerProvider | None:
    """Install the tracer provider of a role process (called once from its `main`)."""
    if not exporter:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": f"pyfc-{role}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif exporter.startswith("jsonl:"):
        path = Path(exporter[len("jsonl:") :]) / f"{role}-{os.getpid()}.jsonl"
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    else:
        raise BadRequest(
            f"PYFC_OTEL_EXPORTER must be '', 'console' or 'jsonl:<dir>', not {exporter!r}"
        )
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("pyfc")


def context_from(traceparent: str) -> Context | None:
    """The remote parent carried by a `traceparent` value (None starts a new trace)."""
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def current_traceparent(fallback: str = "") -> str:
    """`traceparent` of the current span, for the next hop; `fallback` when not tracing."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", fallback)
