"""From an OpenAI-style request to a sampler run and back: parameters, prompt ids, the run on a worker, the
response body."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import LanguageModel, check_context_length
from ..backends.constraints import StopStringConstraint
from ..errors import ContextLengthError, PowerSamplingError
from ..observability.metrics import StepTimer
from ..samplers import build_sampler, validate_params
from ..samplers.result import ProgressEvent, SampleResult
from .errors import APIError
from .executor import Job
from .schemas import ChatCompletionRequest, CompletionRequest, _SamplingFields
from .scope import check_limits
from .settings import ServerSettings

# power_sampling fields that map onto sampler parameters under the same name
_SAME_NAME = (
    "alpha",
    "n_mcmc",
    "block_size",
    "proposal_temperature",
    "scan",
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
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def resolve_call(
    body: _SamplingFields, prompt_ids: list[int], settings: ServerSettings, model: LanguageModel
) -> SamplingCall:
    """Sampler method and parameters for ``body``; every problem is a 400 naming the parameter."""
    problem = body.unsupported()
    if problem:
        raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
    method = body.method if body.method is not None else settings.default_method
    ps = body.power_sampling
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens or settings.default_max_tokens
    check_limits(ps, settings, max_tokens=max_tokens)
    param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
    try:
        check_context_length(model, len(prompt_ids), max_tokens)
    except ContextLengthError as exc:
        raise APIError(
            400, f"{exc}; shorten the {param} or lower max_tokens", param=param, code="context_length_exceeded"
        ) from None
    params: dict[str, Any] = {"max_new_tokens": max_tokens}
    seed = ps.seed if ps is not None and ps.seed is not None else body.seed
    if seed is not None:
        params["seed"] = seed
    if method in ("sample", "best-of-n") and body.temperature is not None:
        params["temperature"] = body.temperature
    if ps is not None:
        given = ps.model_dump(exclude_none=True)
        for name in _SAME_NAME:
            if name in given:
                params[name] = given[name]
        if ps.chains is not None:
            if method not in ("power", "smc"):
                raise APIError(
                    400,
                    f"power_sampling.chains applies to methods power and smc, not {method!r}",
                    param="power_sampling.chains",
                    code="invalid_value",
                )
            params["n_chains" if method == "power" else "n_particles"] = ps.chains
        if ps.n is not None:
            params["n"] = ps.n
        if ps.answer_regex is not None:
            if ps.select != "majority":
                raise APIError(
                    400,
                    "power_sampling.answer_regex is used by select=majority only",
                    param="power_sampling.answer_regex",
                    code="invalid_value",
                )
            params["answer_extractor"] = regex_extractor(ps.answer_regex)
    try:
        validate_params(method, strict=True, **params)
    except (PowerSamplingError, ValueError) as exc:
        raise APIError(400, str(exc), param="power_sampling", code="invalid_value") from None
    return SamplingCall(
        method, params, prompt_ids, ps.deadline_s if ps is not None else None, stop_strings(body, model)
    )


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


def regex_extractor(pattern: str) -> Callable[[str], str | None]:
    """An answer extractor from a client's regular expression: the last match, or its first group."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise APIError(
            400,
            f"power_sampling.answer_regex is not a valid regular expression: {exc}",
            param="power_sampling.answer_regex",
            code="invalid_value",
        ) from None

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if compiled.groups else last.group(0)

    return extract


def completion_prompt_ids(body: CompletionRequest, model: LanguageModel, settings: ServerSettings) -> list[int]:
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        bad = [t for t in prompt if not 0 <= t < model.vocab_size]
        if bad:
            raise APIError(
                400,
                f"token id {bad[0]} is outside the vocabulary [0, {model.vocab_size})",
                param="prompt",
                code="invalid_value",
            )
        ids = list(prompt)
    else:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(
                    400,
                    "batched prompts are not supported: send one prompt per request",
                    param="prompt",
                    code="invalid_value",
                )
            prompt = prompt[0]
        if not prompt.strip():
            raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
        ids = _encode(model, lambda tok: tok.encode(prompt), "prompt")
    return _check_length(ids, settings, "prompt")


def chat_prompt_ids(body: ChatCompletionRequest, model: LanguageModel, settings: ServerSettings) -> list[int]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    if not any(m["content"].strip() for m in messages):
        raise APIError(400, "all messages are empty", param="messages", code="invalid_value")
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


def run_call(
    model: LanguageModel,
    model_name: str,
    call: SamplingCall,
    job: Job,
    forward: Callable[[ProgressEvent], None] | None = None,
) -> tuple[SampleResult, bool]:
    """Runs in a worker thread. Returns the result and whether the server's deadline (not the client's own
    budget) cut it short."""
    remaining = job.remaining_s()
    budget = call.client_budget_s
    deadline_s = min(remaining, budget) if budget is not None else remaining
    server_cut = budget is None or remaining < budget
    sampler = build_sampler(call.method, model, strict=True, **call.params, deadline_s=max(deadline_s, 1e-3))
    timer = StepTimer(model_name, call.method, forward)

    def progress(event: ProgressEvent) -> None:
        job.check_cancelled()  # raising here unwinds the sampler between steps
        timer(event)

    job.check_cancelled()
    result = sampler.sample(call.prompt_ids, constraint=call.stop, progress=progress)
    return result, server_cut and result.metadata.get("stopped_by") == "deadline"


def finish_reason(result: SampleResult) -> str:
    """``stop`` for a stop token or a stop string, ``length`` for the cap (and for a deadline)."""
    return "stop" if result.metadata.get("stopped_by") == "eos" else "length"


def returned_text(call: SamplingCall, result: SampleResult) -> str:
    """The completion's text as OpenAI returns it: without the stop string that ended it (or anything the last
    token carried past it)."""
    if call.stop is None:
        return result.text
    return call.stop.truncate(result.text)[0]


def usage(call: SamplingCall, result: SampleResult) -> dict[str, int]:
    completion = len(result.token_ids)
    return {
        "prompt_tokens": len(call.prompt_ids),
        "completion_tokens": completion,
        "total_tokens": len(call.prompt_ids) + completion,
    }


def run_metadata(result: SampleResult, job: Job) -> dict[str, Any]:
    out = {k: _json_safe(v) for k, v in result.metadata.items()}
    if job.started_at is not None:
        out["queue_ms"] = round((job.started_at - job.submitted_at) * 1000.0, 3)
    return out


def completion_body(kind: str, model_name: str, call: SamplingCall, result: SampleResult, job: Job) -> dict[str, Any]:
    """The non-streamed response: ``kind`` is 'completions' or 'chat'."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason(result), "logprobs": None}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": returned_text(call, result)}
        prefix, obj = "chatcmpl", "chat.completion"
    else:
        choice["text"] = returned_text(call, result)
        prefix, obj = "cmpl", "text_completion"
    return {
        "id": f"{prefix}-{call.request_id}",
        "object": obj,
        "created": call.created,
        "model": model_name,
        "choices": [choice],
        "usage": usage(call, result),
        "power_sampling": run_metadata(result, job),
    }


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


def final_choice(kind: str, call: SamplingCall, result: SampleResult) -> dict[str, Any]:
    text = returned_text(call, result)
    if kind == "chat":
        return {"index": 0, "delta": {"content": text}, "finish_reason": finish_reason(result), "logprobs": None}
    return {"index": 0, "text": text, "finish_reason": finish_reason(result), "logprobs": None}


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
