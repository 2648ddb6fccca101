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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .. import __version__
from ..backends.base import LanguageModel
from ..observability.metrics import exposition, record_sample
from ..samplers import route_of
from ..samplers.result import ProgressEvent
from .docs import install_docs
from .errors import APIError, install_error_handlers
from .executor import SamplingExecutor
from .middleware import install_middleware
from .planning import PlanService
from .sampling import (
    MAX_BATCH_PROMPTS,
    SamplingCall,
    chat_prompt_ids,
    chunk,
    completion_body,
    completion_prompts,
    final_choice,
    method_rules,
    progress_payload,
    resolve_call,
    run_call,
    run_metadata,
    usage,
)
from .schemas import (
    JSON_SCHEMA_SUBSET,
    SUBSET_MARK,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    PlanRequest,
    json_schema_subset_definition,
    subset_schema,
    tool_rule,
)
from .scope import DEADLINE_GRACE_S, RequestScope, job_result, status_for
from .settings import ServerSettings

log = logging.getLogger("powersampling.server")

_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "malformed or out-of-range request"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "request body too large"),
        (415, "the body is not declared JSON"),
        (429, "queue full"),
        (504, "deadline reached; 'partial' holds what was reached"),
    )
}


# one Server-Sent Event: its data is a JSON chunk, or [DONE] at the end
_SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def _ok(model: type) -> dict[str, Any]:
    return {
        "model": model,
        "description": "the completion; with stream: true, Server-Sent Events of chunks ending in data: [DONE]",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    }


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

    # FastAPI's own /docs and /redoc load their assets from a public CDN: never served (docs.py)
    app = FastAPI(
        title="powersampling",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
        description="OpenAI-compatible completions with exact power sampling, and an HTDAG planner.",
    )
    app.state.powersampling = state
    install_error_handlers(app)
    install_middleware(
        app, model_name=state.model_name, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes
    )

    _truthful_openapi(app, state)
    if settings.docs:
        install_docs(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.model_name, "queue": state.executor.stats()}

    @app.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus text format"}})
    async def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", responses=_ERRORS)
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": state.model_name, "object": "model", "created": state.started, "owned_by": "powersampling"}
            ],
        }

    @app.post("/v1/completions", responses={200: _ok(CompletionResponse), **_ERRORS})
    async def completions(body: CompletionRequest, request: Request):
        _check_model(state, body.model)
        prompts, texts = completion_prompts(body, state.model, settings)
        return await _serve_sampling(state, request, "completions", body, prompts, texts)

    @app.post("/v1/chat/completions", responses={200: _ok(ChatCompletionResponse), **_ERRORS})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        _check_model(state, body.model)
        ids = chat_prompt_ids(body, state.model, settings)
        return await _serve_sampling(state, request, "chat", body, [ids], [None])

    # the planner samples under a grammar: a model without one cannot plan, and the schema does not offer it
    @app.post(
        "/v1/plan",
        responses={**_ERRORS, 422: {"model": ErrorResponse, "description": "no plan produced"}},
        include_in_schema=_has_grammar(model),
    )
    async def plan(body: PlanRequest, request: Request):
        if body.model is not None:
            _check_model(state, body.model)
        return await _serve_plan(state, request, body)

    return app


def _truthful_openapi(app: FastAPI, state: ServerState) -> None:
    """The published schema as the server checks requests: integer bounds as integers (pydantic writes 2**63 as a
    float), ``model`` as the one served id, this server's caps and the model's vocabulary as bounds, the JSON Schema
    subset the grammar compiler reads, and per method the fields it takes (``method_rules``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _walk(schema, state.model_name)
            _server_bounds(schema["components"]["schemas"], state)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _server_bounds(components: dict[str, Any], state: ServerState) -> None:
    settings = state.settings
    components[JSON_SCHEMA_SUBSET] = json_schema_subset_definition()
    rules = method_rules(settings.default_method)
    grammar = _has_grammar(state.model)
    if not grammar:  # response_format, tool calls and plans over tools compile a grammar over the HF tokenizer
        components["ResponseFormat"]["properties"]["type"] = {"enum": ["text"]}
    components["ChatCompletionRequest"].setdefault("allOf", []).append(tool_rule(grammar))
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        request = components[name]
        properties = request["properties"]
        for field in ("max_tokens", "max_completion_tokens"):
            if field in properties:
                _cap(properties[field], settings.max_tokens_limit)
        _cap(properties["n"], settings.max_chains)
        request.setdefault("allOf", []).extend(rules)
    for name in ("PowerSamplingParams", "PlanPowerSamplingParams"):
        if name not in components:  # /v1/plan is not published for a model that cannot plan
            continue
        properties = components[name]["properties"]
        _cap(properties["n_mcmc"], settings.max_n_mcmc)
        _cap(properties["chains"], settings.max_chains)
        _cap(properties["n"], settings.max_chains)
    # token ids lie in the vocabulary, and a prompt of ids holds at most max_prompt_tokens of them
    token = {"type": "integer", "minimum": 0, "maximum": state.model.vocab_size - 1}
    ids = {"type": "array", "items": token, "minItems": 1, "maxItems": settings.max_prompt_tokens}
    text = {"type": "string", "minLength": 1}
    components["CompletionRequest"]["properties"]["prompt"] = {
        "anyOf": [
            text,
            ids,
            {"type": "array", "items": {"anyOf": [text, ids]}, "minItems": 1, "maxItems": MAX_BATCH_PROMPTS},
        ],
        "description": components["CompletionRequest"]["properties"]["prompt"].get("description", ""),
    }


def _has_grammar(model: LanguageModel) -> bool:
    tokenizer = getattr(model, "tokenizer", None)
    return hasattr(tokenizer, "token_pieces") or getattr(tokenizer, "hf_tokenizer", None) is not None


def _cap(node: dict[str, Any], cap: int) -> None:
    """Lower the maximum of the integer branch of a field's schema to ``cap``."""
    for branch in node.get("anyOf", [node]):
        if branch.get("type") == "integer":
            branch["maximum"] = min(branch.get("maximum", cap), cap)


def _walk(node: Any, model_name: str) -> None:
    if isinstance(node, dict):
        if SUBSET_MARK in node:
            node.update(subset_schema(node.pop(SUBSET_MARK)))
        if node.get("type") == "integer":
            # pydantic writes the bounds of a validated integer (schemas.Int) under their Python names
            for short, key in (
                ("ge", "minimum"),
                ("le", "maximum"),
                ("gt", "exclusiveMinimum"),
                ("lt", "exclusiveMaximum"),
            ):
                if short in node:
                    node[key] = node.pop(short)
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if isinstance(node.get(key), float) and node[key].is_integer():
                    node[key] = int(node[key])
        properties = node.get("properties")
        if isinstance(properties, dict) and ("messages" in properties or "prompt" in properties):
            model = properties.get("model")
            if isinstance(model, dict) and model.get("type") == "string":
                model["enum"] = [model_name]
        for value in node.values():
            _walk(value, model_name)
    elif isinstance(node, list):
        for value in node:
            _walk(value, model_name)


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {state.model_name!r}",
            param="model",
            code="model_not_found",
        )


async def _serve_sampling(
    state: ServerState, request: Request, kind: str, body: Any, prompts: list[list[int]], texts: list[str | None]
):
    scope = RequestScope(state, request, kind, "chat" if kind == "chat" else "text_completion")
    ids = max(prompts, key=len)  # the longest is checked against the context
    call = resolve_call(body, ids, state.settings, state.model)
    call.prompt_ids, call.prompts, call.prompt_texts = prompts[0], prompts, texts
    scope.begin(call.method, route_of(call.method), call=call, model=body.model)
    if state.settings.log_prompts:
        log.info(
            "%s id=%s prompt=%r",
            kind,
            call.request_id,
            state.model.tokenizer.decode(ids) if state.model.tokenizer else ids,
        )
    if body.stream:
        return _stream_response(
            scope, kind, call, include_usage=bool(body.stream_options and body.stream_options.include_usage)
        )
    with scope.recording():
        scope.submit(lambda job: run_call(state.model, state.model_name, call, job))
        runs, server_cut = await scope.wait()
        scope.result = runs[0].result
        for run in runs:
            if run.result is not None:
                record_sample(
                    run.result,
                    state.model_name,
                    kind,
                    prompt_tokens=len(call.prompts[run.prompt_index]),
                    count_request=False,
                )
        payload = completion_body(kind, state.model, state.model_name, call, runs, scope.job)
        scope.finish_reasons = [choice["finish_reason"] for choice in payload["choices"]]
        if server_cut:
            raise scope.deadline_error(payload)
        return JSONResponse(payload)


def _stream_response(scope: RequestScope, kind: str, call: SamplingCall, include_usage: bool) -> StreamingResponse:
    state = scope.state
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    forward = _throttled_forwarder(asyncio.get_running_loop(), events, state.settings.progress_interval_s)
    scope.submit(lambda job: run_call(state.model, state.model_name, call, job, forward))
    # A client that disconnects can end the response before the stream is closed (and records the scope), and the
    # metrics middleware records the request then: until the stream ends otherwise, it was cancelled.
    scope.labels["status"] = "cancelled"
    return StreamingResponse(
        _stream(scope, kind, call, events, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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


async def _stream(
    scope: RequestScope, kind: str, call: SamplingCall, events: asyncio.Queue, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE: a role chunk (chat), progress chunks while the chains run (``choices: []`` and a ``power_sampling``
    object), the whole text in one chunk at the end, an optional usage chunk, then ``[DONE]``. Errors after the
    headers went out travel as ``data: {"error": ...}``, which the OpenAI clients raise."""
    status = "cancelled"  # until the stream ends otherwise: the client left
    name, future, job = scope.state.model_name, scope.future, scope.job
    getter: asyncio.Future | None = None
    try:
        if kind == "chat":
            yield _sse(
                chunk(
                    kind,
                    name,
                    call,
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ],
                )
            )
        hard_stop = job.deadline_at + DEADLINE_GRACE_S
        while not future.done():
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait(
                {future, getter}, timeout=max(hard_stop - time.monotonic(), 0), return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                yield _sse(chunk(kind, name, call, [], power_sampling=getter.result()))
                continue
            getter.cancel()
            if not done:
                raise APIError(504, "the request overran its deadline", code="deadline_exceeded")
        while not events.empty():  # the last events arrive together with the result
            yield _sse(chunk(kind, name, call, [], power_sampling=events.get_nowait()))
        runs, server_cut = job_result(future)
        scope.result = runs[0].result
        for run in runs:
            if run.result is not None:
                record_sample(
                    run.result, name, kind, prompt_tokens=len(call.prompts[run.prompt_index]), count_request=False
                )
        if server_cut:
            raise scope.deadline_error(completion_body(kind, scope.state.model, name, call, runs, job))
        finals = [final_choice(kind, scope.state.model, call, i, run) for i, run in enumerate(runs)]
        scope.finish_reasons = [final["finish_reason"] for final in finals]
        for run, final in zip(runs, finals):
            yield _sse(chunk(kind, name, call, [final], power_sampling=run_metadata(run.result, job)))
        if include_usage:
            yield _sse(chunk(kind, name, call, [], usage=usage(call, runs)))
        yield _sse("[DONE]")
        status = "ok"
    except APIError as exc:
        status = status_for(exc)
        yield _sse(exc.body())
    finally:
        scope.close(status)
        # a client that leaves closes the stream while it waits here: the reader would wait on the queue forever
        if getter is not None and not getter.done():
            getter.cancel()
            await asyncio.wait({getter})


async def _serve_plan(state: ServerState, request: Request, body: PlanRequest):
    scope = RequestScope(state, request, "plan", "plan")
    run = state.planner.prepare(body, state.settings)
    scope.begin(run.method, run.requested_route, model=body.model)
    with scope.recording():
        scope.submit(run.execute)
        outcome = await scope.wait()
        scope.labels.update(route=outcome.route, method=outcome.method)
        state.planner.record(outcome, latency_s=scope.elapsed_s())
        scope.span.set_attribute("power_sampling.route", outcome.route)
        return JSONResponse(outcome.body)
