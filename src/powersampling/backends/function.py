"""A model given by an explicit function of the token prefix.

Small enough models can be enumerated completely, which is how the samplers are checked against the exact p^alpha
distribution; it is also a convenient way to plug in any scorer that is not a neural network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .base import Continuation, ContinuationRequest
from .decoding import Row, decode, log_softmax, next_token_logprobs


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
        self.context_length: int | None = None  # no window unless the caller sets one
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
        return decode(_FunctionStepper(self), requests, temperature, rng, self.stop_token_ids, deadline=deadline)

    def next_token_logprobs(self, requests: Sequence[ContinuationRequest]) -> np.ndarray:
        return next_token_logprobs(_FunctionStepper(self), requests, self.stop_token_ids)

    def score_tokens(self, ids: Sequence[int], start: int, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log p(ids[i] | ids[:i]) for i in [start, len(ids)), and the ``top`` most likely tokens there."""
        ids = [int(t) for t in ids]
        if start >= len(ids):
            return np.zeros(0), np.zeros((0, top), dtype=np.int64), np.zeros((0, top))
        rows = log_softmax(
            np.stack([self.logits(ids[:i]) for i in range(start, len(ids))]).reshape(-1, self.vocab_size)
        )
        chosen = rows[np.arange(len(rows)), ids[start:]] if len(rows) else np.zeros(0)
        order = np.argsort(-rows, axis=-1, kind="stable")[:, :top]
        return chosen, order, np.take_along_axis(rows, order, axis=-1)


class _FunctionStepper:
    """Logits straight from the function, one prefix at a time (there is no cache to keep)."""

    def __init__(self, model: FunctionLM) -> None:
        self.model = model
        self.rows: list[Row] = []

    def start(self, rows: list[Row], deadline: float | None = None) -> np.ndarray:
        self.rows = list(rows)
        return self._logits()

    def step(self, keep: list[int]) -> np.ndarray | None:
        self.rows = [self.rows[j] for j in keep]
        return self._logits() if self.rows else None

    def _logits(self) -> np.ndarray:
        return np.stack([self.model.logits(row.prefix + row.tokens) for row in self.rows])
