"""Log-probabilities the server returns: the base model's log p (temperature 1, no constraint mask) of given tokens,
with the most likely alternatives at each position. Not the sampler's proposal q and not p^alpha: the model's own
probabilities, the numbers lm-eval's log-likelihood tasks need.

Backends that can score a whole sequence in one pass offer ``score_tokens(ids, start, top)`` (transformers,
``FunctionLM``); any other backend with next-token distributions is scored one row per position, in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import ContinuationRequest, LanguageModel, NextTokenModel
from .errors import APIError

_ROWS_PER_CALL = 32


@dataclass
class Scored:
    """For each scored token: its log p, and the ``top`` most likely token ids at that position with their log p
    (rows of ``top_ids`` / ``top_logp``, most likely first)."""

    logp: np.ndarray
    top_ids: np.ndarray
    top_logp: np.ndarray


def score(model: LanguageModel, ids: Sequence[int], start: int, top: int, *, param: str = "logprobs") -> Scored:
    """log p(ids[i] | ids[:i]) for i in [start, len(ids)) under the base model, and the ``top`` alternatives."""
    ids = [int(t) for t in ids]
    if not 1 <= start <= len(ids):
        n = max(len(ids) - start, 0)
        return Scored(np.zeros(n), np.zeros((n, top), dtype=np.int64), np.zeros((n, top)))
    scorer = getattr(model, "score_tokens", None)
    if scorer is not None:
        logp, top_ids, top_logp = scorer(ids, start, top)
        return Scored(np.asarray(logp, dtype=np.float64), np.asarray(top_ids), np.asarray(top_logp, dtype=np.float64))
    if not isinstance(model, NextTokenModel):
        raise APIError(
            400,
            f"model {model.name!r} does not give next-token distributions, so log-probabilities cannot be returned",
            param=param,
            code="unsupported",
        )
    logp, top_ids, top_logp = [], [], []
    positions = list(range(start, len(ids)))
    for first in range(0, len(positions), _ROWS_PER_CALL):
        chunk = positions[first : first + _ROWS_PER_CALL]
        rows = model.next_token_logprobs([ContinuationRequest(ids[:i], 1) for i in chunk])
        for i, row in zip(chunk, rows):
            logp.append(float(row[ids[i]]))
            order = np.argsort(-row, kind="stable")[:top]
            top_ids.append(order)
            top_logp.append(row[order])
    return Scored(
        np.asarray(logp), np.asarray(top_ids, dtype=np.int64).reshape(-1, top), np.asarray(top_logp).reshape(-1, top)
    )


def token_text(model: LanguageModel, token: int) -> str:
    tok = model.tokenizer
    return tok.decode([int(token)]) if tok is not None else str(int(token))


def chat_logprobs(model: LanguageModel, tokens: Sequence[int], scored: Scored) -> dict:
    """OpenAI chat format: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}``."""

    def entry(token: int, logp: float) -> dict:
        text = token_text(model, token)
        return {"token": text, "logprob": _finite(logp), "bytes": list(text.encode("utf-8"))}

    content = []
    for j, token in enumerate(tokens):
        item = entry(token, scored.logp[j])
        item["top_logprobs"] = [entry(t, lp) for t, lp in zip(scored.top_ids[j], scored.top_logp[j])]
        content.append(item)
    return {"content": content}


def completion_logprobs(
    model: LanguageModel, tokens: Sequence[int], logp: Sequence[float | None], top: list[dict | None], offset0: int = 0
) -> dict:
    """The legacy completions format (vLLM's, which lm-eval reads): parallel lists ``tokens``,
    ``token_logprobs`` (None where there is no context, the first prompt token), ``top_logprobs`` (token text ->
    log p, None there too) and ``text_offset`` (each token's start in the returned text)."""
    texts = [token_text(model, t) for t in tokens]
    offsets, at = [], offset0
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [None if v is None else _finite(v) for v in logp],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def top_dict(model: LanguageModel, ids: np.ndarray, logp: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, lp in zip(ids, logp):
        out.setdefault(token_text(model, int(t)), _finite(lp))
    return out


def _finite(value: float) -> float:
    value = float(value)
    return value if np.isfinite(value) else -9999.0
