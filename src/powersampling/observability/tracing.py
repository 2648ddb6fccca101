"""OpenTelemetry spans for requests, blocks and MH steps (GenAI semantic conventions where they apply).

Tracing is off unless the standard OTEL environment variables ask for an exporter; without a configured SDK the
OpenTelemetry API hands out non-recording spans, so instrumented code costs next to nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from opentelemetry import trace

_TRACER_NAME = "powersampling"


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


@contextlib.contextmanager
def span(name: str, attributes: dict[str, Any] | None = None) -> Iterator[trace.Span]:
    """A span named ``name``; attributes with value None are dropped (OTel rejects them)."""
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer().start_as_current_span(name, attributes=attrs) as s:
        yield s
