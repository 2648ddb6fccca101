"""Choices among answers made of parts: coverage (the output whose answer contains the most of the other outputs'
parts) and consensus (the one whose parts agree best, by F1, with theirs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from powersampling import ConfigError, FunctionLM, build_sampler
from powersampling.samplers.base import majority_vote, parts_choice
from powersampling.samplers.result import Completion


def out(parts, logprob=-1.0, complete=True):
    """A completion whose text is its answer's parts (JSON), one token per part (at least one)."""
    return Completion([0] * max(1, len(parts or ())), json.dumps(parts), logprob, complete)


def parts_of(text):
    return json.loads(text)


def uniform_model() -> FunctionLM:
    """Tokens 1-4 or EOS (0), each with probability 1/5: the text is the token ids, each one a part."""
    return FunctionLM(5, 0, lambda prefix: np.zeros(5), name="uniform")


def test_the_answer_holding_what_the_others_agree_on_and_more_beats_the_shorter_majority():
    shorter = [out(["a"], -0.1), out(["a"], -0.1), out(["a"], -0.1)]
    fuller = out(["a", "b"], -0.5)
    outputs = [*shorter, fuller]
    chosen, record = parts_choice(outputs, parts_of, "coverage")
    # each shorter answer holds 2 x 1 of the other shorter ones and 1/2 of the fuller: 2.5; the fuller holds 3 x 1
    assert chosen == 3 and record["coverage"] == {"0": 2.5, "1": 2.5, "2": 2.5, "3": 3.0} and record["voters"] == 4
    assert majority_vote(outputs, lambda t: json.dumps(sorted(parts_of(t))))[0] == 0  # a vote keeps the majority


def test_no_call_is_held_only_by_no_call_and_parts_count_as_a_multiset():
    chosen, _ = parts_choice([out([]), out([]), out(["x"])], parts_of, "coverage")
    assert chosen in (0, 1)  # the two empty answers hold each other; "x" holds neither
    chosen, record = parts_choice([out(["x"]), out(["x", "x"])], parts_of, "coverage")
    assert chosen == 1 and record["coverage"] == {"0": 0.5, "1": 1.0}


def test_ties_go_to_the_highest_mean_log_p_and_weights_count():
    assert parts_choice([out(["a"], -2.0), out(["a"], -1.0)], parts_of, "coverage")[0] == 1
    outputs = [out(["a"]), out(["b"]), out(["b"])]
    assert parts_choice(outputs, parts_of, "coverage")[0] in (1, 2)
    assert parts_choice(outputs, parts_of, "coverage", weights=[5.0, 1.0, 1.0])[0] == 1  # "b" held by the other "b"
    assert parts_choice([out(["a"]), out(["b"]), out(["b"])], parts_of, "coverage", weights=[1.0, 3.0, 0.1])[0] == 2


def test_unfinished_outputs_and_failed_extractions_give_no_answer():
    outputs = [out(["a", "b"], complete=False), out(["a"]), out(["c"])]
    chosen, record = parts_choice(outputs, parts_of, "coverage")
    assert chosen in (1, 2) and record["voters"] == 2

    def broken(text):
        raise RuntimeError("user code")

    assert parts_choice([out(["a"]), out(["b"])], broken, "coverage") == (None, {"coverage": {}, "voters": 0})


@pytest.mark.parametrize("rule", ["coverage", "consensus"])
def test_a_sampler_returns_the_chosen_output_and_says_so(rule):
    sampler = build_sampler(
        "best-of-n", uniform_model(), n=6, max_new_tokens=4, seed=3, select=rule, parts_extractor=str.split
    )
    result = sampler.sample([1])
    expected, record = parts_choice(result.samples, str.split, rule)
    assert result.metadata["selected_by"] == rule and result.metadata[f"{rule}_choice"] == record
    assert result.text == result.samples[expected].text


def test_coverage_without_a_parts_extractor_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="parts_extractor"):
        build_sampler("best-of-n", uniform_model(), n=2, select="coverage")
    with pytest.raises(ConfigError, match="quality_margin"):
        build_sampler("best-of-n", uniform_model(), n=2, select="coverage", parts_extractor=str.split,
                      quality_margin=0.1)  # fmt: skip


@pytest.mark.parametrize(
    "method, params",
    [("power", dict(n_chains=3, n_mcmc=2, block_size=2)), ("smc", dict(n_particles=4, block_size=2))],
)
@pytest.mark.parametrize("rule", ["coverage", "consensus"])
def test_mh_chains_and_smc_particles_are_chosen_among_by_parts(method, params, rule):
    result = build_sampler(
        method, uniform_model(), max_new_tokens=4, seed=5, select=rule, parts_extractor=str.split, **params
    ).sample([1])
    assert result.metadata["selected_by"] == rule and result.metadata[f"{rule}_choice"]["voters"] >= 1
    assert result.text in {s.text for s in result.samples}


def test_consensus_does_not_reward_calls_nobody_else_made():
    # a model that over-calls: two samples make the one call asked for, one adds two more
    outputs = [out(["a"], -0.2), out(["a"], -0.1), out(["a", "b", "c"], -0.05)]
    chosen, record = parts_choice(outputs, parts_of, "consensus")
    # each single call agrees fully with the other and by F1 2 x 1 / 4 with the longer answer; that one 0.5 + 0.5
    assert chosen == 1 and record["consensus"] == {"0": 1.5, "1": 1.5, "2": 1.0}
    assert parts_choice(outputs, parts_of, "coverage")[0] == 2  # recall keeps the answer holding every call


def test_consensus_is_the_f1_of_multisets_and_no_call_agrees_only_with_no_call():
    _, record = parts_choice([out(["x"]), out(["x", "x"])], parts_of, "consensus")
    assert record["consensus"] == {"0": pytest.approx(2 / 3, abs=1e-6), "1": pytest.approx(2 / 3, abs=1e-6)}
    _, record = parts_choice([out([]), out([]), out(["x"])], parts_of, "consensus")
    assert record["consensus"] == {"0": 1.0, "1": 1.0, "2": 0.0}


def test_an_unknown_rule_and_consensus_without_parts_are_refused():
    with pytest.raises(ConfigError, match="parts_extractor"):
        build_sampler("best-of-n", uniform_model(), n=2, select="consensus")
    with pytest.raises(ValueError, match="unknown parts rule 'jaccard'"):
        parts_choice([out(["a"]), out(["b"])], parts_of, "jaccard")
