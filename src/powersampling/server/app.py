"""The OpenAI-compatible HTTP service: ``create_app(model, settings)``.

Endpoints: ``/v1/completions``, ``/v1/chat/completions`` (decoding method in the extra body field ``method``,
its parameters in ``power_sampling``), ``/v1/plan`` (the HTDAG planner), ``/v1/models``, ``/health``,
``/metrics``. Sampling runs on worker threads behind a bounded queue (``executor.py``); the event loop only
parses, validates, waits and streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import __version__
from ..backends.base import LanguageModel
from ..errors import PowerSamplingError
from ..observability.metrics import exposition, record_sample
from ..observability.tracing import tracer
from ..samplers import route_of
from ..samplers.result import ProgressEvent, SampleResult
from .errors import APIError, install_error_handlers
from .executor import Cancelled, DeadlineBeforeStart, Job, QueueFull, SamplingExecutor
from .middleware import BearerAuthMiddleware, BodyLimitMiddleware, RequestMetricsMiddleware
from .planning import PlanService
from .sampling import (
    SamplingCall, chat_prompt_ids, chunk, completion_body, completion_prompt_ids, final_choice, progress_payload,
    resolve_call, run_call, run_metadata, usage,
)
from .schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse, PlanRequest
from .settings import ServerSettings

log = logging.getLogger("powersampling.server")

# seconds past a request's deadline before the server stops waiting for a sampler that overran it
_DEADLINE_GRACE_S = 5.0
_ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "malformed or out-of-range request"), (401, "missing or wrong API key"), (404, "unknown model"),
    (413, "request body too large"), (429, "queue full"), (504, "deadline reached; 'partial' holds what was reached"),
)}


class ServerState:
    def __init__(self, model: LanguageModel, settings: ServerSettings) -> None:
        self.model = model
        self.settings = settings
        self.model_name = settings.model_name or model.name
        self.executor = SamplingExecutor(self.model_name, workers=settings.workers, max_queue=settings.max_queue)
        self.planner = PlanService(model, self.model_name)
        self.started = int(time.time())


def create_app(model: LanguageModel, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    state = ServerState(model, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.executor.shutdown()

    app = FastAPI(title="powersampling", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible completions with exact power sampling, and an HTDAG planner.")
    app.state.powersampling = state
    install_error_handlers(app)
    # the last one added is the outermost: metrics see every answer, including 401 and 413
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, api_key=settings.api_key)
    app.add_middleware(RequestMetricsMiddleware, model_name=state.model_name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.model_name, "queue": state.executor.stats()}

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", responses=_ERRORS)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": state.started, "owned_by": "powersampling"}]}

    @app.post("/v1/completions", responses=_ERRORS)
    async def completions(body: CompletionRequest, request: Request):
        _check_model(state, body.model)
        ids = completion_prompt_ids(body, state.model, settings)
        return await _serve_sampling(state, request, "completions", body, ids)

    @app.post("/v1/chat/completions", responses=_ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        _check_model(state, body.model)
        ids = chat_prompt_ids(body, state.model, settings)
        return await _serve_sampling(state, request, "chat", body, ids)

    @app.post("/v1/plan", responses={**_ERRORS, 422: {"model": ErrorResponse, "description": "no plan produced"}})
    async def plan(body: PlanRequest, request: Request):
        if body.model is not None:
            _check_model(state, body.model)
        return await _serve_plan(state, request, body)

    return app


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {state.model_name!r}",
                       param="model", code="model_not_found")


def _set_labels(request: Request, **labels: Any) -> None:
    request.state.metrics.update(labels)


def _start_span(operation: str, state: ServerState, body: Any, call: SamplingCall | None) -> trace.Span:
    """A GenAI span "{operation} {model}" for one request."""
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "powersampling",
        "gen_ai.request.model": getattr(body, "model", None) or state.model_name,
    }
    if call is not None:
        attributes.update({
            "gen_ai.request.max_tokens": call.params.get("max_new_tokens"),
            "gen_ai.request.temperature": call.params.get("temperature"),
            "gen_ai.request.seed": call.params.get("seed"),
            "power_sampling.method": call.method,
            "gen_ai.usage.input_tokens": len(call.prompt_ids),
        })
    return tracer().start_span(f"{operation} {state.model_name}", kind=SpanKind.SERVER,
                               attributes={k: v for k, v in attributes.items() if v is not None})


def _end_span(span: trace.Span, result: SampleResult | None, call: SamplingCall | None, error: str | None,
              model_name: str | None = None) -> None:
    if result is not None:
        md = result.metadata
        span.set_attributes({k: v for k, v in {
            "gen_ai.response.model": model_name,
            "gen_ai.response.id": call.request_id if call else None,
            "gen_ai.response.finish_reasons": ["stop" if md.get("stopped_by") == "eos" else "length"],
            "gen_ai.usage.output_tokens": len(result.token_ids),
            "power_sampling.tokens_generated": md.get("tokens_generated"),
            "power_sampling.acceptance_rate": md.get("acceptance_rate"),
            "power_sampling.cost_multiplier": md.get("cost_multiplier"),
            "power_sampling.stopped_by": md.get("stopped_by"),
        }.items() if v is not None})
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def _log_request(state: ServerState, endpoint: str, call: SamplingCall, status: str, result: SampleResult | None,
                 latency_s: float) -> None:
    line = (f"{endpoint} id={call.request_id} method={call.method} status={status} prompt_tokens={len(call.prompt_ids)}"
            f" completion_tokens={len(result.token_ids) if result else 0} latency_s={latency_s:.3f}")
    if state.settings.log_prompts and result is not None:
        line += f" completion={result.text!r}"
    log.info(line)


async def _serve_sampling(state: ServerState, request: Request, kind: str, body: Any, ids: list[int]):
    arrived = time.monotonic()
    call = resolve_call(body, ids, state.settings, state.model)
    _set_labels(request, method=call.method, route=route_of(call.method))
    if state.settings.log_prompts:
        log.info("%s id=%s prompt=%r", kind, call.request_id, state.model.tokenizer.decode(ids)
                 if state.model.tokenizer else ids)
    job = Job(deadline_at=arrived + state.settings.request_timeout_s)
    span = _start_span("chat" if kind == "chat" else "text_completion", state, body, call)
    stream = bool(body.stream)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any]] | None = asyncio.Queue() if stream else None
    forward = _throttled_forwarder(loop, events, state.settings.progress_interval_s) if stream else None
    try:
        with trace.use_span(span, end_on_exit=False):
            future = state.executor.submit(lambda j: run_call(state.model, state.model_name, call, j, forward), job)
    except QueueFull as exc:
        _end_span(span, None, call, "queue_full")
        raise APIError(429, f"server busy: {exc}", code="queue_full", headers={"Retry-After": "1"}) from None
    future.add_done_callback(_consume_exception)
    if stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(state, request, kind, call, job, future, events, span, include_usage, arrived),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    result = None
    status = "error"
    try:
        result, server_cut = await _await_job(request, future, job)
        record_sample(result, state.model_name, kind, prompt_tokens=len(ids), count_request=False)
        payload = completion_body(kind, state.model_name, call, result, job)
        if server_cut:
            status = "timeout"
            raise APIError(504, f"the request reached the server's deadline of {state.settings.request_timeout_s} s;"
                                " 'partial' holds what was reached", code="deadline_exceeded", partial=payload)
        status = "ok"
        return JSONResponse(payload)
    except APIError as exc:
        status = {504: "timeout", 499: "cancelled"}.get(exc.status, status)
        raise
    finally:
        _set_labels(request, status=status if status != "error" else None)
        _end_span(span, result, call, None if status == "ok" else status, state.model_name)
        _log_request(state, kind, call, status, result, time.monotonic() - arrived)


async def _await_job(request: Request, future: asyncio.Future, job: Job) -> Any:
    """The job's result; 499 when the client leaves, 504 when the deadline passes in the queue or is overrun."""
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({future, watcher}, timeout=max(job.remaining_s(), 0) + _DEADLINE_GRACE_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return _job_result(future)
        job.cancel.set()
        if watcher in done:
            raise APIError(499, "the client closed the request", code="client_closed_request")
        raise APIError(504, "the request overran its deadline", code="deadline_exceeded")
    finally:
        watcher.cancel()


def _job_result(future: asyncio.Future) -> Any:
    try:
        return future.result()
    except DeadlineBeforeStart:
        raise APIError(504, "the deadline passed while the request waited in the queue",
                       code="deadline_exceeded") from None
    except Cancelled:
        raise APIError(499, "the client closed the request", code="client_closed_request") from None
    except (PowerSamplingError, ValueError) as exc:
        raise APIError(400, str(exc), code="invalid_value") from None


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _consume_exception(future: asyncio.Future) -> None:
    """Abandoned jobs (client gone, deadline overrun) still finish; their errors are expected, not 'unretrieved'."""
    if not future.cancelled():
        future.exception()


def _throttled_forwarder(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, interval_s: float):
    """A progress sink for the worker thread: every block event, and MH-step events at most once per interval,
    handed to the event loop. Bounded: blocks are few, and steps are rate-limited."""
    last = [0.0]

    def forward(event: ProgressEvent) -> None:
        if event.kind == "done":
            return
        now = time.monotonic()
        if event.kind != "block" and now - last[0] < interval_s:
            return
        last[0] = now
        loop.call_soon_threadsafe(events.put_nowait, progress_payload(event))

    return forward


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _stream(state: ServerState, request: Request, kind: str, call: SamplingCall, job: Job,
                  future: asyncio.Future, events: asyncio.Queue, span: trace.Span, include_usage: bool,
                  arrived: float) -> AsyncIterator[bytes]:
    """SSE: a role chunk (chat), progress chunks while the chains run (``choices: []`` and a ``power_sampling``
    object), the whole text in one chunk at the end, an optional usage chunk, then ``[DONE]``. Errors after the
    headers went out travel as ``data: {"error": ...}``, which the OpenAI clients raise."""
    status, result = "cancelled", None
    name = state.model_name
    # A client that disconnects can end the response before this generator is closed (and its finally runs), and
    # the metrics middleware records the request then: until the stream ends otherwise, it was cancelled.
    _set_labels(request, status=status)
    try:
        if kind == "chat":
            yield _sse(chunk(kind, name, call, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None, "logprobs": None}]))
        hard_stop = job.deadline_at + _DEADLINE_GRACE_S
        while not future.done():
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({future, getter}, timeout=max(hard_stop - time.monotonic(), 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield _sse(chunk(kind, name, call, [], power_sampling=getter.result()))
                continue
            getter.cancel()
            if not done:
                raise APIError(504, "the request overran its deadline", code="deadline_exceeded")
        while not events.empty():  # the last events arrive together with the result
            yield _sse(chunk(kind, name, call, [], power_sampling=events.get_nowait()))
        result, server_cut = _job_result(future)
        record_sample(result, name, kind, prompt_tokens=len(call.prompt_ids), count_request=False)
        if server_cut:
            partial = completion_body(kind, name, call, result, job)
            raise APIError(504, f"the request reached the server's deadline of {state.settings.request_timeout_s} s;"
                                " 'partial' holds what was reached", code="deadline_exceeded", partial=partial)
        yield _sse(chunk(kind, name, call, [final_choice(kind, result)], power_sampling=run_metadata(result, job)))
        if include_usage:
            yield _sse(chunk(kind, name, call, [], usage=usage(call, result)))
        yield _sse("[DONE]")
        status = "ok"
    except APIError as exc:
        status = {504: "timeout", 499: "cancelled"}.get(exc.status, "invalid" if exc.status < 500 else "error")
        yield _sse(exc.body())
    finally:
        if not future.done():
            job.cancel.set()
        _set_labels(request, status=status)
        _end_span(span, result, call, None if status == "ok" else status, state.model_name)
        _log_request(state, kind, call, status, result, time.monotonic() - arrived)


async def _serve_plan(state: ServerState, request: Request, body: PlanRequest):
    arrived = time.monotonic()
    run = state.planner.prepare(body, state.settings)
    _set_labels(request, method=run.method, route=run.requested_route)
    job = Job(deadline_at=arrived + state.settings.request_timeout_s)
    span = _start_span("plan", state, body, None)
    error: str | None = "error"
    try:
        with trace.use_span(span, end_on_exit=False):
            future = state.executor.submit(run.execute, job)
        future.add_done_callback(_consume_exception)
        outcome = await _await_job(request, future, job)
        _set_labels(request, route=outcome.route, method=outcome.method)
        state.planner.record(outcome, latency_s=time.monotonic() - arrived)
        span.set_attribute("power_sampling.route", outcome.route)
        error = None
        return JSONResponse(outcome.body)
    except QueueFull as exc:
        error = "rejected"
        raise APIError(429, f"server busy: {exc}", code="queue_full", headers={"Retry-After": "1"}) from None
    except APIError as exc:
        error = {504: "timeout", 499: "cancelled"}.get(exc.status, f"http_{exc.status}")
        if exc.status in (499, 504):
            _set_labels(request, status=error)
        raise
    finally:
        _end_span(span, None, None, error)
