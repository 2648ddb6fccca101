"""Statistics checked against scipy and published values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from powersampling.eval.stats import mcnemar_exact, paired_bootstrap, wilson_interval


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (17, 100), (389, 1000), (1, 2)])
def test_wilson_matches_scipy(k, n):
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_known_value_and_edges():
    # Newcombe (1998), table I: 0/10 -> 0 to 0.2775
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def _pairs(only_a: int, only_b: int, both: int, neither: int):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (5, 5), (2, 9), (12, 3), (0, 7), (40, 61)])
def test_mcnemar_exact_matches_binomial_test(only_a, only_b):
    a, b = _pairs(only_a, only_b, both=20, neither=13)
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (only_a, only_b)
    expected = 1.0 if only_a + only_b == 0 else sps.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)


def test_mcnemar_known_value():
    # 0 vs 7 discordant pairs: p = 2 * 0.5^7 = 0.015625
    assert mcnemar_exact(*_pairs(0, 7, 5, 5)).p_value == pytest.approx(0.015625)
    # concordant pairs do not matter
    assert mcnemar_exact(*_pairs(2, 9, 0, 0)).p_value == mcnemar_exact(*_pairs(2, 9, 50, 50)).p_value


def test_paired_bootstrap_difference_and_interval():
    a, b = _pairs(only_a=5, only_b=25, both=40, neither=30)
    result = paired_bootstrap(a, b, n_boot=20_000, seed=1)
    assert result.difference == pytest.approx(0.20)
    # normal approximation of the paired difference: sd of d = b - a over 100 problems
    d = np.asarray(b, float) - np.asarray(a, float)
    se = d.std() / np.sqrt(len(d))
    assert result.ci_low == pytest.approx(0.20 - 1.96 * se, abs=0.02)
    assert result.ci_high == pytest.approx(0.20 + 1.96 * se, abs=0.02)
    assert result.p_value < 0.001


def test_paired_bootstrap_without_a_difference():
    a, b = _pairs(only_a=10, only_b=10, both=30, neither=50)
    result = paired_bootstrap(a, b, n_boot=5000, seed=0)
    assert result.difference == 0.0
    assert result.ci_low < 0 < result.ci_high
    assert result.p_value > 0.5
    same = paired_bootstrap([True, False, True], [True, False, True])
    assert (same.difference, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])
