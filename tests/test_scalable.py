"""Scalable power sampling: approximate, so its distance to the exact p^alpha is measured, not assumed; and the
bias-against-cost helper that measures it (for SMC too)."""

from __future__ import annotations

import numpy as np
import pytest

from powersampling import ConfigError
from powersampling.backends.base import ContinuationRequest
from powersampling.exactness import (
    enumerate_completions,
    power_distribution,
    random_table_model,
    sampler_tv,
    tokenwise_tempered_distribution,
    total_variation,
)
from powersampling.samplers import build_sampler
from powersampling.samplers.scalable import power_estimate

PROMPT, MAX_NEW, ALPHA = [1], 5, 2.0


@pytest.fixture(scope="module")
def model():
    return random_table_model(vocab=4, max_len=6, scale=0.6)


def test_tv_falls_with_the_rollout_horizon_and_reaches_the_exact_noise(model):
    short = sampler_tv("scalable-power", model, PROMPT, MAX_NEW, ALPHA, 3000, seed=2, top_k=4, rollouts=1, horizon=1)
    full = sampler_tv("scalable-power", model, PROMPT, MAX_NEW, ALPHA, 3000, seed=2, top_k=4, rollouts=1, horizon=None)
    target = power_distribution(enumerate_completions(model, PROMPT, MAX_NEW), ALPHA)
    low_temp = total_variation(tokenwise_tempered_distribution(model, PROMPT, MAX_NEW, ALPHA), target)
    assert short["tv"] > 2 * full["exact_noise_q99"], short  # a one-token horizon leaves a visible bias
    assert short["tv"] < low_temp  # ...but already corrects most of low temperature's
    assert full["tv"] <= full["exact_noise_q99"], full  # every candidate, whole futures: within sampling noise
    assert full["tokens_per_sample"] > short["tokens_per_sample"]


def test_smc_tv_falls_as_particles_grow(model):
    one = sampler_tv("smc", model, PROMPT, MAX_NEW, ALPHA, 2000, seed=3, n_particles=1, resample_every=1)
    many = sampler_tv("smc", model, PROMPT, MAX_NEW, ALPHA, 2000, seed=3, n_particles=16, resample_every=1)
    assert one["tv"] > 5 * one["exact_noise_q99"]  # one particle is per-token low temperature
    assert many["tv"] <= many["exact_noise_q99"]


def test_power_estimate_is_p_alpha_times_the_future_and_the_jackknife_removes_ratio_bias():
    alpha_logp = np.log(np.array([0.5, 0.3, 0.2])) * 2
    equal = np.zeros((3, 4))  # every future weighs the same: the estimate is p^alpha normalized
    expected = np.exp(alpha_logp) / np.exp(alpha_logp).sum()
    np.testing.assert_allclose(power_estimate(alpha_logp, equal, jackknife=True), expected)
    rng = np.random.default_rng(0)
    true_zeta = np.array([1.0, 4.0, 0.5])
    truth = np.exp(alpha_logp) * true_zeta / (np.exp(alpha_logp) * true_zeta).sum()
    plain, jack = [], []
    for _ in range(3000):  # weights with mean true_zeta: the ratio of means is biased at M = 3
        w = rng.exponential(true_zeta[:, None], size=(3, 3))
        plain.append(power_estimate(alpha_logp, np.log(w), jackknife=False))
        jack.append(power_estimate(alpha_logp, np.log(w), jackknife=True))
    assert np.abs(np.mean(jack, axis=0) - truth).max() < np.abs(np.mean(plain, axis=0) - truth).max()


def test_metadata_counts_rollouts_and_cost(model):
    result = build_sampler(
        "scalable-power", model, alpha=ALPHA, max_new_tokens=MAX_NEW, top_k=3, rollouts=2, horizon=2, seed=0
    ).sample(PROMPT)
    md = result.metadata
    assert md["method"] == "scalable-power" and md["route"] == "scalable-power"
    assert md["rollouts_total"] > 0 and md["rollout_tokens"] <= md["rollouts_total"] * 2
    assert md["tokens_generated"] == md["rollout_tokens"] + len(result.token_ids)
    assert md["cost_multiplier"] == pytest.approx(md["tokens_generated"] / len(result.token_ids))
    assert len(result.logprobs) == len(result.token_ids)


def test_below_the_entropy_threshold_no_rollout_is_drawn(model):
    result = build_sampler(
        "scalable-power", model, alpha=ALPHA, max_new_tokens=MAX_NEW, entropy_threshold=100.0, seed=0
    ).sample(PROMPT)
    assert result.metadata["rollouts_total"] == 0 and result.metadata["positions_with_rollouts"] == 0


def test_a_constraint_limits_the_candidates():
    """Under a mask the candidates are the allowed tokens: a constraint that allows only token 2 gets only 2s."""

    class OnlyTwo:
        def start(self, generated):
            return self

        def allowed_tokens(self):
            return np.array([True, False, True, False])  # the stop token and 2

        def advance(self, token):
            pass

        def is_finished(self):
            return False

    lm = random_table_model(vocab=4, max_len=6, scale=0.6)
    for seed in range(5):
        result = build_sampler(
            "scalable-power", lm, alpha=ALPHA, max_new_tokens=MAX_NEW, top_k=4, rollouts=2, seed=seed
        ).sample(PROMPT, constraint=OnlyTwo())
        assert set(result.token_ids) <= {0, 2}
    logp = lm.next_token_logprobs([ContinuationRequest(PROMPT, 1, 1, OnlyTwo())])[0]
    assert np.isneginf(logp[[1, 3]]).all() and np.exp(logp).sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "params, field",
    [
        (dict(top_k=0), "top_k"),
        (dict(rollouts=0), "rollouts"),
        (dict(horizon=0), "horizon"),
        (dict(entropy_threshold=-1), "entropy"),
    ],
)
def test_bad_settings_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field):
        build_sampler("scalable-power", None, **params)
