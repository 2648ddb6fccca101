"""Adaptive votes: the stopping rules, the sampler drawing in rounds, and ``METHOD+avote`` in the eval."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from powersampling import ConfigError, FunctionLM, build_sampler
from powersampling.samplers.votes import leader_posterior, vote_stop_reason


def first_token_model(probs: dict[int, float], vocab: int) -> FunctionLM:
    """One answer token drawn from ``probs``, then EOS (token 0): the answer distribution is known exactly."""

    def next_token_logprobs(prefix):
        logits = np.full(vocab, -np.inf)
        if len(prefix) == 1:  # the prompt is one token
            for token, p in probs.items():
                logits[token] = np.log(p)
        else:
            logits[0] = 0.0
        return logits

    return FunctionLM(vocab, 0, next_token_logprobs, name="answers")


def vote(lm, n: int, seed: int = 0, **params):
    return build_sampler(
        "best-of-n",
        lm,
        n=n,
        max_new_tokens=3,
        seed=seed,
        select="majority",
        answer_extractor=lambda t: t or None,
        **params,
    ).sample([1])


def test_the_posterior_is_the_beta_criterion_and_unanimity_stops_after_four_answers():
    assert leader_posterior({"a": 3}) == pytest.approx(1 - 0.5**4)
    assert leader_posterior({"a": 4}) == pytest.approx(1 - 0.5**5)
    assert leader_posterior({"a": 2, "b": 2}) == pytest.approx(0.5)
    assert leader_posterior({}) == pytest.approx(0.5)
    assert vote_stop_reason({"a": 3}, 5, "posterior") is None
    assert vote_stop_reason({"a": 4}, 4, "posterior") == "posterior"
    assert vote_stop_reason({"a": 4}, 4, "posterior", confidence=0.99) is None
    assert vote_stop_reason({"a": 4}, 4, "unbeatable") is None  # 4 more votes for another answer would tie
    assert vote_stop_reason({"a": 5, "b": 1}, 3, "unbeatable") == "unbeatable"
    assert vote_stop_reason({"a": 5, "b": 1}, 4, "unbeatable") is None
    assert vote_stop_reason({"a": 8}, 100, "fixed") is None
    with pytest.raises(ValueError, match="unknown vote_stop"):
        vote_stop_reason({"a": 1}, 1, "soon")


def test_an_alternating_near_tie_never_stops_early():
    """Votes 1, 2, 1, 2, ...: after every round the leader is at most one ahead, so both rules draw all n."""
    n = 16
    for drawn in range(1, n):
        counts = {"1": (drawn + 1) // 2, "2": drawn // 2}
        assert vote_stop_reason(counts, n - drawn, "posterior") is None
        assert vote_stop_reason(counts, n - drawn, "unbeatable") is None


def test_a_model_that_always_gives_one_answer_stops_after_the_first_round_that_settles_it():
    lm = first_token_model({2: 1.0}, 3)
    fixed = vote(lm, 8)
    assert len(fixed.samples) == 8 and "adaptive_vote" not in fixed.metadata
    for round_size in (1, 2, 4):
        adaptive = vote(lm, 8, vote_stop="posterior", round_size=round_size)
        stop = adaptive.metadata["adaptive_vote"]
        assert len(adaptive.samples) == 4 and stop["samples_drawn"] == 4 and stop["stopped_by"] == "posterior"
        assert stop["rounds"] == 4 // round_size and adaptive.metadata["backend_calls"] == stop["rounds"]
        assert adaptive.text == fixed.text == "2"
        assert adaptive.metadata["tokens_generated"] * 2 == fixed.metadata["tokens_generated"]
    # the leader is unbeatable once its votes exceed every sample left: 4 of 7 after a round of 4
    unbeatable = vote(lm, 7, vote_stop="unbeatable", round_size=4)
    assert len(unbeatable.samples) == 4 and unbeatable.metadata["adaptive_vote"]["stopped_by"] == "unbeatable"
    assert len(vote(lm, 8, vote_stop="unbeatable", round_size=4).samples) == 8  # 4 vs 4 left could tie


def test_an_adaptive_vote_over_mh_chains_runs_them_in_rounds_and_counts_each_chains_tokens():
    lm = first_token_model({2: 1.0}, 3)
    params = dict(n_chains=8, max_new_tokens=3, block_size=1, n_mcmc=3, select="majority", seed=0)
    extract = dict(answer_extractor=lambda t: t or None)
    fixed = build_sampler("power", lm, **params, **extract).sample([1])
    assert len(fixed.samples) == 8 and "adaptive_vote" not in fixed.metadata
    for rule, used in (("posterior", 4), ("unbeatable", 6)):  # every chain answers "2"
        adaptive = build_sampler("power", lm, **params, **extract, vote_stop=rule, round_size=2).sample([1])
        stop = adaptive.metadata["adaptive_vote"]
        assert stop["samples_drawn"] == len(adaptive.samples) == used and stop["stopped_by"] == rule
        assert stop["rounds"] == used // 2 and stop["budget"] == 8
        assert adaptive.text == "2" and adaptive.metadata["selected_by"] == "majority"
        per_chain = adaptive.metadata["decoded_tokens_per_chain"]
        assert len(per_chain) == len(adaptive.samples) and sum(per_chain) == adaptive.metadata["tokens_generated"]
    # answers that never agree: every round runs, the budget is spent
    spread = build_sampler("power", lm, **params, answer_extractor=lambda t: None, vote_stop="posterior").sample([1])
    assert len(spread.samples) == 8 and spread.metadata["adaptive_vote"]["stopped_by"] == "budget"
    assert spread.metadata["adaptive_vote"]["rounds"] == 4


def test_many_equally_likely_answers_use_the_whole_budget():
    lm = first_token_model({t: 1 / 40 for t in range(1, 41)}, 41)
    for seed in range(3):
        result = vote(lm, 8, seed=seed, vote_stop="posterior", round_size=2)
        assert len(result.samples) == 8 and result.metadata["adaptive_vote"]["stopped_by"] == "budget"
        assert result.metadata["selected_by"] == "majority"


def test_an_adaptive_vote_needs_a_majority_vote():
    with pytest.raises(ConfigError, match="needs select='majority'"):
        build_sampler("best-of-n", first_token_model({2: 1.0}, 3), n=4, vote_stop="posterior")
    with pytest.raises(ConfigError, match="vote_confidence"):
        build_sampler("best-of-n", first_token_model({2: 1.0}, 3), select="majority", vote_confidence=0.4)


def test_avote_in_the_eval_records_samples_used_and_stops_on_a_settled_answer(tmp_path):
    from powersampling.eval import load_problems
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=3)
    rows = []
    run_eval(
        "gsm8k",
        ["low-temp+vote", "low-temp+avote"],
        3,
        toy_model(problems, p_digit=0.999),
        tmp_path,
        best_of_n=8,
        on_row=rows.append,
        write_report=False,
        **SMALL,
    )
    fixed = [r for r in rows if r["method"] == "low-temp+vote"]
    adaptive = [r for r in rows if r["method"] == "low-temp+avote"]
    assert len(fixed) == len(adaptive) == 3
    assert all(r["n"] == 8 and r["samples_used"] == 8 and "adaptive_vote" not in r["metadata"] for r in fixed)
    for f, a in zip(fixed, adaptive):
        assert a["n"] == 8 and a["samples_used"] == 4 and a["metadata"]["adaptive_vote"]["stopped_by"] == "posterior"
        assert a["params"]["vote_stop"] == "posterior" and a["correct"] == f["correct"]
        assert a["tokens_generated"] * 2 == f["tokens_generated"]
    from powersampling.eval.report import write_report

    summary = write_report(tmp_path, methods=["low-temp+vote", "low-temp+avote"])
    assert summary["methods"]["low-temp+avote"]["mean_samples_used"] == 4.0
    assert "| low-temp+avote (n=8, 4.00 used) |" in (tmp_path / "summary.md").read_text()


def test_power_avote_in_the_eval_records_each_chains_draw_and_its_decoded_tokens(tmp_path):
    from powersampling.eval import load_problems
    from powersampling.eval.curves import selection_points
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=2)
    rows = []
    run_eval(
        "gsm8k",
        ["power+vote@4", "power+avote@4"],
        2,
        toy_model(problems, p_digit=0.999),
        tmp_path,
        on_row=rows.append,
        write_report=False,
        **SMALL,
    )
    for row in rows:
        assert row["n"] == 4 and row["params"]["n_chains"] == 4 and len(row["draws"]) == row["samples_used"]
        assert sum(d["tokens"] for d in row["draws"]) == row["tokens_generated"]
        # a chain decodes its proposals too: more tokens than it returns
        assert all(d["tokens"] > len(d["text"]) for d in row["draws"])
    adaptive = [r for r in rows if r["method"] == "power+avote@4"]
    assert all(r["samples_used"] == 4 or r["metadata"]["adaptive_vote"]["stopped_by"] != "budget" for r in adaptive)
    # the fixed vote's chains replay as votes of 1, 2 and 4 chains at their own decoded tokens
    points = {p.label: p for p in selection_points(rows, "power+vote@4", budgets=(1, 2, 4))}
    full = points["power vote of 4"]
    for row in (r for r in rows if r["method"] == "power+vote@4"):
        assert full.outcomes[row["problem_id"]].tokens == row["tokens_generated"]
        assert full.outcomes[row["problem_id"]].correct == row["correct"]


@pytest.mark.parametrize(
    "methods, params, message",
    [
        (["smc+avote@4"], [], "draws its outputs together"),
        (["power+avote"], [], "votes over its n_chains"),
        (["low-temp+avote"], ["vote_stop=fixed"], "vote_stop=fixed is"),
        (["low-temp+avote"], ["low-temp+avote.vote_confidence=2"], "vote_confidence"),
        (["low-temp+avote"], ["low-temp+avote.round_size=0"], "round_size"),
    ],
)
def test_avote_arguments_are_checked_before_a_model_loads(methods, params, message):
    from powersampling.cli.common import parse_params
    from powersampling.eval.runner import check_arguments

    with pytest.raises(ConfigError, match=message):
        check_arguments("gsm8k", methods, 1, extra_params=parse_params(params))
    with pytest.raises(ConfigError, match="needs answers to compare"):
        check_arguments("humaneval", ["sample+avote"], 1)


def test_scoped_vote_parameters_are_accepted_for_an_avote():
    from powersampling.eval.runner import check_arguments

    check_arguments(
        "gsm8k",
        ["low-temp+avote", "low-temp+vote"],
        1,
        extra_params={"low-temp+avote.vote_confidence": 0.9, "low-temp+avote.vote_stop": "unbeatable"},
    )


@pytest.mark.slow
def test_avote_through_the_cli_on_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--task", "gsm8k", "--methods", "low-temp+vote,low-temp+avote", "--limit", "1"]
    args += ["--best-of-n", "4", "--max-new-tokens", "24", "--seed", "1", "--backend", "transformers"]
    args += ["--param", "low-temp+avote.round_size=2", "--out", str(out), "--no-progress", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "powersampling.cli", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    assert "| low-temp+avote (n=4, " in proc.stdout
    rows = {r["method"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    fixed, adaptive = rows["low-temp+vote"], rows["low-temp+avote"]
    assert fixed["samples_used"] == 4 and adaptive["n"] == 4
    stop = adaptive["metadata"]["adaptive_vote"]
    assert adaptive["samples_used"] == stop["samples_drawn"] in (2, 4) and stop["rounds"] == stop["samples_drawn"] // 2


def quality_run(lm, evaluator, n: int = 8, seed: int = 0, **params):
    return build_sampler(
        "best-of-n", lm, evaluator=evaluator, n=n, max_new_tokens=3, seed=seed, round_size=2, **params
    ).sample([1])


def test_adaptive_quality_stops_after_the_first_round_that_does_not_raise_the_best_score():
    lm = first_token_model({t: 1 / 40 for t in range(1, 41)}, 41)
    flat = quality_run(lm, lambda text: 1.0, quality_margin=0.0)
    stop = flat.metadata["adaptive_quality"]
    assert len(flat.samples) == 4 and stop["rounds"] == 2 and stop["stopped_by"] == "no_improvement"
    assert flat.metadata["selected_by"] == "evaluator" and stop["best_quality"] == 1.0
    fixed = quality_run(lm, lambda text: 1.0)
    assert len(fixed.samples) == 8 and "adaptive_quality" not in fixed.metadata


def test_adaptive_quality_draws_on_while_each_round_improves_by_more_than_the_margin():
    calls = []

    def rising(step):
        def evaluator(text):
            calls.append(text)
            return step * len(calls)

        return evaluator

    lm = first_token_model({t: 1 / 1000 for t in range(1, 1001)}, 1001)
    steep = quality_run(lm, rising(1.0), quality_margin=0.5)  # each round raises the best by 2 > 0.5
    assert len(steep.samples) == 8 and steep.metadata["adaptive_quality"]["stopped_by"] == "budget"
    calls.clear()
    shallow = quality_run(lm, rising(0.1), quality_margin=0.5)  # the second round raises it by 0.2 <= 0.5
    assert len(shallow.samples) == 4 and shallow.metadata["adaptive_quality"]["stopped_by"] == "no_improvement"


def test_adaptive_quality_needs_an_evaluator_and_no_vote():
    lm = first_token_model({2: 1.0}, 3)
    with pytest.raises(ConfigError, match="give an evaluator"):
        build_sampler("best-of-n", lm, n=4, quality_margin=0.1)
    with pytest.raises(ConfigError, match="quality_margin stops a selection"):
        build_sampler("best-of-n", lm, n=4, quality_margin=0.1, select="majority")


def test_aquality_is_checked_before_a_model_loads(tmp_path):
    from powersampling.eval.runner import check_arguments
    from test_eval_taskbench import _data_dir

    with pytest.raises(ConfigError, match="needs a task with a quality score"):
        check_arguments("gsm8k", ["low-temp+aquality"], 1)
    data = _data_dir(tmp_path)
    with pytest.raises(ConfigError, match="draws its outputs together"):
        check_arguments("taskbench", ["power+aquality"], 1, data=data)
    with pytest.raises(ConfigError, match="quality_margin"):
        check_arguments("taskbench", ["low-temp+aquality"], 1, data=data, extra_params={"quality_margin": -1})
    check_arguments("taskbench", ["low-temp+aquality"], 1, data=data, extra_params={"quality_margin": 0.05})


def test_stopping_parameters_are_read_by_the_adaptive_selections_only():
    from powersampling.eval.runner import check_arguments

    # unscoped, they reach the adaptive selection and leave the others as they are
    check_arguments("gsm8k", ["best-of-n", "low-temp+avote"], 1, best_of_n=4, extra_params={"vote_stop": "posterior"})
    with pytest.raises(ConfigError, match="read by '\\+avote' and '\\+aquality' only"):
        check_arguments("gsm8k", ["low-temp+vote"], 1, extra_params={"low-temp+vote.vote_stop": "posterior"})


@pytest.mark.slow
def test_aquality_on_taskbench_with_the_embedded_model(tmp_path):
    from powersampling import load_model
    from powersampling.eval.runner import run_eval
    from test_eval_taskbench import _data_dir

    rows = []
    run_eval(
        "taskbench",
        ["low-temp+quality", "low-temp+aquality"],
        None,
        load_model(None),
        tmp_path / "run",
        data=_data_dir(tmp_path),
        best_of_n=6,
        max_new_tokens=256,
        seed=0,
        progress=False,
        write_report=False,
        on_row=rows.append,
    )
    fixed = [r for r in rows if r["method"] == "low-temp+quality"]
    adaptive = [r for r in rows if r["method"] == "low-temp+aquality"]
    assert len(fixed) == len(adaptive) == 2 and all(r["samples_used"] == 6 for r in fixed)
    for r in adaptive:
        stop = r["metadata"]["adaptive_quality"]
        assert r["n"] == 6 and r["samples_used"] == stop["samples_drawn"] in (4, 6) and stop["margin"] == 0.0
        assert stop["stopped_by"] in ("no_improvement", "budget") and r["params"]["quality_margin"] == 0.0
        if r["quality_score"] is not None and r["metadata"]["selected_by"] == "evaluator":
            assert r["quality_score"] == pytest.approx(stop["best_quality"])
