"""The runner end to end on an exact toy model: rows, grading, resume, settings checks, best-of-n matching, report.

The toy is a byte-level FunctionLM that answers GSM8K questions with the template "So the answer is N." where
every digit of N is right with probability 0.6 and each of the 9 wrong digits has 0.4/9. At T=1 a two-digit
answer is right 36% of the time; under p^4 (power sampling) or at T=1/4 each digit is right with probability
0.6^4 / (0.6^4 + 9 (0.4/9)^4) = 0.9997. So the harness must report low-temp and power far above plain sampling.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from powersampling import FunctionLM
from powersampling.backends.constraints import StopStringConstraint
from powersampling.errors import ConfigError
from powersampling.eval import load_problems
from powersampling.eval.benchmarks import get_benchmark
from powersampling.eval.report import write_report
from powersampling.eval.results import RESULTS_FILE, merge_runs, read_rows
from powersampling.eval.runner import check_arguments, matched_best_of_n, method_seed, prefill_prompt, run_eval

EOS = 256
METHODS = ["sample", "low-temp", "power", "best-of-n"]


class ByteTokenizer:
    def __init__(self, chat: bool) -> None:
        self.has_chat_template = chat

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(t) for t in ids if int(t) < 256).decode("utf-8", "replace")

    def chat_prompt(self, messages) -> list[int]:
        return self.encode("".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: ")


def toy_model(problems, *, chat: bool = True, p_digit: float = 0.6) -> FunctionLM:
    answers = {p.question: p.reference for p in problems}
    tokenizer = ByteTokenizer(chat)
    marker = "assistant: " if chat else "\nAnswer:"

    def next_token_logprobs(prefix):
        text = tokenizer.decode(prefix)
        cut = text.rfind(marker) + len(marker)
        head, generated = text[:cut], text[cut:]
        answer = next(a for q, a in answers.items() if q in head)
        lead = "So the answer is " if chat else " So the answer is "
        template = lead + answer + "." + ("" if chat else "\n\nQuestion: " + "z" * 200)
        position = len(generated)
        logits = np.full(257, -np.inf)
        if position >= len(template):
            logits[EOS] = 0.0
        elif len(lead) <= position < len(lead) + len(answer):  # a digit of the answer
            logits[48:58] = np.log((1 - p_digit) / 9)
            logits[ord(template[position])] = np.log(p_digit)
        else:
            logits[ord(template[position])] = 0.0
        return logits

    lm = FunctionLM(257, EOS, next_token_logprobs, name="toy-gsm8k")
    lm.tokenizer = tokenizer
    return lm


@pytest.fixture(scope="module")
def problems():
    return load_problems("gsm8k", limit=6)


SMALL = dict(alpha=4.0, n_mcmc=3, block_size=8, max_new_tokens=40, seed=7, progress=False)


def test_end_to_end_rows_grades_costs_and_report(problems, tmp_path):
    lm = toy_model(problems)
    summary = run_eval("gsm8k", METHODS, 6, lm, tmp_path, **SMALL)
    rows = read_rows(tmp_path / RESULTS_FILE)
    assert len(rows) == 24
    assert len({(r["problem_id"], r["method"]) for r in rows}) == 24
    by = {m: [r for r in rows if r["method"] == m] for m in METHODS}
    for r in rows:
        assert r["text"].startswith("So the answer is ")
        assert r["correct"] == (r["extracted"] == r["reference"])
        assert r["seed"] == method_seed(7, r["index"], r["method"])
    correct = {m: sum(r["correct"] for r in by[m]) for m in METHODS}
    assert correct["low-temp"] == 6 and correct["power"] == 6
    assert correct["sample"] < 6
    # costs are what the sampler measured
    assert all(r["tokens_generated"] == r["final_tokens"] for r in by["sample"])
    power_tokens = sum(r["tokens_generated"] for r in by["power"])
    assert power_tokens > 2 * sum(r["tokens_generated"] for r in by["sample"])
    for r in by["best-of-n"]:
        assert r["n"] >= 2 and r["n_rule"].startswith("power/sample")
        assert r["tokens_generated"] == r["n"] * r["final_tokens"]  # every candidate has the template's length
        assert 0 <= r["candidates_correct"] <= r["n"]
    m = summary["methods"]
    assert m["power"]["accuracy"] == 1.0 and m["sample"]["accuracy"] == correct["sample"] / 6
    assert m["power"]["token_cost_vs_sample"] == pytest.approx(
        power_tokens / sum(r["tokens_generated"] for r in by["sample"])
    )
    assert (tmp_path / "accuracy_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "summary.md").read_text()
    assert "| power | 6 | 6 | 100.0% |" in md and "McNemar" in md
    assert all(m[k]["hit_token_cap"] == 0 for k in METHODS)  # the template ends well within 40 tokens
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["settings"]["model"] == "toy-gsm8k"


def test_interrupted_run_resumes_to_the_same_rows(problems, tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    run_eval("gsm8k", METHODS, 3, toy_model(problems), full_dir, write_report=False, **SMALL)

    seen = []

    def stop_after_five(row):
        seen.append(row)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval("gsm8k", METHODS, 3, toy_model(problems), cut_dir, on_row=stop_after_five, **SMALL)
    assert len(read_rows(cut_dir / RESULTS_FILE)) == 5
    # a crash in the middle of a write leaves a torn line: it is dropped and the run goes on
    with open(cut_dir / RESULTS_FILE, "a") as fh:
        fh.write('{"problem_id": "1", "meth')
    resumed = []
    run_eval("gsm8k", METHODS, 3, toy_model(problems), cut_dir, on_row=resumed.append, write_report=False, **SMALL)
    assert len(resumed) == 12 - 5
    key = lambda r: (r["problem_id"], r["method"], r["text"], r["seed"], r["correct"], r.get("n"))
    assert sorted(map(key, read_rows(cut_dir / RESULTS_FILE))) == sorted(map(key, read_rows(full_dir / RESULTS_FILE)))
    # nothing left to do: a rerun adds no rows
    run_eval("gsm8k", METHODS, 3, toy_model(problems), cut_dir, write_report=False, **SMALL)
    assert len(read_rows(cut_dir / RESULTS_FILE)) == 12


def test_each_prompt_is_prefilled_once_before_its_methods(problems, tmp_path):
    lm = toy_model(problems)
    calls = []
    original = lm.sample

    def recording_sample(requests, *args, **kwargs):
        calls.extend((tuple(r.prefix[: r.generated_start]), r.max_new_tokens) for r in requests)
        return original(requests, *args, **kwargs)

    lm.sample = recording_sample
    rows = []
    summary = run_eval("gsm8k", ["sample", "low-temp"], 2, lm, tmp_path, on_row=rows.append, **SMALL)
    warmups = [i for i, (_, n) in enumerate(calls) if n == 1]
    assert len(warmups) == 2
    for i in warmups:  # a problem's warm-up comes before every call its methods make
        assert all(calls[j][0] != calls[i][0] for j in range(i))
        assert any(calls[j][0] == calls[i][0] for j in range(i + 1, len(calls)))
    assert all(r["tokens_generated"] == r["final_tokens"] for r in rows)  # the warm-up token is in no row
    by_problem = {}
    for r in rows:
        assert r["prompt_prefill_s"] > 0
        by_problem.setdefault(r["problem_id"], set()).add(r["prompt_prefill_s"])
    assert all(len(v) == 1 for v in by_problem.values())
    assert summary["mean_prompt_prefill_s"] == pytest.approx(np.mean([v.pop() for v in by_problem.values()]))
    assert "Wall times exclude the prompt prefill" in (tmp_path / "summary.md").read_text()
    calls.clear()
    run_eval("gsm8k", ["sample", "low-temp"], 2, lm, tmp_path, write_report=False, **SMALL)
    assert calls == []  # nothing left to run: no warm-up either


def test_prefill_leaves_the_prompt_in_the_prefix_cache(tiny_hf):
    from powersampling.backends.base import ContinuationRequest
    from powersampling.backends.hf import TransformersLM

    lm = TransformersLM(tiny_hf, None, name="tiny")
    prompt = [1, 3, 2, 4, 5, 2, 3, 4] * 3
    prefill_prompt(lm, prompt)
    assert lm.prefill_tokens == len(prompt)
    lm.sample([ContinuationRequest(prompt, 5, generated_start=len(prompt))], 1.0, np.random.default_rng(1))
    assert lm.prefill_tokens == len(prompt) + 1  # only the last prompt token is fed again, for its logits


def test_answers_cut_by_the_token_cap_are_counted(problems, tmp_path):
    summary = run_eval(
        "gsm8k", ["sample", "low-temp"], 3, toy_model(problems), tmp_path, **{**SMALL, "max_new_tokens": 12}
    )  # "So the answer is " alone is 17 tokens
    for m in ("sample", "low-temp"):
        assert summary["methods"][m]["hit_token_cap"] == 3 and summary["methods"][m]["correct"] == 0
    assert "| sample | 3 | 0 | 0.0% |" in (tmp_path / "summary.md").read_text()


def test_runs_side_by_side_merge_into_the_single_run(problems, tmp_path):
    """Two processes over two --offset ranges, merged, give the rows and report of one run over both ranges,
    best-of-n aside: its matched n is a running ratio over the rows of its own folder."""
    methods = ["sample", "low-temp", "power"]
    run_eval("gsm8k", methods, 4, toy_model(problems), tmp_path / "one", **SMALL)
    run_eval("gsm8k", methods, 2, toy_model(problems), tmp_path / "a", write_report=False, **SMALL)
    run_eval("gsm8k", methods, 2, toy_model(problems), tmp_path / "b", offset=2, write_report=False, **SMALL)
    assert merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "merged") == 12
    key = lambda r: (r["problem_id"], r["method"], r["text"], r["seed"], r["correct"], r["tokens_generated"])
    assert sorted(map(key, read_rows(tmp_path / "merged" / RESULTS_FILE))) == sorted(
        map(key, read_rows(tmp_path / "one" / RESULTS_FILE))
    )
    merged = write_report(tmp_path / "merged")
    single = json.loads((tmp_path / "one" / "summary.json").read_text())
    for m in methods:
        for field in ("problems", "correct", "mean_tokens_decoded", "token_cost_vs_sample"):
            assert merged["methods"][m][field] == pytest.approx(single["methods"][m][field])
    stored = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert stored["settings"] == single["settings"]
    assert stored["merged_from"] == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_merge_refuses_what_would_mix_or_double_count(problems, tmp_path):
    run_eval("gsm8k", ["sample"], 2, toy_model(problems), tmp_path / "a", write_report=False, **SMALL)
    run_eval("gsm8k", ["sample"], 2, toy_model(problems), tmp_path / "b", offset=1, write_report=False, **SMALL)
    run_eval(
        "gsm8k",
        ["sample"],
        1,
        toy_model(problems),
        tmp_path / "c",
        offset=3,
        write_report=False,
        **{**SMALL, "alpha": 2.0},
    )
    with pytest.raises(ConfigError, match=r"problem .* with method sample is in both"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m1")
    with pytest.raises(ConfigError, match=r"alpha: 4.0 in .*a, 2.0 in .*c"):
        merge_runs([tmp_path / "a", tmp_path / "c"], tmp_path / "m2")
    with pytest.raises(ConfigError, match="not an evaluation folder"):
        merge_runs([tmp_path / "a", tmp_path / "nowhere"], tmp_path / "m3")
    with pytest.raises(ConfigError, match="at least two"):
        merge_runs([tmp_path / "a"], tmp_path / "m4")
    with pytest.raises(ConfigError, match="already holds rows"):
        merge_runs([tmp_path / "b", tmp_path / "c"], tmp_path / "a")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_resume_with_other_settings_is_refused(problems, tmp_path):
    run_eval("gsm8k", ["sample"], 1, toy_model(problems), tmp_path, write_report=False, **SMALL)
    with pytest.raises(ConfigError, match="alpha"):
        run_eval("gsm8k", ["sample"], 1, toy_model(problems), tmp_path, write_report=False, **{**SMALL, "alpha": 2.0})
    # more problems or more methods with the same settings are fine
    run_eval("gsm8k", ["sample", "low-temp"], 2, toy_model(problems), tmp_path, write_report=False, **SMALL)
    assert len(read_rows(tmp_path / RESULTS_FILE)) == 4


def test_a_method_joins_a_finished_run_with_its_own_parameters(problems, tmp_path):
    run_eval("gsm8k", ["sample", "power"], 2, toy_model(problems), tmp_path, write_report=False, **SMALL)
    scoped = {"scalable-power.top_k": 3, "scalable-power.rollouts": 2, "scalable-power.horizon": 4}
    run_eval(
        "gsm8k", ["scalable-power"], 2, toy_model(problems), tmp_path, write_report=False, extra_params=scoped, **SMALL
    )
    rows = read_rows(tmp_path / RESULTS_FILE)
    scalable = [r for r in rows if r["method"] == "scalable-power"]
    assert len(rows) == 6 and len(scalable) == 2
    assert all(r["params"]["top_k"] == 3 and r["params"]["horizon"] == 4 for r in scalable)
    assert all("top_k" not in r["params"] for r in rows if r["method"] == "power")  # scoped: not given to power
    stored = json.loads((tmp_path / "run.json").read_text())["settings"]["extra_params"]
    assert stored == scoped
    # once the method has rows, its parameters are fixed like every other setting
    with pytest.raises(ConfigError, match="extra_params"):
        run_eval(
            "gsm8k",
            ["scalable-power"],
            3,
            toy_model(problems),
            tmp_path,
            write_report=False,
            extra_params={**scoped, "scalable-power.top_k": 5},
            **SMALL,
        )
    # an unscoped parameter changes every method's rows: refused
    with pytest.raises(ConfigError, match="extra_params"):
        run_eval(
            "gsm8k",
            ["sample"],
            3,
            toy_model(problems),
            tmp_path,
            write_report=False,
            extra_params={"scan": "random"},
            **SMALL,
        )
    assert len(read_rows(tmp_path / RESULTS_FILE)) == 6
    # another method joins the folder without repeating the parameters of one it does not run; they stay stored
    run_eval("gsm8k", ["low-temp"], 2, toy_model(problems), tmp_path, write_report=False, **SMALL)
    assert len(read_rows(tmp_path / RESULTS_FILE)) == 8
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["extra_params"] == scoped
    # but the method that has rows, run again without its parameters, would change them: refused
    with pytest.raises(ConfigError, match="extra_params"):
        run_eval("gsm8k", ["scalable-power"], 3, toy_model(problems), tmp_path, write_report=False, **SMALL)


def test_a_method_run_in_its_own_folder_merges_with_its_parameters(problems, tmp_path):
    scoped = {"scalable-power.top_k": 3, "scalable-power.horizon": 4}
    run_eval("gsm8k", ["sample"], 2, toy_model(problems), tmp_path / "a", write_report=False, **SMALL)
    for name, params, offset in (("b", scoped, 0), ("c", {"scalable-power.top_k": 2}, 2)):
        run_eval(
            "gsm8k", ["scalable-power"], 2, toy_model(problems), tmp_path / name, write_report=False,
            extra_params=params, offset=offset, **SMALL,
        )  # fmt: skip
    assert merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "ab") == 4
    assert json.loads((tmp_path / "ab" / "run.json").read_text())["settings"]["extra_params"] == scoped
    with pytest.raises(ConfigError, match="other parameters"):  # the same method's rows with other parameters
        merge_runs([tmp_path / "ab", tmp_path / "c"], tmp_path / "abc")


def test_best_of_n_given_its_n_by_a_scoped_parameter_runs_and_merges_without_power(problems, tmp_path):
    """``--param best-of-n.n=N`` fixes n for one method, so best-of-n can run in its own folder (no power rows to
    match) and still merge with a run whose settings fixed nothing."""
    run_eval("gsm8k", ["sample"], 2, toy_model(problems), tmp_path / "a", write_report=False, **SMALL)
    run_eval(
        "gsm8k", ["best-of-n"], 2, toy_model(problems), tmp_path / "b", write_report=False,
        extra_params={"best-of-n.n": 3}, **SMALL,
    )  # fmt: skip
    assert [(r["n"], r["n_rule"]) for r in read_rows(tmp_path / "b" / RESULTS_FILE)] == [(3, "fixed by --param n")] * 2
    assert merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "ab") == 4
    with pytest.raises(ConfigError, match=r"--param best-of-n.n=N"):
        check_arguments("gsm8k", ["best-of-n"], 1)


def test_scoped_parameters_are_checked_against_their_method(problems, tmp_path):
    with pytest.raises(ConfigError, match="not one of the methods"):
        check_arguments("gsm8k", ["sample"], 1, extra_params={"smc.n_particles": 4})
    with pytest.raises(ConfigError, match="do not apply"):
        check_arguments("gsm8k", ["power"], 1, extra_params={"power.top_k": 4})
    with pytest.raises(ConfigError, match="top_k"):
        check_arguments("gsm8k", ["scalable-power"], 1, extra_params={"scalable-power.top_k": 0})


def test_bad_arguments_fail_before_sampling(problems, tmp_path):
    lm = toy_model(problems)
    with pytest.raises(ConfigError, match="unknown method"):
        run_eval("gsm8k", ["sample", "beam"], 1, lm, tmp_path)
    with pytest.raises(ConfigError, match="unknown task"):
        run_eval("gsm9k", ["sample"], 1, lm, tmp_path)
    with pytest.raises(ConfigError, match="n_mcmc"):
        run_eval("gsm8k", ["power"], 1, lm, tmp_path, n_mcmc=0)
    with pytest.raises(ConfigError, match="needs power"):
        run_eval("gsm8k", ["sample", "best-of-n"], 1, lm, tmp_path / "bon", **SMALL)
    assert not (tmp_path / "bon" / RESULTS_FILE).exists()
    assert not (tmp_path / RESULTS_FILE).exists()


def test_matched_best_of_n_rule():
    rows = [
        {"problem_id": "a", "method": "sample", "tokens_generated": 100, "metadata": {}},
        {"problem_id": "a", "method": "power", "tokens_generated": 1250, "metadata": {"cost_multiplier": 9.0}},
        {"problem_id": "b", "method": "sample", "tokens_generated": 50, "metadata": {}},
        {"problem_id": "b", "method": "power", "tokens_generated": 550, "metadata": {"cost_multiplier": 9.0}},
    ]
    assert matched_best_of_n(rows)[0] == 12  # 1800 / 150
    assert matched_best_of_n([r for r in rows if r["method"] == "power"])[0] == 9
    assert matched_best_of_n(rows[:2] + [{**rows[1], "problem_id": "c", "tokens_generated": 10**6}])[0] == 12
    assert (
        matched_best_of_n(
            [{"problem_id": "a", "method": "power", "tokens_generated": 5, "metadata": {"cost_multiplier": 1.0}}]
        )[0]
        == 2
    )  # at least 2 candidates


def test_method_seeds_are_distinct_and_stable():
    seeds = {method_seed(0, i, m) for i in range(50) for m in METHODS}
    assert len(seeds) == 200
    assert method_seed(3, 1, "power") == method_seed(3, 1, "power") != method_seed(4, 1, "power")


def test_stop_strings_end_a_fewshot_completion(problems, tmp_path):
    """A base-model prompt: the toy keeps writing the next 'Question:' forever unless the stop string ends it."""
    lm = toy_model(problems, chat=False)
    plan = get_benchmark("gsm8k").prompt(problems[0], lm, "fewshot", None)
    assert plan.stops == ("Question:", "\n\n") and plan.text.endswith("\nAnswer:")
    rows = []
    run_eval("gsm8k", ["low-temp"], 2, lm, tmp_path, on_row=rows.append, write_report=False, **SMALL)
    for r in rows:
        assert r["text"].endswith("\n\n") and r["final_tokens"] < 40
        assert r["correct"]


def test_stop_string_constraint_states():
    tok = ByteTokenizer(chat=False)
    constraint = StopStringConstraint(tok, ["\n\n", "Question:"])
    state = constraint.start(tok.encode("So the answer"))
    assert not state.is_finished() and state.allowed_tokens() is None  # no mask: every token allowed
    for ch in " is 5.\nQuestion":
        state.advance(ord(ch))
        assert not state.is_finished()
    state.advance(ord(":"))
    assert state.is_finished()
    assert constraint.start(tok.encode("x\n\n")).is_finished()
    with pytest.raises(ValueError):
        StopStringConstraint(tok, [])


def test_vote_methods_pick_the_answer_most_outputs_give(problems, tmp_path):
    """sample+vote: n samples at T=1, n matched to power's cost, the majority answer returned; the toy model puts
    60% on each right digit, so most samples agree on the right answer and the vote is right more often."""
    lm = toy_model(problems, p_digit=0.6)
    rows = []
    run_eval(
        "gsm8k",
        ["sample", "power", "sample+vote", "smc+vote"],
        6,
        lm,
        tmp_path,
        on_row=rows.append,
        write_report=False,
        **SMALL,
    )
    votes = [r for r in rows if r["method"] == "sample+vote"]
    assert len(votes) == 6 and all(r["n"] >= 2 and r["n_rule"].startswith("power/sample") for r in votes)
    for r in votes + [r for r in rows if r["method"] == "smc+vote"]:
        vote = r["metadata"]["vote"]
        assert r["metadata"]["selected_by"] == "majority" and vote["winner"] == vote_answer(r["text"])
        assert vote["votes"][vote["winner"]] == max(vote["votes"].values())
    single = sum(r["correct"] for r in rows if r["method"] == "sample")
    assert sum(r["correct"] for r in votes) >= single


def vote_answer(text):
    from powersampling.eval.grading import gsm8k_vote_answer

    return gsm8k_vote_answer(text)


def test_vote_methods_are_checked_before_a_model_loads():
    with pytest.raises(ConfigError, match="needs answers to compare; humaneval has none"):
        check_arguments("humaneval", ["sample+vote"], 1)
    with pytest.raises(ConfigError, match="n_chains"):
        check_arguments("gsm8k", ["power+vote"], 1)
    with pytest.raises(ConfigError, match="n_particles=N with N >= 2"):
        check_arguments("gsm8k", ["smc+vote"], 1, extra_params={"smc+vote.n_particles": 1})
    check_arguments("gsm8k", ["smc+vote"], 1)  # 8 particles by default
    with pytest.raises(ConfigError, match="unknown method"):
        check_arguments("gsm8k", ["nope+vote"], 1)


def test_a_vote_over_a_one_sample_method_draws_candidates_at_that_methods_temperature(problems, tmp_path):
    from powersampling.samplers.registry import one_sample_temperature

    assert one_sample_temperature("sample") == 1.0 and one_sample_temperature("low-temp", alpha=4.0) == 0.25
    assert all(one_sample_temperature(m) is None for m in ("greedy", "best-of-n", "power", "smc"))
    rows = []
    methods = ["low-temp+vote", "power", "low-temp"]
    run_eval("gsm8k", methods, 2, toy_model(problems), tmp_path, on_row=rows.append, **SMALL)
    votes = [r for r in rows if r["method"] == "low-temp+vote"]
    # the vote's n is matched to this problem's power cost too: it runs after the methods it is measured against
    assert len(votes) == 2 and [r["method"] for r in rows[:3]] == ["low-temp", "power", "low-temp+vote"]
    for r in votes:
        assert r["params"]["temperature"] == 0.25 and r["n"] >= 2 and r["n_rule"].startswith("power/low-temp")
        assert r["metadata"]["selected_by"] == "majority"
