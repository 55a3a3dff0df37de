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
from contextlib import AbstractContextManager, nullcontext
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
# Set once by `setup` in a role's main. When off, `span()` costs nothing on the hot path
# (even the API's no-op tracer attaches and detaches contexts on every hop).
_enabled = False


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
    global _enabled
    _enabled = True
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("pyfc")


def enabled() -> bool:
    return _enabled


def span(
    name: str, traceparent: str, kind: trace.SpanKind, attributes: dict[str, str | bool]
) -> AbstractContextManager[trace.Span | None]:
    """A span continuing `traceparent`, or a free null context when tracing is off."""
    if not _enabled:
        return nullcontext()
    return tracer().start_as_current_span(
        name, context=context_from(traceparent), kind=kind, attributes=attributes
    )


def context_from(traceparent: str) -> Context | None:
    """The remote parent carried by a `traceparent` value (None starts a new trace)."""
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def current_traceparent(fallback: str = "") -> str:
    """`traceparent` of the current span, for the next hop; `fallback` when not tracing."""
    if not _enabled:
        return fallback
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", fallback)
