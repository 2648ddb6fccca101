"""Power-SMC draws from p^alpha: exact importance weights, an unbiased normalizing constant, and an output law that
approaches p^alpha as the particle count grows, on models small enough to enumerate.

Why the averaged weighted particle measure: one SMC run returns one particle drawn from its normalized weights, so
the law of the returned completion is exactly E[sum_i W_i delta(x_i)], the expected weighted particle measure.
Averaging that measure over R independent runs estimates the same law with no more noise than R returned draws
(the draw only adds randomness), so the exact-sampler bound for R draws is a valid noise bound for it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from powersampling import FunctionLM
from powersampling.backends.decoding import temperature_logprobs
from powersampling.errors import ConfigError
from powersampling.exactness import (
    empirical,
    enumerate_completions,
    exact_sampler_tv_quantile,
    power_distribution,
    tokenwise_tempered_distribution,
    total_variation,
)
from powersampling.samplers import SMCConfig, SMCSampler, build_sampler
from powersampling.samplers.smc import effective_sample_size, systematic_resample

PROMPT = [1]
MAX_NEW = 3


def table_lm(seed: int = 4, vocab: int = 4, eos: int = 0) -> FunctionLM:
    """Fixed random logits per prefix (independent of query order). With seed 4 and 3 new tokens, p^2 puts mass on
    completions stopping after 1, 2 and 3 tokens and on ones cut at the limit, so particles end at different
    lengths."""

    @functools.cache
    def logits(prefix):
        return np.random.default_rng([seed, len(prefix), *prefix]).normal(size=vocab)

    return FunctionLM(vocab, eos, logits, name=f"table-{seed}")


def run(lm, prompt=PROMPT, **cfg):
    cfg.setdefault("max_new_tokens", MAX_NEW)
    return SMCSampler(lm, SMCConfig(**cfg)).sample(prompt)


def averaged_particle_measure(lm, runs: int, prompt=PROMPT, **cfg) -> dict:
    total: dict[tuple[int, ...], float] = {}
    for seed in range(runs):
        if hasattr(lm, "clear_cache"):  # runs are independent; a small pool keeps the backend's prefix scan short
            lm.clear_cache()
        result = run(lm, prompt, seed=seed, return_particles=True, **cfg)
        for completion, weight in zip(result.samples, result.metadata["particle_weights"]):
            key = tuple(completion.token_ids)
            total[key] = total.get(key, 0.0) + weight / runs
    return total


def schedule_logq(lm, prompt, tokens, cfg: SMCConfig) -> float:
    """log q of a particle's tokens under the chunked proposal schedule, computed independently of the sampler:
    the chunk holding token i ends at min(ceil((i+1)/r)*r, T) and is drawn at 1/alpha_t there (or the fixed
    temperature)."""
    total = 0.0
    for i, tok in enumerate(tokens):
        end = min(math.ceil((i + 1) / cfg.resample_every) * cfg.resample_every, cfg.max_new_tokens)
        if cfg.proposal_temperature is not None:
            temperature = cfg.proposal_temperature
        else:
            k = cfg.anneal_tokens
            alpha_t = cfg.alpha if k == 0 or end >= k else 1 + (cfg.alpha - 1) * end / k
            temperature = 1 / alpha_t
        logits = lm.logits(list(prompt) + list(tokens[:i]))
        _, logq = temperature_logprobs(logits, temperature)
        if cfg.defensive_weight > 0:  # the defensive mixture's own log q
            w = cfg.defensive_weight
            _, flat = temperature_logprobs(logits, cfg.defensive_temperature)
            logq = np.logaddexp(np.log1p(-w) + logq, np.log(w) + flat)
        total += float(logq[tok])
    return total


@pytest.mark.parametrize(
    "cfg",
    [
        dict(alpha=2.0, resample_every=1),
        dict(alpha=2.0, resample_every=2, proposal_temperature=0.3),
        dict(alpha=3.0, resample_every=1, anneal_tokens=3, proposal_temperature=1.0),  # finished particles re-weighted
        dict(alpha=3.0, resample_every=1, anneal_tokens=2),  # annealed proposal temperatures
        dict(alpha=0.5, resample_every=3, anneal_tokens=5),  # annealing longer than the run: final jump to alpha
        dict(alpha=4.0, resample_every=1, defensive_weight=0.3),  # defensive mixture with p itself
        dict(alpha=3.0, resample_every=2, anneal_tokens=2, defensive_weight=0.1, defensive_temperature=2.0),
    ],
)
def test_without_resampling_the_weights_are_exactly_p_alpha_over_q(cfg):
    """Pure importance sampling (ess_threshold=0): every final weight must be p(x)^alpha / q(x) normalized, whatever
    the chunking, annealing or stopping length; a finished particle that missed its annealing correction, or a
    chunk weighed with the wrong exponent, breaks this at 1e-9."""
    lm = table_lm()
    logp = enumerate_completions(lm, PROMPT, MAX_NEW)
    config = SMCConfig(max_new_tokens=MAX_NEW, n_particles=40, ess_threshold=0.0, seed=7, return_particles=True, **cfg)
    result = SMCSampler(lm, config).sample(PROMPT)
    keys = [tuple(c.token_ids) for c in result.samples]
    assert len({len(k) for k in keys}) > 1, "the check needs particles that stop at different lengths"
    log_w = np.array([config.alpha * logp[k] - schedule_logq(lm, PROMPT, k, config) for k in keys])
    expected = np.exp(log_w - log_w.max())
    expected /= expected.sum()
    assert np.allclose(result.metadata["particle_weights"], expected, rtol=1e-9, atol=1e-12)
    assert result.metadata["resample_count"] == 0


@pytest.mark.parametrize("ess_threshold", [0.0, 1.0])
def test_log_marginal_estimate_is_unbiased(ess_threshold):
    """exp(log_marginal_estimate) is an unbiased estimate of sum_x p(x)^alpha over complete sequences (importance
    sampling at threshold 0, resampling at every check at threshold 1)."""
    lm = table_lm()
    alpha = 2.0
    exact = sum(math.exp(alpha * v) for v in enumerate_completions(lm, PROMPT, MAX_NEW).values())
    estimates = np.array(
        [
            math.exp(
                run(
                    lm,
                    alpha=alpha,
                    n_particles=8,
                    resample_every=1,
                    ess_threshold=ess_threshold,
                    anneal_tokens=2,
                    seed=s,
                ).metadata["log_marginal_estimate"]
            )
            for s in range(300)
        ]
    )
    standard_error = estimates.std(ddof=1) / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 4 * standard_error, (estimates.mean(), exact, standard_error)


@pytest.mark.parametrize(
    "alpha, cfg",
    [
        (2.0, dict(resample_every=1)),
        (2.0, dict(resample_every=1, anneal_tokens=2)),
        (3.0, dict(resample_every=2, proposal_temperature=1.0)),  # proposal far from 1/alpha
        (0.5, dict(resample_every=1)),  # alpha < 1 flattens
        (4.0, dict(resample_every=1, defensive_weight=0.3)),  # defensive mixture proposal
    ],
)
def test_output_law_approaches_p_alpha_as_particles_grow(alpha, cfg):
    lm = table_lm()
    runs = 120
    target = power_distribution(enumerate_completions(lm, PROMPT, MAX_NEW), alpha)
    bound = exact_sampler_tv_quantile(target, runs, quantile=0.999)
    tvs = [
        total_variation(averaged_particle_measure(lm, runs, alpha=alpha, n_particles=n, **cfg), target)
        for n in (1, 4, 32)
    ]
    assert tvs[0] > tvs[1] > tvs[2], tvs
    assert tvs[2] <= bound, f"TV {tvs[2]:.4f} at 32 particles above the exact-sampler bound {bound:.4f}"
    # one particle is the proposal itself, far from the target
    assert tvs[2] < tvs[0] / 3


def test_returned_completion_is_distributed_as_p_alpha():
    """The completion the user gets (one draw from the final weights per run), not only the weighted particles."""
    lm = table_lm()
    alpha, runs = 2.0, 600
    target = power_distribution(enumerate_completions(lm, PROMPT, MAX_NEW), alpha)
    draws = [run(lm, alpha=alpha, n_particles=16, resample_every=1, seed=s).token_ids for s in range(runs)]
    bound = exact_sampler_tv_quantile(target, runs, quantile=0.999)
    tv = total_variation(empirical(draws), target)
    assert tv <= bound, f"TV {tv:.4f} above the exact-sampler bound {bound:.4f}"
    # the proposal (per-token temperature 1/alpha) fails the same check
    assert total_variation(tokenwise_tempered_distribution(lm, PROMPT, MAX_NEW, alpha), target) > 2 * bound


def test_smc_on_a_real_transformers_model_matches_exact(tiny_hf):
    """The transformers path: particles as batched rows, resampled particles finding their caches in the pool."""
    import torch

    from powersampling.backends.hf import TransformersLM

    def exact_logits(prefix):
        with torch.no_grad():
            return tiny_hf(torch.tensor([list(prefix)])).logits[0, -1].double().numpy()

    reference = FunctionLM(6, 0, exact_logits)
    lm = TransformersLM(tiny_hf, None, name="tiny")
    prompt, alpha, runs = [1, 3], 2.0, 50
    target = power_distribution(enumerate_completions(reference, prompt, MAX_NEW), alpha)
    bound = exact_sampler_tv_quantile(target, runs, quantile=0.999)
    measure = averaged_particle_measure(lm, runs, prompt, alpha=alpha, n_particles=16, resample_every=1)
    tv = total_variation(measure, target)
    assert tv <= bound, f"TV {tv:.4f} above {bound:.4f}"
    assert total_variation(tokenwise_tempered_distribution(reference, prompt, MAX_NEW, alpha), target) > tv + 0.05


def test_resampled_particles_reuse_their_kv_cache(tiny_hf):
    """The prompt is encoded once (one priming row), then each live particle feeds exactly one token per call: its
    prefix (its own, or the one it was copied from on resampling) is in the backend's pool."""
    from powersampling.backends.hf import TransformersLM

    lm = TransformersLM(tiny_hf, None, name="tiny")
    prompt, n = [1, 3, 2, 4, 5, 2, 3, 4], 12
    fed_per_call = []
    original = lm.sample

    def counting_sample(requests, *args, **kwargs):
        before = lm.prefill_tokens
        out = original(requests, *args, **kwargs)
        fed_per_call.append((len(requests), lm.prefill_tokens - before))
        return out

    lm.sample = counting_sample
    result = SMCSampler(
        lm, SMCConfig(alpha=4.0, n_particles=n, max_new_tokens=6, resample_every=1, seed=3, ess_threshold=1.0)
    ).sample(prompt)
    assert result.metadata["resample_count"] >= 2
    assert fed_per_call[0] == (1, len(prompt))
    assert fed_per_call[1][0] == n - 1  # the priming row already holds its first token
    for rows, fed in fed_per_call[1:]:
        assert fed == rows, fed_per_call


# behaviour and API


def test_build_sampler_smc_and_metadata():
    lm = table_lm()
    events = []
    sampler = build_sampler(
        "smc", lm, alpha=2.0, n_particles=6, max_new_tokens=3, seed=1, resample_every=1, n_mcmc=10, block_size=4
    )  # MH knobs are ignored, as the CLI passes them to every method
    assert isinstance(sampler, SMCSampler)
    result = sampler.sample(PROMPT, progress=events.append)
    md = result.metadata
    assert result.method == md["method"] == "smc"
    assert md["seed"] == 1 and md["n_particles"] == 6
    assert len(md["ess_trace"]) == sum(e.kind == "block" for e in events) == md["backend_calls"] - 1  # + priming
    assert all(1.0 <= ess <= 6.0 + 1e-9 for ess in md["ess_trace"])
    assert md["resample_count"] == len(md["resample_steps"])
    assert md["final_tokens"] == len(result.token_ids) and md["tokens_generated"] >= len(result.token_ids)
    assert md["cost_multiplier"] == md["tokens_generated"] / max(1, len(result.token_ids))
    assert md["stopped_by"] == ("eos" if result.token_ids[-1] == 0 else "length") and md["complete"]
    assert np.isfinite(md["log_marginal_estimate"])
    assert events[-1].kind == "done" and all("ess" in e.extra for e in events)
    assert len(result.logprobs) == len(result.token_ids)
    assert result.samples[0].token_ids == result.token_ids and len(result.samples) == 1


def test_same_seed_same_completion_and_particles():
    lm = table_lm()
    a = run(lm, alpha=2.0, n_particles=8, seed=42, return_particles=True)
    b = run(lm, alpha=2.0, n_particles=8, seed=42, return_particles=True)
    assert a.token_ids == b.token_ids
    assert [c.token_ids for c in a.samples] == [c.token_ids for c in b.samples]
    assert a.metadata["particle_weights"] == b.metadata["particle_weights"]
    different = {tuple(run(lm, alpha=2.0, n_particles=8, seed=s).token_ids) for s in range(20)}
    assert len(different) > 1


def test_return_particles_lists_every_particle_with_normalized_weights():
    lm = table_lm()
    result = run(lm, alpha=2.0, n_particles=10, seed=3, return_particles=True)
    weights = result.metadata["particle_weights"]
    assert len(result.samples) == len(weights) == 10
    assert math.isclose(sum(weights), 1.0) and min(weights) >= 0
    assert result.samples[0].token_ids == result.token_ids  # the drawn particle comes first
    assert all(c.complete for c in result.samples)


def test_evaluator_selects_the_best_complete_particle():
    lm = table_lm()
    score = lambda text: float(len(text.split()))
    sampler = build_sampler(
        "smc", lm, evaluator=score, alpha=2.0, n_particles=12, max_new_tokens=3, seed=0, return_particles=True
    )
    result = sampler.sample(PROMPT)
    assert result.metadata["selected_by"] == "evaluator"
    assert result.metadata["quality_score"] == max(score(c.text) for c in result.samples)
    assert score(result.text) == result.metadata["quality_score"]


def test_deadline_returns_the_weighted_particles_so_far():
    import time

    def slow(prefix):
        time.sleep(0.01)
        return np.array([-np.inf, 0.0, 0.0, 0.0, 0.0])  # never stops by itself

    lm = FunctionLM(5, 0, slow)
    result = run(lm, alpha=2.0, n_particles=4, max_new_tokens=200, deadline_s=0.3, seed=0)
    md = result.metadata
    assert md["stopped_by"] == "deadline" and not md["complete"]
    assert md["latency_ms"] < 3000
    assert 0 < len(result.token_ids) < 200


def test_stop_tokens_end_particles_and_the_run():
    always_eos = FunctionLM(3, 2, lambda prefix: np.array([0.0, 0.0, 5.0]))
    result = run(always_eos, alpha=4.0, n_particles=5, max_new_tokens=50, seed=0, resample_every=4)
    assert result.metadata["backend_calls"] == 2  # the prompt-priming row, then the others: all stopped at once
    assert result.metadata["particles_stopped"] == 5
    assert result.metadata["stopped_by"] == "eos"


@pytest.mark.parametrize(
    "params, field",
    [
        (dict(n_particles=0), "n_particles"),
        (dict(alpha=0), "alpha"),
        (dict(ess_threshold=1.5), "ess_threshold"),
        (dict(resample_every=0), "resample_every"),
        (dict(anneal_tokens=-1), "anneal_tokens"),
        (dict(proposal_temperature=0), "proposal_temperature"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_field(params, field):
    with pytest.raises(ConfigError, match=field):
        SMCConfig(**params)
    with pytest.raises(ConfigError, match=field):
        build_sampler("smc", None, **params)


def test_empty_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="prompt is empty"):
        run(table_lm(), prompt=[], alpha=2.0, n_particles=2)


def test_systematic_resampling_and_ess():
    rng = np.random.default_rng(0)
    weights = np.array([0.5, 0.25, 0.125, 0.125])
    counts = np.zeros(4)
    for _ in range(4000):
        idx = systematic_resample(weights, rng)
        assert np.all(np.diff(idx) >= 0)
        counts += np.bincount(idx, minlength=4)
        # systematic resampling gives each particle floor(N w) or ceil(N w) copies
        assert np.all(np.abs(np.bincount(idx, minlength=4) - 4 * weights) < 1)
    assert np.allclose(counts / counts.sum(), weights, atol=0.01)
    assert effective_sample_size(np.full(8, 1 / 8)) == pytest.approx(8)
    assert effective_sample_size(np.array([1.0, 0, 0])) == pytest.approx(1)


@pytest.mark.slow
def test_cli_generate_with_smc_on_the_embedded_model():
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "powersampling.cli",
            "generate",
            "Name a color.",
            "--method",
            "smc",
            "--chains",
            "4",
            "--max-new-tokens",
            "12",
            "--seed",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    md = out["metadata"]
    assert out["method"] == "smc" and md["n_particles"] == 4 and out["text"].strip()
    assert 0 < md["final_tokens"] <= 12 and md["tokens_generated"] >= md["final_tokens"]
    assert len(md["ess_trace"]) == md["backend_calls"] - 1


def test_defensive_mixture_finds_the_mode_the_proposal_hides():
    """On a mode-hiding model (p^4's mode, an immediate EOS, has proposal probability 0.6%), 32 particles from the
    low-temperature proposal leave most of the mode's mass unfound; the defensive mixture with p itself at the same
    particle count lands much closer to p^4."""
    from powersampling.exactness import hidden_mode, mode_hiding_model

    lm = mode_hiding_model(0)
    alpha, max_new, runs = 4.0, 4, 60
    hidden = hidden_mode(lm, PROMPT, max_new, alpha)
    assert hidden["mode"] == [0] and hidden["target_mass"] > 0.6 and hidden["proposal_probability"] < 0.01
    target = power_distribution(enumerate_completions(lm, PROMPT, max_new), alpha)
    tv = {
        w: total_variation(
            averaged_particle_measure(
                lm, runs, alpha=alpha, n_particles=32, resample_every=1, max_new_tokens=max_new, defensive_weight=w
            ),
            target,
        )
        for w in (0.0, 0.3)
    }
    assert tv[0.0] > 0.3 and tv[0.3] < tv[0.0] / 2, tv
