"""A model given by an explicit function of the token prefix.

Small enough models can be enumerated completely, which is how the samplers are checked against the exact p^alpha
distribution; it is also a convenient way to plug in any scorer that is not a neural network.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from .base import Continuation, ContinuationRequest, temperature_logprobs


class _IdTokenizer:
    """Text is the token ids joined by spaces (FunctionLM has no vocabulary of strings)."""

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, token_ids: Sequence[int]) -> str:
        return " ".join(str(int(t)) for t in token_ids)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return [tid for m in messages for tid in self.encode(m["content"])]


class FunctionLM:
    """``next_token_logprobs(prefix)`` returns a vector of ``vocab_size`` log-probabilities (or unnormalized
    logits; they are normalized here) for the token after ``prefix`` (the full prefix, prompt included).
    ``-inf`` marks impossible tokens."""

    def __init__(
        self,
        vocab_size: int,
        eos_token_id: int,
        next_token_logprobs: Callable[[Sequence[int]], np.ndarray],
        *,
        name: str = "function-lm",
        extra_stop_token_ids: Sequence[int] = (),
    ) -> None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if not 0 <= eos_token_id < vocab_size:
            raise ValueError(f"eos_token_id must be in [0, {vocab_size}), got {eos_token_id}")
        self.name = name
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.stop_token_ids = frozenset([eos_token_id, *extra_stop_token_ids])
        self.tokenizer = _IdTokenizer()
        self._fn = next_token_logprobs
        self.forward_calls = 0

    def logits(self, prefix: Sequence[int]) -> np.ndarray:
        out = np.asarray(self._fn(tuple(int(t) for t in prefix)), dtype=np.float64)
        if out.shape != (self.vocab_size,):
            raise ValueError(f"next_token_logprobs returned shape {out.shape}, expected ({self.vocab_size},)")
        self.forward_calls += 1
        return out

    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        return [self._sample_one(r, temperature, rng, deadline) for r in requests]

    def _sample_one(
        self, req: ContinuationRequest, temperature: float, rng: np.random.Generator, deadline: float | None
    ) -> Continuation:
        prefix = list(req.prefix)
        state = req.constraint.start(prefix[req.generated_start :]) if req.constraint else None
        tokens: list[int] = []
        logps: list[float] = []
        logqs: list[float] = []
        stopped = interrupted = False
        while len(tokens) < req.max_new_tokens:
            if deadline is not None and time.monotonic() > deadline:
                interrupted = True
                break
            logits = self.logits(prefix)
            allowed = state.allowed_tokens() if state is not None else None
            if allowed is not None:
                logits = np.where(allowed[: self.vocab_size], logits, -np.inf)
            logp, logq = temperature_logprobs(logits, temperature)
            if temperature == 0:
                tok = int(np.argmax(logp))
                lq = 0.0
            else:
                tok = int(rng.choice(self.vocab_size, p=np.exp(logq)))
                lq = float(logq[tok])
            tokens.append(tok)
            logps.append(float(logp[tok]))
            logqs.append(lq)
            prefix.append(tok)
            if state is not None:
                state.advance(tok)
            if tok in self.stop_token_ids:
                stopped = True
                break
            if state is not None and state.is_finished():
                stopped = True  # the constraint accepts the text as complete: same rule as the other backends
                break
        return Continuation(tokens, np.array(logps), np.array(logqs), stopped=stopped, interrupted=interrupted)
