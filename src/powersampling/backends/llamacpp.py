"""llama.cpp backend (llama-cpp-python, GGUF files): full-vocabulary logits, our own sampling loop.

Why not ``Llama.generate`` / ``create_completion``: their sampler chain truncates by default (top_k 40, top_p 0.95,
min_p 0.05), which silently changes both the proposal and the target. Here llama.cpp only evaluates tokens; every
draw, log p and log q is computed in numpy (float64) from the same full logit vector.

The KV cache holds one sequence. Each row starts from the longest common token prefix with what the cache holds
(the cache is trimmed there, nothing before the cut is re-encoded), and rows are visited in the order that
re-encodes the fewest tokens: MH proposals drawn from one state at several cuts then cost only their own suffixes.
Path-independent log p: llama.cpp computes a one-token decode and a multi-token batch through different
quantized-matmul paths, so the same token after the same prefix gets a log p that depends on how the prefix was
fed (measured on the embedded Q4_1 model: mean 0.05, max 0.19 nats per token). MH needs p(x) to be one function
of the tokens, so by default every token is fed alone (``batch_prefill=False``): the logits are then a pure
function of the token sequence, and a trimmed cache gives bit-identical logits to a fresh evaluation. Prompts
prefill slower that way (once per prompt, the cache keeps it); ``batch_prefill=True`` trades that exactness for speed.

Logits are requested for the last fed token only (``logits_all=False``): keeping a full-vocabulary row for every
context position costs n_ctx x vocab x 4 bytes (1.6 GB at 8192 x 49152); when a prefix is entirely cached, its
last token is fed again instead (one decode step).
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelLoadError
from .base import Continuation, ContinuationRequest

DEFAULT_N_CTX = 4096


class LlamaCppTokenizer:
    """Tokenizer adapter over llama.cpp's own vocabulary and the GGUF's chat template.

    ``hf_tokenizer`` (for grammar compilers such as xgrammar) is built from the same GGUF file by transformers on
    first use, which takes a few seconds.
    """

    def __init__(self, llama, gguf_path: str | None = None) -> None:
        self._llama = llama
        self._gguf_path = gguf_path
        self._hf_tokenizer = None
        self.chat_template: str | None = llama.metadata.get("tokenizer.chat_template")
        self.has_chat_template = self.chat_template is not None
        self._template = None

    def encode(self, text: str) -> list[int]:
        # add_bos follows the GGUF's tokenizer.ggml.add_bos_token, as transformers' add_special_tokens does
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._llama.detokenize([int(t) for t in token_ids], special=False).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if not self.has_chat_template:
            raise ValueError("this GGUF file has no chat template; use a raw prompt (chat=False)")
        text = self._render_chat(messages)
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise ValueError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        vocab = self._llama
        piece = lambda token: vocab.detokenize([token], special=True).decode("utf-8", errors="replace")  # noqa: E731
        return self._template.render(
            messages=list(messages), add_generation_prompt=True,
            bos_token=piece(vocab.token_bos()) if vocab.token_bos() >= 0 else "",
            eos_token=piece(vocab.token_eos()) if vocab.token_eos() >= 0 else "",
        )

    @property
    def hf_tokenizer(self):
        if self._hf_tokenizer is None:
            if self._gguf_path is None:
                raise AttributeError("hf_tokenizer needs the GGUF file path")
            from transformers import AutoTokenizer

            path = Path(self._gguf_path)
            self._hf_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return self._hf_tokenizer


class LlamaCppLM:
    """A GGUF model run by llama.cpp implementing the ``LanguageModel`` protocol.

    Rows are decoded one after another on a single KV sequence; see the module docstring for the cache policy.
    """

    def __init__(self, llama, *, name: str, gguf_path: str | None = None, batch_prefill: bool = False) -> None:
        self.llama = llama
        self.batch_prefill = batch_prefill
        self.name = name
        self.vocab_size = int(llama.n_vocab())
        self.n_ctx = int(llama.n_ctx())
        self.tokenizer = LlamaCppTokenizer(llama, gguf_path)
        self.stop_token_ids = _end_of_generation_tokens(llama)
        self._cached: list[int] = []  # token ids whose keys/values the KV cache holds, in order
        self.prefill_tokens = 0
        self.reused_tokens = 0
        self.decode_calls = 0

    # the protocol

    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        for r in requests:
            if len(r.prefix) == 0:
                raise ValueError("a request needs at least one prefix token (the prompt)")
            if len(r.prefix) + r.max_new_tokens > self.n_ctx:
                raise ValueError(
                    f"prefix ({len(r.prefix)} tokens) + max_new_tokens ({r.max_new_tokens}) exceeds the llama.cpp "
                    f"context of {self.n_ctx} tokens; load the model with a larger n_ctx"
                )
        results: list[Continuation | None] = [None] * len(requests)
        for index in self._visit_order(requests):
            results[index] = self._decode_row(requests[index], temperature, rng, deadline)
        return results  # type: ignore[return-value]

    def clear_cache(self) -> None:
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()
        self._cached = []

    def next_token_logits(self, prefix: Sequence[int]) -> np.ndarray:
        """Raw float64 logits for the token after ``prefix`` (through the same cache as sampling)."""
        return self._feed([int(t) for t in prefix])

    # internals

    def _visit_order(self, requests: Sequence[ContinuationRequest]) -> list[int]:
        """Greedy order: next the row that re-encodes the fewest tokens given what the cache will hold, longer
        prefixes first on ties (a shorter shared prefix can then still be cut out of the cache)."""
        remaining = list(range(len(requests)))
        prefixes = [np.asarray(r.prefix, dtype=np.int64) for r in requests]
        cached = np.asarray(self._cached, dtype=np.int64)
        order = []
        while remaining:
            best = min(remaining, key=lambda i: (len(prefixes[i]) - _common_length(cached, prefixes[i]),
                                                 -len(prefixes[i])))
            order.append(best)
            remaining.remove(best)
            # the row leaves its prefix plus (unknown) new tokens in the cache; the prefix is what later rows share
            cached = prefixes[best]
        return order

    def _feed(self, prefix: list[int]) -> np.ndarray:
        """Bring the cache to exactly ``prefix`` and return the logits after its last token."""
        common = _common_length(np.asarray(self._cached, dtype=np.int64), np.asarray(prefix, dtype=np.int64))
        common = min(common, len(prefix) - 1)  # the last token is fed again to get its logits
        self.reused_tokens += common
        self.prefill_tokens += len(prefix) - common
        self.llama.n_tokens = common  # eval() removes cache cells from n_tokens on
        self._cached = prefix[:common]
        return self._eval(prefix[common:])

    def _eval(self, tokens: list[int]) -> np.ndarray:
        if self.batch_prefill:
            self.llama.eval(tokens)
            self.decode_calls += 1
        else:
            for token in tokens:
                self.llama.eval([token])
            self.decode_calls += len(tokens)
        self._cached.extend(tokens)
        pointer = self.llama._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.vocab_size,)).astype(np.float64)

    def _decode_row(self, request: ContinuationRequest, temperature: float, rng: np.random.Generator,
                    deadline: float | None) -> Continuation:
        prefix = [int(t) for t in request.prefix]
        state = request.constraint.start(prefix[request.generated_start:]) if request.constraint else None
        tokens: list[int] = []
        logps: list[float] = []
        logqs: list[float] = []
        stopped = interrupted = False
        if request.max_new_tokens <= 0:
            return Continuation([], np.zeros(0), np.zeros(0))
        logits = self._feed(prefix)
        while True:
            if state is not None:
                logits = _apply_mask(logits, state.allowed_tokens(), self.vocab_size)
            token, logp, logq = draw_token(logits, temperature, rng)
            tokens.append(token)
            logps.append(logp)
            logqs.append(logq)
            if state is not None:
                state.advance(token)
            if token in self.stop_token_ids or (state is not None and state.is_finished()):
                stopped = True
                break
            if len(tokens) >= request.max_new_tokens:
                break
            if deadline is not None and time.monotonic() > deadline:
                interrupted = True
                break
            logits = self._eval([token])
        return Continuation(tokens, np.asarray(logps, dtype=np.float64), np.asarray(logqs, dtype=np.float64),
                            stopped, interrupted)


def draw_token(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> tuple[int, float, float]:
    """Draw one token from softmax(logits / temperature) over the full vocabulary (no truncation).

    Returns (token, log p at temperature 1, log q at ``temperature``), both from the same float64 logits; at
    temperature 0 the token is the argmax and log q is 0. ``-inf`` logits are impossible tokens.
    """
    peak = float(np.max(logits))
    if not np.isfinite(peak):
        raise ValueError("every token is disallowed at this step (the constraint allows nothing the model can emit)")
    shifted = logits - peak
    log_z = float(np.log(np.sum(np.exp(shifted))))
    if temperature == 0:
        token = int(np.argmax(logits))
        return token, float(shifted[token]) - log_z, 0.0
    if temperature == 1.0:
        weights = np.exp(shifted)
        scaled = shifted
    else:
        scaled = shifted / temperature
        weights = np.exp(scaled)
    cdf = np.cumsum(weights)
    total = float(cdf[-1])
    token = int(np.searchsorted(cdf, rng.random() * total, side="right"))
    token = min(token, len(cdf) - 1)
    while weights[token] == 0:  # float edge at a plateau of the CDF: step back to the token that owns it
        token -= 1
    return token, float(shifted[token]) - log_z, float(scaled[token]) - float(np.log(total))


def _apply_mask(logits: np.ndarray, allowed: np.ndarray, vocab_size: int) -> np.ndarray:
    allowed = np.asarray(allowed, dtype=bool)
    if len(allowed) < vocab_size:  # grammar vocabularies can be shorter than the model's padded one
        allowed = np.concatenate([allowed, np.zeros(vocab_size - len(allowed), dtype=bool)])
    return np.where(allowed[:vocab_size], logits, -np.inf)


def _common_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    same = a[:n] == b[:n]
    return n if same.all() else int(np.argmin(same))


def _end_of_generation_tokens(llama) -> frozenset[int]:
    """llama.cpp's end-of-generation set (EOS, EOT and the chat turn delimiters the GGUF marks as such)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    return frozenset(t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))


def load_llamacpp(
    path: str,
    *,
    name: str | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    n_threads: int | None = None,
    n_batch: int = 512,
    seed: int = 0,
    batch_prefill: bool = False,
    **unsupported,
) -> LlamaCppLM:
    """Load a GGUF file with llama.cpp.

    ``n_threads`` defaults to llama-cpp-python's choice (half the CPUs): ggml's worker threads spin while they
    wait, so on a shared machine more threads than idle cores is several times slower (measured here with another
    process busy: 29 tok/s with 1 thread, 7 tok/s with 2).
    """
    if unsupported:
        raise ModelLoadError(f"option(s) not supported by the llama.cpp backend: {', '.join(sorted(unsupported))}")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ModelLoadError("llama.cpp backend needs llama-cpp-python: pip install 'powersampling[llama]'") from exc
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"GGUF file {path!r} does not exist")
    threads = n_threads or max(1, len(os.sched_getaffinity(0)) // 2)
    try:
        llama = Llama(model_path=str(p), n_ctx=n_ctx, n_batch=n_batch, n_threads=threads, n_threads_batch=threads,
                      logits_all=False, seed=seed, verbose=False)
    except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError with little detail
        raise ModelLoadError(f"llama.cpp could not load {p}: {exc}") from exc
    return LlamaCppLM(llama, name=name or p.stem, gguf_path=str(p), batch_prefill=batch_prefill)
