"""OpenTelemetry spans for requests, blocks and MH steps (GenAI semantic conventions where they apply).

Tracing is off unless the standard OTEL environment variables ask for an exporter (or the application set up
OpenTelemetry itself). OpenTelemetry is imported only then: until something has imported it, no tracer provider
can exist and every span would be a non-recording one, so ``span`` hands out a no-op context instead and
``import powersampling`` stays light.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry import trace

_TRACER_NAME = "powersampling"
_NO_SPAN = contextlib.nullcontext()


def tracer() -> trace.Tracer:
    from opentelemetry import trace

    return trace.get_tracer(_TRACER_NAME)


def span(name: str, attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A span named ``name`` (attributes with value None are dropped: OTel rejects them); a no-op while nothing in
    the process uses OpenTelemetry."""
    if "opentelemetry.trace" not in sys.modules:
        return _NO_SPAN
    return _recording_span(name, attributes)


@contextlib.contextmanager
def _recording_span(name: str, attributes: dict[str, Any] | None) -> Iterator[Any]:
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer().start_as_current_span(name, attributes=attrs) as s:
        yield s


_configured = False


def configure_tracing_from_env(environ: dict[str, str] | None = None) -> str | None:
    """Install an SDK tracer provider when the standard OTEL variables ask for one; returns the exporter name
    used, or None when tracing stays off (the default).

    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it off; ``OTEL_TRACES_EXPORTER=console``
    prints spans; ``otlp`` (or only ``OTEL_EXPORTER_OTLP_ENDPOINT`` set) sends them over OTLP, configured by the
    exporter's own ``OTEL_EXPORTER_OTLP_*`` variables (needs ``pip install opentelemetry-exporter-otlp``).
    The service name comes from ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` (default ``powersampling``).
    Called once per process; later calls return the same answer without installing anything again.
    """
    import logging
    import os

    global _configured
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    unknown = set(names) - {"otlp", "console"}
    if unknown:
        raise ValueError(
            f"unsupported OTEL_TRACES_EXPORTER value(s) {', '.join(sorted(unknown))}; use otlp, console or none"
        )
    if _configured:
        return ",".join(names)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": "powersampling"})
    provider = TracerProvider(resource=resource)
    for name in names:
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
            continue
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
    trace.set_tracer_provider(provider)
    _configured = True
    logging.getLogger("powersampling.tracing").info("OpenTelemetry tracing on (exporter: %s)", ",".join(names))
    return ",".join(names)


def _otlp_exporter(env):
    """The OTLP span exporter for ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` (http/protobuf by default, or grpc)."""
    import importlib

    protocol = (
        (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
        .strip()
        .lower()
    )
    module = "grpc" if protocol == "grpc" else "http"
    try:
        exporter = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{module}.trace_exporter")
    except ImportError as exc:
        raise ValueError(
            f"OTLP over {protocol} needs the exporter package: pip install opentelemetry-exporter-otlp"
        ) from exc
    return exporter.OTLPSpanExporter()
