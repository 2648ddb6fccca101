"""Prometheus metrics: one module-level registry, every metric object created exactly once at import.

Planners, servers and samplers all record into the same objects, so creating any number of them in one process
never registers a metric twice (metrics built per instance would fail on the second instance's registration).
Names follow vLLM's ``/metrics`` style: counters end in ``_total``, latencies are histograms in seconds, every
series carries ``model_name``.

Label values used by the dashboard and the alert rules (ops/):

* ``endpoint``: ``completions``, ``chat``, ``plan``, or ``library`` for calls made in-process;
* ``method``: the decoding method (a name from the sampler registry) or ``none`` when no sampler ran;
* ``route``: the planner route a method runs under (``samplers.registry.route_of``: ``baseline`` for plain
  sampling, greedy and low temperature, the method's own name for power, smc, best-of-n, ...), ``mixed`` for a
  plan whose calls fell back part of the way; callers pass it (this module depends on no other part of the
  package, so it does not look methods up);
* ``status``: one of ``STATUSES``; ``error`` and ``timeout`` count against the error-rate rollback trigger,
  client mistakes (``invalid``, ``unauthorized``) and load shedding (``rejected``) do not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

PREFIX = "powersampling"
STATUSES = ("ok", "invalid", "unauthorized", "not_found", "rejected", "timeout", "cancelled", "error")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes and friends: the load test reads them
PlatformCollector(registry=REGISTRY)

REQUESTS = Counter(
    f"{PREFIX}_requests_total",
    "Requests handled, by endpoint, decoding method, route and outcome.",
    ["model_name", "endpoint", "method", "route", "status"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    f"{PREFIX}_fallbacks_total",
    "Requests that asked for power sampling and were served by the baseline instead, by reason.",
    ["model_name", "endpoint", "reason"],
    registry=REGISTRY,
)
TOKENS = Counter(
    f"{PREFIX}_tokens_total",
    "Tokens by kind: prompt (read), proposal (every token the backend decoded, MH proposals and discarded "
    "chains included), final (tokens in the returned completions).",
    ["model_name", "endpoint", "method", "kind"],
    registry=REGISTRY,
)
ACCEPTANCE_RATE = Histogram(
    f"{PREFIX}_acceptance_rate",
    "Metropolis-Hastings acceptance rate of one power-sampling run (accepted / proposed steps).",
    ["model_name", "endpoint"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
    registry=REGISTRY,
)
COST_MULTIPLIER = Histogram(
    f"{PREFIX}_cost_multiplier",
    "Tokens decoded per token returned in one run (measured: proposal tokens / final tokens).",
    ["model_name", "endpoint", "method"],
    buckets=(1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0),
    registry=REGISTRY,
)
E2E_LATENCY = Histogram(
    f"{PREFIX}_e2e_request_latency_seconds",
    "End-to-end latency of a request, queueing included.",
    ["model_name", "endpoint", "method", "route"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0),
    registry=REGISTRY,
)
STEP_LATENCY = Histogram(
    f"{PREFIX}_step_latency_seconds",
    "Time between consecutive sampler progress events: one MH step, one block or one candidate.",
    ["model_name", "method", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
QUEUE_TIME = Histogram(
    f"{PREFIX}_queue_time_seconds",
    "Time a request waited for a sampling worker.",
    ["model_name"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
PLAN_QUALITY = Histogram(
    f"{PREFIX}_plan_quality_score",
    "Quality score of a task plan (0 to 1, from the planner's evaluator), by route.",
    ["model_name", "route"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    f"{PREFIX}_queue_depth",
    "Requests admitted and waiting for a sampling worker.",
    ["model_name"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
RUNNING = Gauge(
    f"{PREFIX}_requests_running",
    "Requests a sampling worker is running now.",
    ["model_name"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

TOOL_CALLS = Counter(
    f"{PREFIX}_tool_calls_total",
    "Tool calls run by the plan executor, by tool and outcome (ok, error, timeout).",
    ["model_name", "tool", "status"],
    registry=REGISTRY,
)
TOOL_CALL_DURATION = Histogram(
    f"{PREFIX}_tool_call_duration_seconds",
    "Wall time of one tool call run by the plan executor, whatever its outcome.",
    ["model_name", "tool"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)


def status_of_http(code: int) -> str:
    """The ``status`` label for an HTTP status code."""
    if code < 400:
        return "ok"
    return {
        401: "unauthorized",
        403: "unauthorized",
        404: "not_found",
        429: "rejected",
        499: "cancelled",
        504: "timeout",
    }.get(code, "invalid" if code < 500 else "error")


def record_request(
    *,
    model_name: str,
    endpoint: str,
    method: str = "none",
    route: str | None = None,
    status: str = "ok",
    latency_s: float | None = None,
) -> None:
    """Count one request (any outcome) and observe its end-to-end latency when given. ``route`` None: the request
    ran no power route (``baseline``)."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
    route = route or "baseline"
    REQUESTS.labels(model_name, endpoint, method, route, status).inc()
    if latency_s is not None and math.isfinite(latency_s) and latency_s >= 0:
        E2E_LATENCY.labels(model_name, endpoint, method, route).observe(latency_s)


def record_sample(
    result: Any,
    model_name: str,
    endpoint: str = "library",
    *,
    route: str | None = None,
    prompt_tokens: int | None = None,
    status: str = "ok",
    latency_s: float | None = None,
    count_request: bool = True,
) -> None:
    """Record one finished sampler run (a ``SampleResult``): tokens, acceptance, cost multiplier and, unless
    ``count_request`` is False, the request itself with its latency (default: the run's measured latency), on
    ``route`` (default: the route the sampler reported in its metadata)."""
    md: Mapping[str, Any] = getattr(result, "metadata", None) or {}
    method = str(getattr(result, "method", None) or md.get("method") or "unknown")
    if prompt_tokens:
        TOKENS.labels(model_name, endpoint, method, "prompt").inc(prompt_tokens)
    proposal = _number(md.get("tokens_generated"))
    final = _number(md.get("final_tokens"))
    if final is None:
        final = float(len(getattr(result, "token_ids", ()) or ()))
    if proposal is not None:
        TOKENS.labels(model_name, endpoint, method, "proposal").inc(proposal)
    TOKENS.labels(model_name, endpoint, method, "final").inc(final)
    if _number(md.get("total_iterations")):  # a run with Metropolis-Hastings steps
        rate = _number(md.get("acceptance_rate"))
        if rate is not None:
            ACCEPTANCE_RATE.labels(model_name, endpoint).observe(rate)
    cost = _number(md.get("cost_multiplier"))
    if cost is not None and cost > 0:
        COST_MULTIPLIER.labels(model_name, endpoint, method).observe(cost)
    if count_request:
        if latency_s is None and _number(md.get("latency_ms")) is not None:
            latency_s = float(md["latency_ms"]) / 1000.0
        record_request(
            model_name=model_name,
            endpoint=endpoint,
            method=method,
            route=route or md.get("route"),
            status=status,
            latency_s=latency_s,
        )


def record_plan(
    *,
    model_name: str,
    route: str,
    quality_score: float | None = None,
    fallback_reason: str | None = None,
    method: str = "none",
    endpoint: str = "library",
    status: str = "ok",
    latency_s: float | None = None,
    count_request: bool = True,
) -> None:
    """Record one planner run. ``route`` is the route that produced the plan (after any fallback); a fallback
    to the baseline is counted under its reason. ``count_request=False`` when the caller counts the request itself
    (the server's middleware does)."""
    if quality_score is not None and math.isfinite(quality_score):
        PLAN_QUALITY.labels(model_name, route).observe(quality_score)
    if fallback_reason:
        record_fallback(model_name=model_name, endpoint=endpoint, reason=fallback_reason)
    if count_request:
        record_request(
            model_name=model_name, endpoint=endpoint, method=method, route=route, status=status, latency_s=latency_s
        )


def record_fallback(*, model_name: str, endpoint: str, reason: str) -> None:
    FALLBACKS.labels(model_name, endpoint, reason).inc()


class StepTimer:
    """A sampler ``progress`` callback that observes the time between consecutive progress events as per-step
    latency, then forwards the event to ``forward`` (if any). One instance per run; it runs in the sampler's
    thread."""

    def __init__(self, model_name: str, method: str, forward: Callable[[Any], None] | None = None) -> None:
        self.model_name, self.method, self.forward = model_name, method, forward
        self._last = time.perf_counter()

    def __call__(self, event: Any) -> None:
        now = time.perf_counter()
        kind = getattr(event, "kind", "step")
        if kind != "done":
            STEP_LATENCY.labels(self.model_name, self.method, kind).observe(now - self._last)
        self._last = now
        if self.forward is not None:
            self.forward(event)


class QueueGauges:
    """Queue depth and running count for one model name. Gauges move by inc/dec, never set, so several servers
    or executors serving the same model name in one process add up instead of overwriting each other."""

    def __init__(self, model_name: str) -> None:
        self._depth = QUEUE_DEPTH.labels(model_name)
        self._running = RUNNING.labels(model_name)

    def enqueue(self) -> None:
        self._depth.inc()

    def leave_queue(self, started: bool) -> None:
        self._depth.dec()
        if started:
            self._running.inc()

    def finish(self) -> None:
        self._running.dec()


def record_tool_call(*, model_name: str, tool: str, status: str, duration_s: float) -> None:
    """Count one executed tool call and observe its wall time."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
    TOOL_CALLS.labels(model_name, tool, status).inc()
    TOOL_CALL_DURATION.labels(model_name, tool).observe(max(duration_s, 0.0))


def exposition() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
