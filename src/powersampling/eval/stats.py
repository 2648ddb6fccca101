"""Statistics for accuracy comparisons: Wilson intervals, McNemar's exact test, paired bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and at n, unlike the normal interval)."""
    if total <= 0:
        return (0.0, 1.0)
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be within [0, {total}], got {correct}")
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    p = correct / total
    denom = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if correct == 0 else max(0.0, center - half)  # exact at the edges (rounding leaves ~1e-17)
    high = 1.0 if correct == total else min(1.0, center + half)
    return (low, high)


@dataclass(frozen=True)
class McNemarResult:
    only_a: int  # problems A got right and B got wrong
    only_b: int
    p_value: float


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemarResult:
    """Two-sided exact McNemar test: under H0 the discordant pairs split Binomial(b + c, 1/2)."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    if n == 0:
        return McNemarResult(0, 0, 1.0)
    p = min(1.0, 2.0 * float(sps.binom.cdf(min(only_a, only_b), n, 0.5)))
    return McNemarResult(only_a, only_b, p)


@dataclass(frozen=True)
class BootstrapResult:
    difference: float  # mean(b) - mean(a)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided: how often the resampled difference falls on the other side of zero, doubled


def paired_bootstrap(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Bootstrap over problems (pairs resampled together) of the accuracy difference B - A."""
    a, b = np.asarray(a_correct, dtype=float), np.asarray(b_correct, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    n = len(a)
    if n == 0:
        return BootstrapResult(0.0, 0.0, 0.0, 1.0)
    diff = b - a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boots, [tail, 1 - tail])
    p = min(1.0, 2 * min(float(np.mean(boots <= 0)), float(np.mean(boots >= 0))))
    return BootstrapResult(float(diff.mean()), float(low), float(high), p)
