"""Behaviour of the samplers beyond the target distribution: metadata, stopping, evaluators, deadlines, seeds."""

from __future__ import annotations

import time

import numpy as np
import pytest

from powersampling import ConfigError, FunctionLM, PowerSampler, PowerSamplingConfig, build_sampler
from powersampling.exactness import random_table_model
from powersampling.samplers import available_methods


def test_metadata_is_measured_and_consistent(toy_lm):
    r = PowerSampler(toy_lm, PowerSamplingConfig(alpha=2, n_mcmc=5, block_size=2, max_new_tokens=4, seed=0)).sample([1])
    md = r.metadata
    assert md["total_iterations"] == md["blocks_generated"] * 5 or md["stopped_by"] == "eos"
    assert md["acceptance_rate"] == pytest.approx(md["total_acceptances"] / md["total_iterations"])
    assert md["tokens_generated"] >= len(r.token_ids)
    assert md["cost_multiplier"] == pytest.approx(md["tokens_generated"] / len(r.token_ids))
    assert toy_lm.forward_calls == md["tokens_generated"]  # every decoded token is one model call here
    assert md["latency_ms"] > 0 and md["seed"] == 0
    assert len(r.logprobs) == len(r.token_ids)
    # the per-token log p are the model's
    prefix = [1]
    for tok, lp in zip(r.token_ids, r.logprobs):
        logits = toy_lm.logits(prefix)
        assert lp == pytest.approx(logits[tok] - np.log(np.exp(logits[np.isfinite(logits)]).sum()))
        prefix.append(tok)


def test_completion_ends_with_stop_id_and_stop_in_prompt_is_ignored():
    eos = 0

    def fn(prefix):
        # EOS is likely only after 3 generated tokens; the prompt itself contains the EOS id
        logits = np.zeros(3)
        logits[eos] = 5.0 if len(prefix) >= 5 else -5.0
        return logits

    lm = FunctionLM(3, eos, fn)
    r = PowerSampler(lm, PowerSamplingConfig(n_mcmc=2, block_size=2, max_new_tokens=8, seed=1)).sample([1, eos])
    assert r.token_ids[-1] == eos and r.metadata["stopped_by"] == "eos"
    assert len(r.token_ids) >= 2  # generation started despite the EOS id inside the prompt


def test_same_seed_same_result_and_different_seed_differs():
    toy_lm = random_table_model(vocab=5, max_len=9)
    cfg = dict(alpha=1, n_mcmc=4, block_size=2, max_new_tokens=8, n_chains=16)
    a = PowerSampler(toy_lm, PowerSamplingConfig(seed=7, **cfg)).sample([1])
    b = PowerSampler(toy_lm, PowerSamplingConfig(seed=7, **cfg)).sample([1])
    c = PowerSampler(toy_lm, PowerSamplingConfig(seed=8, **cfg)).sample([1])
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert [s.token_ids for s in a.samples] != [s.token_ids for s in c.samples]


def test_evaluator_picks_best_complete_sample_and_errors_are_counted():
    toy_lm = random_table_model(vocab=5, max_len=9)
    calls = []

    def evaluator(text: str) -> float:
        calls.append(text)
        if "3" in text.split():
            raise RuntimeError("evaluator bug")
        return float(sum(int(t) for t in text.split()))

    cfg = PowerSamplingConfig(alpha=1, n_mcmc=6, block_size=2, max_new_tokens=8, n_chains=8, seed=3)
    r = PowerSampler(toy_lm, cfg, evaluator=evaluator).sample([1])
    md = r.metadata
    assert md["selected_by"] == "evaluator"
    assert md["quality_score"] == max(float(sum(int(t) for t in c.split())) for c in calls if "3" not in c.split())
    assert md["evaluator_errors"] == sum("3" in c.split() for c in calls) > 0
    assert r.token_ids[-1] == toy_lm.eos_token_id or len(r.token_ids) == 8  # only complete samples are scored


@pytest.mark.parametrize("scan", ["random", "sorted", "entropy"])
def test_deadline_returns_best_so_far_and_says_so(scan):
    def slow(prefix):  # never stops on its own: only the deadline can end the run early
        time.sleep(0.01)
        return np.array([-np.inf, 0.0, 0.0, 0.0, 0.0])

    lm = FunctionLM(5, 0, slow)
    cfg = PowerSamplingConfig(n_mcmc=50, block_size=4, max_new_tokens=200, seed=0, deadline_s=0.3, scan=scan)
    t = time.monotonic()
    r = PowerSampler(lm, cfg).sample([1])
    assert time.monotonic() - t < 2.0
    assert r.metadata["stopped_by"] == "deadline"
    assert r.metadata["complete"] is False or r.token_ids[-1] == 0


def test_step_timeout_counts_and_rejects():
    def slow(prefix):
        time.sleep(0.002)
        return np.zeros(4)

    lm = FunctionLM(4, 0, slow)
    cfg = PowerSamplingConfig(n_mcmc=3, block_size=40, max_new_tokens=40, seed=0, step_timeout_s=0.005)
    r = PowerSampler(lm, cfg).sample([1])
    assert r.metadata["step_timeouts"] > 0
    assert r.metadata["total_acceptances"] <= r.metadata["total_iterations"] - r.metadata["step_timeouts"]


@pytest.mark.parametrize("method", ["sample", "low-temp", "greedy", "best-of-n", "power"])
def test_every_method_runs_through_the_same_api(toy_lm, method):
    s = build_sampler(method, toy_lm, max_new_tokens=4, seed=0, n_mcmc=2, block_size=2, alpha=2.0)
    r = s.sample([1])
    assert r.method == method
    assert 1 <= len(r.token_ids) <= 4
    assert r.metadata["tokens_generated"] >= len(r.token_ids)


def test_greedy_is_argmax(toy_lm):
    r = build_sampler("greedy", toy_lm, max_new_tokens=4).sample([1])
    prefix = [1]
    for tok in r.token_ids:
        assert tok == int(np.argmax(toy_lm.logits(prefix)))
        prefix.append(tok)


def test_best_of_n_by_mean_logprob(toy_lm):
    r = build_sampler("best-of-n", toy_lm, n=8, max_new_tokens=4, seed=2).sample([1])
    means = [c.logprob / len(c.token_ids) for c in r.samples]
    assert r.metadata["selected_by"] == "mean_logprob"
    assert np.mean(r.logprobs) == pytest.approx(max(means))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(n_mcmc=0), "n_mcmc"),
        (dict(alpha=0), "alpha"),
        (dict(alpha=-1), "alpha"),
        (dict(block_size=0), "block_size"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(n_chains=0), "n_chains"),
        (dict(proposal_temperature=0), "proposal_temperature"),
        (dict(seed=-1), "seed"),
        (dict(bogus=1), "bogus"),
        (dict(scan="entropic"), "scan"),
        (dict(scan="entropy", entropy_floor=0), "entropy_floor"),
        (dict(defensive_weight=1.5), "defensive_weight"),
        (dict(defensive_temperature=0), "defensive_temperature"),
        (dict(stop_after_rejections=0), "stop_after_rejections"),
        (dict(stop_after_rejections=3, scan="sorted"), "scan=random or scan=entropy"),
    ],
)
def test_config_validation_names_the_field(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PowerSamplingConfig(**kwargs)


def test_registry_rejects_unknown_method_and_parameter(toy_lm):
    with pytest.raises(ConfigError, match="unknown method"):
        build_sampler("nope", toy_lm)
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_sampler("power", toy_lm, warp_speed=9)
    with pytest.raises(ConfigError, match="do not apply"):
        build_sampler("greedy", toy_lm, strict=True, alpha=2.0)
    assert {"power", "sample", "greedy", "best-of-n", "low-temp"} <= set(available_methods())


def test_proposal_batch_reduces_backend_calls_without_changing_the_rule():
    lm = random_table_model(vocab=5, max_len=9)
    base = dict(alpha=3, n_mcmc=10, block_size=4, max_new_tokens=8, seed=4, n_chains=50, scan="random")
    seq = PowerSampler(lm, PowerSamplingConfig(proposal_batch=1, **base)).sample([1])
    bat = PowerSampler(lm, PowerSamplingConfig(proposal_batch=10, **base)).sample([1])
    assert bat.metadata["backend_calls"] < seq.metadata["backend_calls"]
    assert bat.metadata["total_iterations"] == seq.metadata["total_iterations"]


def test_majority_vote_counts_answers_and_breaks_ties_by_mean_logprob():
    from powersampling.samplers.base import last_number, majority_vote
    from powersampling.samplers.result import Completion

    outs = [
        Completion([1, 2], "so 7", -2.0, True),
        Completion([1, 2, 3, 4], "it is 9", -2.0, True),
        Completion([1], "7", -3.0, True),
        Completion([1, 2], "9", -0.5, True),
        Completion([1], "unfinished 9", 0.0, False),
    ]  # an incomplete output casts no vote
    index, vote = majority_vote(outs, None)
    # 7 and 9 have two votes each: the tie goes to the answer of the highest mean log-prob output (-0.25, "9")
    assert vote["votes"] == {"7": 2.0, "9": 2.0} and vote["winner"] == "9" and index == 3 and vote["voters"] == 4
    index, vote = majority_vote(outs, None, weights=[1, 0.1, 1, 0.1, 5])
    assert vote["winner"] == "7" and index == 0  # within the answer, the best mean log-prob (-1.0 vs -3.0)

    def broken(text):
        raise RuntimeError("extractor bug")

    assert majority_vote(outs, broken) == (None, {"votes": {}, "voters": 0, "winner": None})
    assert last_number("1,250.0 dollars then 3.5") == "3.5" and last_number("no digits") is None


def test_select_majority_through_the_registry(toy_lm):
    result = build_sampler(
        "best-of-n",
        toy_lm,
        n=8,
        max_new_tokens=4,
        seed=0,
        select="majority",
        answer_extractor=lambda text: text.split()[0] if text else None,
    ).sample([1])
    vote = result.metadata["vote"]
    assert result.metadata["selected_by"] == "majority"
    assert result.text.split()[0] == vote["winner"] and vote["votes"][vote["winner"]] == max(vote["votes"].values())


def test_entropy_scan_and_defensive_mixture_through_the_registry(toy_lm):
    """The CLI's --param and the server's power_sampling fields reach the sampler by these names."""
    from powersampling.samplers import validate_params

    params = dict(scan="entropy", entropy_floor=0.5, defensive_weight=0.2, defensive_temperature=2.0)
    validate_params("power", strict=True, **params)
    result = build_sampler("power", toy_lm, alpha=2.0, n_mcmc=4, block_size=2, max_new_tokens=4, seed=1, **params)
    metadata = result.sample([1]).metadata
    assert metadata["scan"] == "entropy" and metadata["defensive_weight"] == 0.2
    assert metadata["total_iterations"] > 0


def test_stop_after_rejections_ends_blocks_early_and_says_so():
    lm = random_table_model(vocab=5, max_len=9)
    base = dict(alpha=4, n_mcmc=30, block_size=4, max_new_tokens=8, seed=2, n_chains=20, proposal_batch=1)
    base.update(proposal_temperature=1.0)  # proposals far from the target: rejections come in runs
    full = PowerSampler(lm, PowerSamplingConfig(scan="random", **base)).sample([1]).metadata
    assert full["early_stops"] == 0 and full["steps_skipped"] == 0
    for scan in ("random", "entropy"):
        short = PowerSampler(lm, PowerSamplingConfig(scan=scan, stop_after_rejections=3, **base)).sample([1]).metadata
        assert short["early_stops"] > 0
        assert short["total_iterations"] + short["steps_skipped"] == full["total_iterations"]
        assert short["tokens_generated"] < full["tokens_generated"]


def test_sorted_entropy_scan_spends_fewer_proposals_where_the_model_is_sure():
    """Position m's share of the cuts scales with its next-token entropy over log(vocab): a nearly deterministic
    model gets a fraction of the sorted scan's proposals, a flat one about as many."""

    def model(scale):
        return FunctionLM(6, 0, lambda prefix: np.array([-3.0, scale, 0.0, 0.0, 0.0, 0.0]))

    base = dict(alpha=2.0, n_mcmc=16, block_size=4, max_new_tokens=8, seed=0, n_chains=8)
    for scale, low, high in ((12.0, 0.2, 0.45), (0.0, 0.8, 1.05)):
        sorted_ = PowerSampler(model(scale), PowerSamplingConfig(scan="sorted", **base)).sample([1]).metadata
        adaptive = PowerSampler(model(scale), PowerSamplingConfig(scan="sorted-entropy", **base)).sample([1])
        ratio = adaptive.metadata["total_iterations"] / sorted_["total_iterations"]
        assert low < ratio < high, (scale, ratio)
