"""OpenTelemetry: one GenAI span per request, the sampler's spans under it, exporters only when OTEL_* asks."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from powersampling import FunctionLM
from powersampling.observability.tracing import configure_tracing_from_env
from powersampling.server import ServerSettings, create_app
from powersampling.server.background import BackgroundServer


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider is installed in this process")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _model() -> FunctionLM:
    def logits(prefix):
        if len(prefix) >= 8:
            row = np.full(6, -np.inf)
            row[0] = 0.0
            return row
        return np.random.default_rng([len(prefix), *prefix]).normal(size=6)

    return FunctionLM(6, 0, logits, name="toy-otel")


def test_request_span_follows_genai_conventions_and_parents_the_sampler(spans):
    spans.clear()
    with BackgroundServer(create_app(_model(), ServerSettings())) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        out = client.completions.create(
            model="toy-otel",
            prompt="1 2",
            max_tokens=5,
            extra_body={"power_sampling": {"n_mcmc": 2, "block_size": 3, "seed": 4}},
        )
    finished = spans.get_finished_spans()
    request = [s for s in finished if s.name == "text_completion toy-otel"]
    assert len(request) == 1
    attrs = request[0].attributes
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.request.model"] == "toy-otel"
    assert attrs["gen_ai.usage.input_tokens"] == out.usage.prompt_tokens == 2
    assert attrs["gen_ai.usage.output_tokens"] == out.usage.completion_tokens
    assert attrs["gen_ai.request.max_tokens"] == 5 and attrs["gen_ai.request.seed"] == 4
    assert list(attrs["gen_ai.response.finish_reasons"]) == [out.choices[0].finish_reason]
    sampler = [s for s in finished if s.name == "power_sampling mh"]
    assert len(sampler) == 1
    # the run happened on a worker thread, yet its span sits under the request's
    assert sampler[0].parent is not None and sampler[0].parent.span_id == request[0].context.span_id
    blocks = [s for s in finished if s.name == "power_sampling block"]
    assert blocks and all(b.context.trace_id == request[0].context.trace_id for b in blocks)


def test_tracing_is_off_by_default_and_refuses_unknown_exporters():
    assert configure_tracing_from_env({}) is None
    assert configure_tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert configure_tracing_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is None
    with pytest.raises(ValueError, match="unsupported OTEL_TRACES_EXPORTER"):
        configure_tracing_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_console_exporter_from_the_environment():
    code = (
        "from powersampling.observability.tracing import configure_tracing_from_env, span\n"
        "assert configure_tracing_from_env() == 'console'\n"
        "with span('chat toy', {'gen_ai.operation.name': 'chat'}):\n    pass\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "ps-test"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"name": "chat toy"' in out.stdout and "ps-test" in out.stdout
