"""Exact target distributions for models small enough to enumerate, and the statistics to compare a sampler to them.

Used by the test-suite and available to anyone who wants to check a sampler: enumerate every completion of a
``FunctionLM`` (or any model whose ``logits(prefix)`` can be called), form p^alpha exactly, and ask whether a
sampler's empirical distribution is within the spread an exact sampler would show with the same sample count.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from .backends.decoding import temperature_logprobs


def enumerate_completions(model, prompt: Sequence[int], max_new_tokens: int) -> dict[tuple[int, ...], float]:
    """Every completion (ending in a stop token, or reaching ``max_new_tokens``) with its log p under the model."""
    out: dict[tuple[int, ...], float] = {}

    def walk(generated: tuple[int, ...], logp: float) -> None:
        if len(generated) == max_new_tokens or (generated and generated[-1] in model.stop_token_ids):
            out[generated] = logp
            return
        lp, _ = temperature_logprobs(model.logits(list(prompt) + list(generated)), 1.0)
        for tok in np.flatnonzero(np.isfinite(lp)):
            walk(generated + (int(tok),), logp + float(lp[tok]))

    walk((), 0.0)
    return out


def power_distribution(logps: dict[tuple[int, ...], float], alpha: float) -> dict[tuple[int, ...], float]:
    """p^alpha normalized over the given completions."""
    keys = list(logps)
    w = alpha * np.array([logps[k] for k in keys])
    w = np.exp(w - w.max())
    w /= w.sum()
    return dict(zip(keys, w.tolist()))


def tokenwise_tempered_distribution(model, prompt: Sequence[int], max_new_tokens: int, alpha: float):
    """The distribution of per-token low-temperature sampling (softmax(alpha*logits) at every step): the proposal,
    NOT the power target. Returned to show that a test can tell the two apart."""
    out: dict[tuple[int, ...], float] = {}

    def walk(generated: tuple[int, ...], logq: float) -> None:
        if len(generated) == max_new_tokens or (generated and generated[-1] in model.stop_token_ids):
            out[generated] = float(np.exp(logq))
            return
        _, lq = temperature_logprobs(model.logits(list(prompt) + list(generated)), 1.0 / alpha)
        for tok in np.flatnonzero(np.isfinite(lq)):
            walk(generated + (int(tok),), logq + float(lq[tok]))

    walk((), 0.0)
    return out


def empirical(samples: Iterable[Sequence[int]]) -> dict[tuple[int, ...], float]:
    counts = Counter(tuple(s) for s in samples)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def total_variation(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def exact_sampler_tv_quantile(
    target: dict[tuple[int, ...], float], n_samples: int, quantile: float = 0.99, replicates: int = 2000, seed: int = 0
) -> float:
    """The ``quantile`` of TV(empirical, target) for an exact sampler drawing ``n_samples`` i.i.d. completions:
    the sampling-noise bound a correct sampler stays under (with probability ``quantile``)."""
    rng = np.random.default_rng(seed)
    probs = np.array(list(target.values()))
    counts = rng.multinomial(n_samples, probs, size=replicates)
    tvs = 0.5 * np.abs(counts / n_samples - probs).sum(axis=1)
    return float(np.quantile(tvs, quantile))
