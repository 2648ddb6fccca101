"""From an OpenAI-style request to a sampler run and back: parameters, prompt ids, the run on a worker, the
response body."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import LanguageModel, TokenConstraint, check_context_length
from ..backends.constraints import JsonSchemaConstraint, StopStringConstraint
from ..errors import ContextLengthError, PowerSamplingError
from ..observability.metrics import StepTimer
from ..planner.turns import call_parts
from ..samplers import build_sampler, method_names, validate_params
from ..samplers.params import KnobError, knob_params
from ..samplers.registry import CANDIDATES_METHOD, ZERO_TEMPERATURE_METHOD, method_spec, one_sample_temperature
from ..samplers.result import ProgressEvent, SampleResult
from .errors import APIError
from .executor import Job
from .logprobs import Scored, chat_logprobs, completion_logprobs, score, top_dict
from .schemas import ChatCompletionRequest, CompletionRequest, PowerSamplingParams, _SamplingFields, implies
from .scope import check_limits
from .settings import ServerSettings
from .tools import ToolTurn, chat_messages, read_turn, tool_grammar, tool_turn

# power_sampling fields that are sampler parameters of the same name, passed on as they are
_SAMPLER_PARAMETER_FIELDS = (
    "alpha",
    "n_mcmc",
    "block_size",
    "proposal_temperature",
    "scan",
    "entropy_floor",
    "stop_after_rejections",
    "defensive_weight",
    "defensive_temperature",
    "top_k",
    "rollouts",
    "horizon",
    "jackknife",
    "entropy_threshold",
    "select",
)


@dataclass
class SamplingCall:
    """A validated request, ready to run."""

    method: str
    params: dict[str, Any]
    prompt_ids: list[int]
    client_budget_s: float | None
    stop: StopStringConstraint | None = None
    grammar: JsonSchemaConstraint | None = None  # response_format's JSON schema, or the tools grammar
    tools: ToolTurn | None = None  # the reply is read back into tool_calls
    prompts: list[list[int]] = field(default_factory=list)  # every prompt of a batch; [prompt_ids] by default
    prompt_texts: list[str | None] = field(default_factory=list)  # as sent, for echo (None: token ids)
    n: int = 1
    echo: bool = False
    logprobs: int | None = None  # None: no log-probabilities; k: each token's log p and the k most likely
    generate: bool = True  # False for max_tokens 0 (echo scoring only)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.prompts:
            self.prompts = [self.prompt_ids]
        if not self.prompt_texts:
            self.prompt_texts = [None] * len(self.prompts)

    @property
    def constraint(self) -> TokenConstraint | None:
        """What the sampler runs under: the grammar, ended early by a stop string when both are asked for."""
        if self.stop is not None and self.grammar is not None:
            return StopStringConstraint(self.stop.tokenizer, self.stop.stops, within=self.grammar)
        return self.stop or self.grammar

    def run_seed(self, sample_index: int) -> int | None:
        """Sample j of every prompt: the request's seed for j = 0 (so n=1 and n>1 agree on the first choice), a
        seed derived from it for the others."""
        seed = self.params.get("seed")
        if seed is None or sample_index == 0:
            return seed
        return int(np.random.SeedSequence([int(seed), sample_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def resolve_call(
    body: _SamplingFields, prompt_ids: list[int], settings: ServerSettings, model: LanguageModel
) -> SamplingCall:
    """Sampler method and parameters for ``body``; every problem is a 400 naming the parameter."""
    problem = body.unsupported()
    if problem:
        raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
    method = body.method if body.method is not None else settings.default_method
    ps = body.power_sampling
    max_tokens = getattr(body, "max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = body.max_tokens if body.max_tokens is not None else settings.default_max_tokens
    echo = bool(getattr(body, "echo", False))
    if max_tokens == 0 and not echo:
        raise APIError(
            400, "max_tokens 0 needs echo: true (scoring the prompt)", param="max_tokens", code="invalid_value"
        )
    n = body.n or 1
    if n > settings.max_chains:
        raise APIError(400, f"n is at most {settings.max_chains} on this server", param="n", code="invalid_value")
    check_limits(ps, settings, max_tokens=max_tokens)
    if body.max_tokens is not None and body.max_tokens != max_tokens:  # max_completion_tokens wins, both are capped
        check_limits(None, settings, max_tokens=body.max_tokens)
    param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
    try:
        check_context_length(model, len(prompt_ids), max_tokens)
    except ContextLengthError as exc:
        raise APIError(
            400, f"{exc}; shorten the {param} or lower max_tokens", param=param, code="context_length_exceeded"
        ) from None
    params: dict[str, Any] = {"max_new_tokens": max(max_tokens, 1)}
    seed = ps.seed if ps is not None and ps.seed is not None else body.seed
    if seed is not None:
        params["seed"] = seed
    if body.method is None and body.temperature == 0:
        method = ZERO_TEMPERATURE_METHOD  # what lm-eval and most frameworks mean by temperature 0
    given = ps.model_dump(exclude_none=True) if ps is not None else {}
    params.update({name: given[name] for name in _SAMPLER_PARAMETER_FIELDS if name in given})
    try:
        params.update(
            knob_params(
                method,
                chains=given.get("chains"),
                temperature=body.temperature,
                proposal_temperature=given.get("proposal_temperature"),
                n=given.get("n"),
                select=given.get("select"),
                answer_regex=given.get("answer_regex"),
                parts_extractor=call_parts,  # coverage compares the reply's tool calls (none: no answer)
            )
        )
    except KnobError as exc:
        param = exc.knob if exc.knob == "temperature" else f"power_sampling.{exc.knob}"
        raise APIError(400, exc.for_param(param), param=param, code="invalid_value") from None
    try:
        validate_params(method, strict=True, **params)
    except (PowerSamplingError, ValueError) as exc:
        raise APIError(400, str(exc), param="power_sampling", code="invalid_value") from None
    turn = tool_turn(body) if isinstance(body, ChatCompletionRequest) else None
    return SamplingCall(
        method,
        params,
        prompt_ids,
        ps.deadline_s if ps is not None else None,
        stop_strings(body, model),
        grammar=tool_grammar(turn, model) if turn is not None else response_grammar(body, model),
        tools=turn,
        n=n,
        echo=echo,
        logprobs=requested_logprobs(body),
        generate=max_tokens > 0,
    )


def _sampler_name(field_name: str, method: str) -> str | None:
    """The sampler parameter a ``power_sampling`` field sets under ``method`` (None: none, the field is refused)."""
    if field_name == "chains":
        return method_spec(method).chains_field
    if field_name == "answer_regex":
        return "select"
    return field_name


def method_rules(default_method: str) -> list[dict[str, Any]]:
    """What ``resolve_call`` and the method's config refuse, as JSON Schema ``if``/``then`` clauses for the published
    request schemas: per method, the ``power_sampling`` fields it takes and what ``temperature`` may be. The method
    is ``method``, else greedy for ``temperature: 0``, else the server's default."""
    unset = {"properties": {"method": {"type": "null"}}}
    zero = {"required": ["temperature"], "properties": {"temperature": {"const": 0}}}
    branches: list[dict[str, Any]] = []
    for method in method_names():
        spec = method_spec(method)
        known = spec.config.parameter_names()
        fields = [f for f in PowerSamplingParams.model_fields if f != "deadline_s"]
        refused = [f for f in fields if _sampler_name(f, method) not in known]
        power_sampling: dict[str, Any] = {"properties": {f: {"type": "null"} for f in refused}}
        checks: list[dict[str, Any]] = []
        if "answer_regex" not in refused:
            checks.append(
                implies("answer_regex", None, {"required": ["select"], "properties": {"select": {"const": "majority"}}})
            )
        if "stop_after_rejections" in known:  # it ends a sequential scan early (the default scan is sorted)
            scan = {"required": ["scan"], "properties": {"scan": {"enum": ["random", "entropy"]}}}
            checks.append(implies("stop_after_rejections", None, scan))
        if checks:
            power_sampling["allOf"] = checks
        # object and number keywords hold for null as they are: no anyOf with null needed (the generator copes
        # with few anyOf branches only)
        then: dict[str, Any] = {"properties": {"power_sampling": power_sampling}}
        if spec.temperature == "zero":
            then["properties"]["temperature"] = {"enum": [None, 0]}
        elif spec.temperature == "proposal":
            # temperature is the proposal temperature: > 0, and not sent twice
            no_second = {"properties": {"proposal_temperature": {"type": "null"}}}
            then["properties"]["temperature"] = {"exclusiveMinimum": 0}
            then["allOf"] = [implies("temperature", None, {"properties": {"power_sampling": no_second}})]
        elif method == CANDIDATES_METHOD:  # temperature 0 would draw n identical greedy candidates
            one = {
                "required": ["power_sampling"],
                "properties": {
                    "power_sampling": {"type": "object", "required": ["n"], "properties": {"n": {"const": 1}}}
                },
            }
            then["allOf"] = [implies("temperature", {"const": 0}, one)]
        elif spec.temperature != "sampling":
            then["properties"]["temperature"] = {"type": "null"}
        conditions = [{"required": ["method"], "properties": {"method": {"const": method}}}]
        if method == ZERO_TEMPERATURE_METHOD:
            conditions.append({"allOf": [unset, zero]})
        if method == default_method:
            conditions.append({"allOf": [unset, {"not": zero}]})
        branches.append({"allOf": [{"anyOf": conditions}, then]})
    # the conditions partition the requests (method is one of the names, or unset), so one branch applies
    return [{"anyOf": branches}]


def requested_logprobs(body: _SamplingFields) -> int | None:
    """How many alternatives per token the client wants, or None for no log-probabilities (chat: ``logprobs``
    true and ``top_logprobs``; completions: the integer ``logprobs``)."""
    if isinstance(body, ChatCompletionRequest):
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs


def response_grammar(body: _SamplingFields, model: LanguageModel) -> JsonSchemaConstraint | None:
    """``response_format`` as a JSON-schema grammar (xgrammar, as the planner uses): every method samples under its
    mask (see docs/server.md for the distribution each then draws from)."""
    fmt = body.response_format
    if fmt is not None and (fmt.type == "json_schema") != (fmt.json_schema is not None):
        raise APIError(
            400,
            "response_format json_schema goes with type json_schema only",
            param="response_format",
            code="invalid_value",
        )
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        schema: dict[str, Any] = {"type": "object"}
    else:
        schema = fmt.json_schema.schema_
    try:
        return JsonSchemaConstraint.for_model(model, schema)
    except (PowerSamplingError, ValueError) as exc:
        raise APIError(400, str(exc), param="response_format", code="invalid_value") from None


def stop_strings(body: _SamplingFields, model: LanguageModel) -> StopStringConstraint | None:
    """The request's ``stop`` as a constraint every method honours: a completion ends at the first stop string,
    as at a stop token, so the target is p^alpha over completions ending there."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if not stops:
        return None
    if model.tokenizer is None:
        raise APIError(
            400, f"model {model.name!r} has no tokenizer to read stop strings with", param="stop", code="unsupported"
        )
    return StopStringConstraint(model.tokenizer, stops)


MAX_BATCH_PROMPTS = 64


def completion_prompts(
    body: CompletionRequest, model: LanguageModel, settings: ServerSettings
) -> tuple[list[list[int]], list[str | None]]:
    """The prompts of a completions request (a string, token ids, or a batch of either) as token ids, and their
    texts as sent (None for token ids)."""
    prompt = body.prompt
    if isinstance(prompt, str) or (prompt and all(isinstance(p, int) for p in prompt)):
        batch = [prompt]
    else:
        batch = list(prompt)
    if not batch:
        raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
    if len(batch) > MAX_BATCH_PROMPTS:
        raise APIError(400, f"at most {MAX_BATCH_PROMPTS} prompts in one request", param="prompt", code="invalid_value")
    ids, texts = [], []
    for one in batch:
        if isinstance(one, str):
            if not one:
                raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
            ids.append(
                _check_length(_encode(model, lambda tok, text=one: tok.encode(text), "prompt"), settings, "prompt")
            )
            texts.append(one)
            continue
        if not one:
            raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
        bad = [t for t in one if not 0 <= t < model.vocab_size]
        if bad:
            raise APIError(
                400,
                f"token id {bad[0]} is outside the vocabulary [0, {model.vocab_size})",
                param="prompt",
                code="invalid_value",
            )
        ids.append(_check_length(list(one), settings, "prompt"))
        texts.append(None)
    return ids, texts


def chat_prompt_ids(body: ChatCompletionRequest, model: LanguageModel, settings: ServerSettings) -> list[int]:
    # empty messages are rendered as they are: the chat template's role markers are the prompt
    messages = chat_messages(body, tool_turn(body))
    return _check_length(_encode(model, lambda tok: tok.chat_prompt(messages), "messages"), settings, "messages")


def _encode(model: LanguageModel, fn: Callable[[Any], Sequence[int]], param: str) -> list[int]:
    if model.tokenizer is None:
        raise APIError(
            400, f"model {model.name!r} has no tokenizer: send token ids as the prompt", param=param, code="unsupported"
        )
    try:
        ids = [int(t) for t in fn(model.tokenizer)]
    except (ValueError, TypeError, KeyError) as exc:
        raise APIError(400, f"could not tokenize the {param}: {exc}", param=param, code="invalid_value") from None
    except Exception as exc:  # tokenizers raise their own types (e.g. no chat template)
        raise APIError(
            400, f"could not tokenize the {param}: {type(exc).__name__}: {exc}", param=param, code="invalid_value"
        ) from None
    if not ids:
        raise APIError(400, f"the {param} tokenizes to nothing", param=param, code="invalid_value")
    return ids


def _check_length(ids: list[int], settings: ServerSettings, param: str) -> list[int]:
    if len(ids) > settings.max_prompt_tokens:
        raise APIError(
            400,
            f"the {param} has {len(ids)} tokens; this server accepts at most {settings.max_prompt_tokens}",
            param=param,
            code="context_length_exceeded",
        )
    return ids


@dataclass
class Run:
    """One choice: which prompt it continues, the sampler's result (None when nothing was generated: max_tokens
    0), the returned tokens (the stop token and the tokens past the text's end left out) and, when asked for, their
    scores (the echoed prompt's first)."""

    prompt_index: int
    result: SampleResult | None
    tokens: list[int]
    text: str
    scored: Scored | None = None


def run_call(
    model: LanguageModel,
    model_name: str,
    call: SamplingCall,
    job: Job,
    forward: Callable[[ProgressEvent], None] | None = None,
) -> tuple[list[Run], bool]:
    """Runs in a worker thread: every prompt's n samples. Returns the runs and whether the server's deadline (not
    the client's own budget) cut one short.

    The n samples are decoded as batched rows where the method allows: power sampling's as n chains of one run
    (choice i is chain i's final state) unless the request already asks for chains; sample's and low-temp's as the
    n candidates of one batched draw at the method's temperature; greedy's (and temperature 0's) once, as it is
    deterministic. Other methods, and any with ``select``, run n times one after another."""
    runs, server_cut = [], False
    several = call.generate and call.n > 1 and call.params.get("select") in (None, "default")
    spec = method_spec(call.method)
    chains = several and spec.independent_chains and spec.chains_field not in call.params
    temperature = None  # of the methods that draw from one token law per step: greedy (0), sample, low-temp
    if several and not chains:
        temperature = 0.0 if spec.temperature == "zero" else one_sample_temperature(call.method, **call.params)
    rows = temperature is not None and temperature > 0
    once = temperature == 0
    for index, prompt in enumerate(call.prompts):
        if chains:
            result, cut = _sample(
                model, model_name, call, job, prompt, call.run_seed(0), forward, **{spec.chains_field: call.n}
            )
            server_cut = server_cut or cut
            runs.extend(_finish_run(model, call, index, prompt, one) for one in chain_results(model, call, result))
            continue
        if rows:
            # the candidates of one best-of-n draw at the method's temperature are n independent samples of it
            params = {k: v for k, v in call.params.items() if k in ("max_new_tokens", "seed")}
            draw = SamplingCall(
                CANDIDATES_METHOD, {**params, "n": call.n, "temperature": temperature}, prompt, call.client_budget_s
            )
            draw.stop, draw.grammar = call.stop, call.grammar
            result, cut = _sample(model, model_name, draw, job, prompt, call.run_seed(0), forward)
            server_cut = server_cut or cut
            runs.extend(_finish_run(model, call, index, prompt, one) for one in candidate_results(model, call, result))
            continue
        if once:
            result, cut = _sample(model, model_name, call, job, prompt, call.run_seed(0), forward)
            server_cut = server_cut or cut
            runs.extend([_finish_run(model, call, index, prompt, result)] * call.n)
            continue
        for j in range(call.n if call.generate else 1):
            result = None
            if call.generate:
                result, cut = _sample(model, model_name, call, job, prompt, call.run_seed(j), forward)
                server_cut = server_cut or cut
            runs.append(_finish_run(model, call, index, prompt, result))
    return runs, server_cut


def chain_results(model: LanguageModel, call: SamplingCall, result: SampleResult) -> list[SampleResult]:
    """One result per chain of a power run: the chain's final state with the run's metadata (its own length and
    ending); per-token log p are not kept per chain, so log-probabilities are scored again."""
    out = []
    constraint = call.constraint
    for completion in result.samples:
        tokens = list(completion.token_ids)
        stopped = bool(tokens) and (
            tokens[-1] in model.stop_token_ids or (constraint is not None and constraint.start(tokens).is_finished())
        )
        metadata = dict(result.metadata, final_tokens=len(tokens), complete=completion.complete)
        if metadata.get("stopped_by") != "deadline":
            metadata["stopped_by"] = "eos" if stopped else "length"
        out.append(SampleResult(tokens, completion.text, np.zeros(0), result.method, metadata, [completion]))
    return out


def candidate_results(model: LanguageModel, call: SamplingCall, result: SampleResult) -> list[SampleResult]:
    """One result per candidate of a batched draw, labelled with the requested method (its temperature, tokens and
    ending its own); log-probabilities are scored again when asked for, as for chains."""
    out = []
    constraint = call.constraint
    shared = {
        k: result.metadata[k] for k in ("seed", "latency_ms", "backend_calls", "constrained") if k in result.metadata
    }
    for completion in result.samples:
        tokens = list(completion.token_ids)
        stopped = bool(tokens) and (
            tokens[-1] in model.stop_token_ids or (constraint is not None and constraint.start(tokens).is_finished())
        )
        metadata = {
            "method": call.method,
            "temperature": result.metadata.get("temperature"),
            "batched_rows": len(result.samples),
            "tokens_generated": len(tokens),
            "final_tokens": len(tokens),
            "complete": completion.complete,
            "stopped_by": "eos" if stopped else "length",
            **shared,
        }
        if result.metadata.get("stopped_by") == "deadline" and not completion.complete:
            metadata["stopped_by"] = "deadline"
        out.append(SampleResult(tokens, completion.text, np.zeros(0), call.method, metadata, [completion]))
    return out


def _sample(
    model,
    model_name,
    call: SamplingCall,
    job: Job,
    prompt: list[int],
    seed: int | None,
    forward,
    **extra: Any,
):
    remaining = job.remaining_s()
    budget = call.client_budget_s
    deadline_s = min(remaining, budget) if budget is not None else remaining
    server_cut = budget is None or remaining < budget
    params = {**call.params, **extra}
    if seed is not None:
        params["seed"] = seed
        # A seeded run starts from empty caches: a prefix cached by an earlier request was computed in another batch
        # layout (other rows, other padding), whose logits differ in the last bits, and one flipped draw changes
        # the whole text. From empty caches the run is a function of the request and the seed alone.
        reset = getattr(model, "clear_cache", None)
        if reset is not None:
            reset()
    sampler = build_sampler(call.method, model, strict=True, **params, deadline_s=max(deadline_s, 1e-3))
    timer = StepTimer(model_name, call.method, forward)

    def progress(event: ProgressEvent) -> None:
        job.check_cancelled()  # raising here unwinds the sampler between steps
        timer(event)

    job.check_cancelled()
    result = sampler.sample(prompt, constraint=call.constraint, progress=progress)
    return result, server_cut and result.metadata.get("stopped_by") == "deadline"


def _finish_run(model: LanguageModel, call: SamplingCall, index: int, prompt: list[int], result) -> Run:
    tokens, text = ([], "") if result is None else returned(call, model, result)
    scored = None
    decoded_logp = result is not None and len(result.logprobs) >= len(tokens)
    if call.logprobs == 0 and not call.echo and decoded_logp and call.grammar is None:
        # no mask was applied while decoding: the decode's own log p are the base model's, no second pass needed
        none = np.zeros((len(tokens), 0))
        scored = Scored(np.asarray(result.logprobs[: len(tokens)], dtype=np.float64), none.astype(np.int64), none)
    elif call.logprobs is not None:
        start = 1 if call.echo else len(prompt)
        scored = score(model, prompt + tokens, start, call.logprobs)
    return Run(index, result, tokens, text, scored)


def returned(call: SamplingCall, model: LanguageModel, result: SampleResult) -> tuple[list[int], str]:
    """The tokens and text OpenAI returns: no stop token, and under ``stop`` the text before the stop string (the
    tokens that start before it)."""
    tokens = list(result.token_ids)
    if tokens and tokens[-1] in model.stop_token_ids:
        tokens = tokens[:-1]
    if call.stop is None:
        return tokens, result.text
    text, found = call.stop.truncate(result.text)
    if found and model.tokenizer is not None:
        while tokens and len(model.tokenizer.decode(tokens[:-1])) >= len(text):
            tokens.pop()
    return tokens, text


def finish_reason(result: SampleResult | None) -> str:
    """``stop`` for a stop token or a stop string, ``length`` for the cap (and for a deadline)."""
    return "stop" if result is not None and result.metadata.get("stopped_by") == "eos" else "length"


def usage(call: SamplingCall, runs: Sequence[Run]) -> dict[str, int]:
    prompt = sum(len(p) for p in call.prompts)
    completion = sum(len(r.result.token_ids) for r in runs if r.result is not None)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def run_metadata(result: SampleResult | None, job: Job) -> dict[str, Any]:
    out = {k: _json_safe(v) for k, v in result.metadata.items()} if result is not None else {"method": None}
    if job.started_at is not None:
        out["queue_ms"] = round((job.started_at - job.submitted_at) * 1000.0, 3)
    return out


def _choice(kind: str, model: LanguageModel, call: SamplingCall, i: int, run: Run) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": i, "finish_reason": finish_reason(run.result), "logprobs": None}
    if kind == "chat":
        choice["message"], reason = assistant_message(call, i, run)
        choice["finish_reason"] = reason or choice["finish_reason"]
        if run.scored is not None:
            choice["logprobs"] = chat_logprobs(model, run.tokens, run.scored)
        return choice
    prompt = call.prompts[run.prompt_index]
    prefix = ""
    if call.echo:
        sent = call.prompt_texts[run.prompt_index]
        prefix = sent if sent is not None else (model.tokenizer.decode(prompt) if model.tokenizer else "")
    choice["text"] = prefix + run.text
    if run.scored is not None:
        shown = (prompt if call.echo else []) + run.tokens
        values: list[float | None] = [None] if call.echo else []
        tops: list[dict | None] = [None] if call.echo else []
        for j in range(len(run.scored.logp)):
            values.append(float(run.scored.logp[j]))
            tops.append(top_dict(model, run.scored.top_ids[j], run.scored.top_logp[j]))
        choice["logprobs"] = completion_logprobs(model, shown, values, tops)
    return choice


def assistant_message(call: SamplingCall, i: int, run: Run) -> tuple[dict[str, Any], str | None]:
    """Choice i's message, and ``tool_calls`` as its finish reason when it calls tools (None: the run's own)."""
    if call.tools is None or run.result is None:
        return {"role": "assistant", "content": run.text}, None
    content, calls = read_turn(run.text, id_prefix=f"call_{call.request_id[:12]}_{i}_")
    if calls:
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": run.text if content is None else content}, None


def completion_body(
    kind: str, model: LanguageModel, model_name: str, call: SamplingCall, runs: Sequence[Run], job: Job
) -> dict[str, Any]:
    """The non-streamed response: ``kind`` is 'completions' or 'chat'. ``power_sampling`` holds the first
    choice's run metadata; with several choices, ``power_sampling.choices`` holds each one's."""
    prefix, obj = ("chatcmpl", "chat.completion") if kind == "chat" else ("cmpl", "text_completion")
    body = {
        "id": f"{prefix}-{call.request_id}",
        "object": obj,
        "created": call.created,
        "model": model_name,
        "choices": [_choice(kind, model, call, i, run) for i, run in enumerate(runs)],
        "usage": usage(call, runs),
        "power_sampling": run_metadata(runs[0].result, job),
    }
    if len(runs) > 1:
        body["power_sampling"]["choices"] = [run_metadata(run.result, job) for run in runs]
    return body


def chunk(
    kind: str, model_name: str, call: SamplingCall, choices: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    prefix, obj = ("chatcmpl", "chat.completion.chunk") if kind == "chat" else ("cmpl", "text_completion")
    return {
        "id": f"{prefix}-{call.request_id}",
        "object": obj,
        "created": call.created,
        "model": model_name,
        "choices": choices,
        **extra,
    }


def final_choice(kind: str, model: LanguageModel, call: SamplingCall, i: int, run: Run) -> dict[str, Any]:
    """Choice i of the streamed reply, in one chunk (MCMC may rewrite any token until the end): the choice of the
    non-streamed body, its message as the ``delta``."""
    choice = _choice(kind, model, call, i, run)
    if kind == "chat":
        delta = choice.pop("message")
        delta.pop("role")
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": j, **c} for j, c in enumerate(delta["tool_calls"])]
        choice["delta"] = delta
    return choice


def progress_payload(event: ProgressEvent) -> dict[str, Any]:
    out = {
        "event": "progress",
        "kind": event.kind,
        "block": event.block,
        "blocks_total": event.blocks_total,
        "step": event.step,
        "steps_total": event.steps_total,
        "accepted": event.accepted,
        "proposed": event.proposed,
        "acceptance_rate": event.acceptance_rate,
        "tokens_generated": event.tokens_generated,
    }
    out.update({k: _json_safe(v) for k, v in event.extra.items()})
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
