"""Budget curves: votes of every size and adaptive votes replayed from one run's recorded draws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from powersampling import ConfigError, build_sampler
from powersampling.eval.curves import (
    replay,
    replay_adaptive_quality,
    replay_adaptive_vote,
    replayable,
    row_points,
    selection_points,
)
from powersampling.eval.runner import check_arguments, method_budget, split_method

ROOT = Path(__file__).resolve().parents[1]


def draws(answers, correct_answer="3", logprobs=None):
    logprobs = logprobs or [-1.0] * len(answers)
    return [
        {"tokens": 4, "logprob": lp, "complete": a is not None, "answer": a, "correct": a == correct_answer}
        for a, lp in zip(answers, logprobs)
    ]


def test_method_names_may_fix_a_selection_budget():
    assert split_method("low-temp+vote@8") == ("low-temp", "+vote")
    assert method_budget("low-temp+vote@8") == 8 and method_budget("smc+vote") is None
    for bad, message in [("low-temp@3", "follows a selection"), ("low-temp+vote@0", ">= 1"), ("smc+vote@x", ">= 1")]:
        with pytest.raises(ConfigError, match=message):
            check_arguments("gsm8k", [bad], 1)


def test_a_vote_of_k_uses_the_first_k_draws_and_breaks_ties_by_mean_log_p():
    d = draws(["5", "3", "3", "5", "5", "5"], logprobs=[-2.0, -1.0, -1.0, -2.0, -2.0, -2.0])
    assert replay(d, 1).correct is False and replay(d, 1).tokens == 4
    assert replay(d, 2).correct is True  # a 1-1 tie, won by the likelier draw
    assert replay(d, 3).correct is True and replay(d, 6).correct is False
    assert replay(d, 6).tokens == 24 and replay(d, 6).samples == 6
    with pytest.raises(ValueError):
        replay(d, 7)


def test_without_any_answer_the_likeliest_draw_is_returned():
    d = draws([None, None], logprobs=[-8.0, -4.0])
    d[1]["correct"] = True
    assert replay(d, 2).correct is True


def test_adaptive_replay_stops_where_the_rules_say():
    unanimous = draws(["3"] * 8)
    assert replay_adaptive_vote(unanimous, "posterior", round_size=2).samples == 4  # P = 1 - 2^-5 >= 0.95
    assert replay_adaptive_vote(unanimous, "unbeatable", round_size=2).samples == 6  # 6 > 0 + 2 left
    split = draws(["3", "5"] * 4)
    assert replay_adaptive_vote(split, "posterior", round_size=2).samples == 8


def test_a_quality_selection_replays_the_best_score_and_its_margin_rule():
    d = draws(["5", "3", "5", "5", "3", "5"])
    for draw, score in zip(d, [0.2, 0.9, 0.1, 0.95, 0.3, 0.99]):
        draw["quality_score"] = score
    assert replay(d, 1, "quality").correct is False and replay(d, 2, "quality").correct is True
    assert replay(d, 4, "quality").correct is False  # 0.95 beats 0.9
    # rounds of 2: best 0.9, then 0.95 (+0.05), then 0.99 (+0.04)
    assert replay_adaptive_quality(d, margin=0.0).samples == 6
    assert replay_adaptive_quality(d, margin=0.045).samples == 6  # +0.05 clears it, the last round ends the budget
    assert replay_adaptive_quality(d, margin=0.06).samples == 4
    unscored = draws(["5", "3"])
    assert replay(unscored, 2, "quality").tokens == 8


def test_a_selection_at_several_fixed_budgets_is_one_family():
    rows = [
        {"method": m, "problem_id": "p1", "correct": c, "tokens_generated": t, "params": {"n_particles": k}}
        for m, c, t, k in (("smc+vote@2", False, 250, 2), ("smc+vote", True, 1000, 8), ("low-temp", True, 130, None))
    ]
    points = row_points(rows, ["smc+vote@2", "smc+vote", "low-temp"])
    assert [(p.label, p.family, p.mean_samples) for p in points] == [
        ("smc+vote@2", "smc+vote", 2),
        ("smc+vote", "smc+vote", 8),
        ("low-temp", "low-temp", 1),
    ]


def test_taskbench_points_use_pooled_node_f1():
    from powersampling.eval.benchmarks import get_benchmark

    taskbench = get_benchmark("taskbench")
    perfect = {"correct": True, "node_counts": [2, 0, 0], "edge_counts": [1, 0, 0]}
    half = {"correct": False, "node_counts": [1, 1, 1], "edge_counts": [0, 0, 1]}
    assert taskbench.curve_metric([perfect, perfect])[0] == pytest.approx(1.0)
    assert taskbench.curve_metric([perfect, half])[0] == pytest.approx(0.75)  # pooled: tp 3, fp 1, fn 1
    assert taskbench.curve_difference([perfect, perfect], [perfect, half])["difference"] == pytest.approx(-0.25)


def test_the_replay_stops_and_answers_as_the_adaptive_sampler_does_on_its_own_draws():
    """Replaying the adaptive sampler's own draws (padded to the budget with draws it never reached, which cannot
    matter before its stop) must stop after as many samples and return the same answer."""
    from test_adaptive_votes import first_token_model

    lm = first_token_model({3: 0.45, 4: 0.35, 5: 0.2}, vocab=8)
    stops = set()
    for seed in range(16):
        adaptive = build_sampler(
            "best-of-n",
            lm,
            n=8,
            max_new_tokens=3,
            seed=seed,
            select="majority",
            answer_extractor=lambda t: t or None,
            vote_stop="posterior",
            round_size=2,
        ).sample([1])
        recorded = [
            {
                "tokens": len(c.token_ids),
                "logprob": c.logprob,
                "complete": c.complete,
                "answer": c.text or None,
                "correct": c.text == adaptive.text,
            }
            for c in adaptive.samples
        ]
        recorded += draws([None] * (8 - len(recorded)), logprobs=[-99.0] * (8 - len(recorded)))
        again = replay_adaptive_vote(recorded, "posterior", round_size=2)
        assert again.samples == len(adaptive.samples) and again.correct
        stops.add(again.samples)
    assert len(stops) > 1  # the seeds exercise early stops and full budgets alike


def test_an_eval_run_records_draws_that_replay_to_its_own_verdicts(tmp_path):
    from powersampling.eval import load_problems
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=4)
    rows = []
    run_eval(
        "gsm8k",
        ["low-temp+vote@6"],
        4,
        toy_model(problems, p_digit=0.5),
        tmp_path,
        on_row=rows.append,
        write_report=False,
        **SMALL,
    )
    assert len(rows) == 4
    for row in rows:
        assert row["n"] == 6 and len(row["draws"]) == 6 and row["n_rule"].startswith("fixed by the method name")
        assert sum(d["tokens"] for d in row["draws"]) == row["tokens_generated"]
        assert row["candidates_correct"] == sum(d["correct"] for d in row["draws"])
        assert replay(row["draws"], 6).correct == row["correct"]
    points = selection_points(rows, "low-temp+vote@6", budgets=(1, 2, 6))
    assert [p.problems for p in points] == [4] * 5
    assert points[-1].label.startswith("low-temp adaptive vote (posterior")


def test_best_of_n_candidates_replay_to_the_rows_pick_and_give_smaller_budgets(tmp_path):
    """best-of-n keeps the candidate of highest mean log p; its recorded draws replay to that pick, and the first k
    of them give best-of-k. A budget past the recorded draws is replaced by the full n."""
    from powersampling.eval import load_problems
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=3)
    rows = []
    run_eval(
        "gsm8k", ["best-of-n"], 3, toy_model(problems, p_digit=0.5), tmp_path, on_row=rows.append,
        write_report=False, extra_params={"best-of-n.n": 4}, **SMALL,
    )  # fmt: skip
    for row in rows:
        pick = replay(row["draws"], 4, "likeliest")
        assert pick.correct == row["correct"] and pick.tokens == row["tokens_generated"]
    points = selection_points(rows, "best-of-n", budgets=(1, 2, 8))
    assert [p.label for p in points] == ["best-of-n (one of the draws)", "best of 2", "best of 4"]
    assert [p.problems for p in points] == [3, 3, 3]
    assert not replayable("sample") and replayable("best-of-n") and replayable("smc+vote@4")
    with pytest.raises(ValueError, match="do not replay"):
        selection_points([{**rows[0], "method": "sample"}], "sample")


def test_the_curve_script_writes_a_table_plot_and_json(tmp_path):
    from powersampling.eval import load_problems
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=3)
    run_eval(
        "gsm8k",
        ["low-temp", "low-temp+vote@4"],
        3,
        toy_model(problems, p_digit=0.5),
        tmp_path,
        write_report=False,
        **SMALL,
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_tokens.py"), str(tmp_path), "--budgets", "1,2,4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "accuracy_vs_tokens.json").read_text())
    labels = [p["label"] for p in document["points"]]
    assert labels[0] == "low-temp" and "low-temp vote of 4" in labels
    assert {c["reference"] for c in document["paired"]} == {"low-temp"} and len(document["paired"]) == 5
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 0
    missing = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_tokens.py"), str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "holds no results.jsonl" in missing.stderr
    replayed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_tokens.py"), str(tmp_path), "--budgets", "1,2,4"]
        + ["--reference", "low-temp vote of 4", "--out", str(tmp_path / "vs-vote")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replayed.returncode == 0, replayed.stderr
    against_vote = json.loads((tmp_path / "vs-vote" / "accuracy_vs_tokens.json").read_text())["paired"]
    assert {c["reference"] for c in against_vote} == {"low-temp vote of 4"} and len(against_vote) == 5
    unknown = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_tokens.py"), str(tmp_path), "--reference", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        unknown.returncode == 2
        and "no point is named 'nope'" in unknown.stderr
        and "low-temp vote of 4" in unknown.stderr
    )


def test_two_folders_give_one_figure_paired_by_problem(tmp_path):
    """Two runs of one task (here two models) are compared on the problems both ran: each point is labelled with its
    folder's name, and a point of one folder is paired with the reference of the other."""
    from powersampling.eval import load_problems
    from powersampling.eval.results import RESULTS_FILE, read_rows
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=4)
    for name, p_digit, limit in (("weak", 0.3, 4), ("strong", 0.9, 3)):
        run_eval(
            "gsm8k", ["greedy", "low-temp+vote@2"], limit, toy_model(problems, p_digit=p_digit), tmp_path / name,
            write_report=False, **SMALL,
        )  # fmt: skip
    script = [sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_tokens.py")]
    runs = [str(tmp_path / "weak"), str(tmp_path / "strong")]
    options = ["--names", "a,b", "--reference", "a: greedy", "--budgets", "1,2", "--out", str(tmp_path / "ab")]
    done = subprocess.run([*script, *runs, *options], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "ab" / "accuracy_vs_tokens.json").read_text())
    labels = [p["label"] for p in document["points"]]
    assert labels[0] == "a: greedy" and "b: greedy" in labels and "b: low-temp vote of 2" in labels
    against = {c["label"]: c for c in document["paired"]}
    assert against["a: low-temp vote of 2"]["problems"] == 4 and against["b: greedy"]["problems"] == 3
    weak = {
        r["problem_id"]: r["correct"] for r in read_rows(tmp_path / "weak" / RESULTS_FILE) if r["method"] == "greedy"
    }
    strong = {
        r["problem_id"]: r["correct"] for r in read_rows(tmp_path / "strong" / RESULTS_FILE) if r["method"] == "greedy"
    }
    expected = sum(strong[p] - weak[p] for p in strong) / len(strong)
    assert against["b: greedy"]["difference"] == pytest.approx(expected)
    assert document["run"] == {"a": runs[0], "b": runs[1]}

    def refused(*extra):
        return subprocess.run([*script, *extra], capture_output=True, text=True, timeout=60)

    no_out = refused(*runs)
    assert no_out.returncode == 2 and "--out names the folder" in no_out.stderr
    names = refused(*runs, "--names", "a", "--out", str(tmp_path / "x"))
    assert names.returncode == 2 and "1 name(s) for 2 folder(s)" in names.stderr
    same = refused(*runs, "--names", "a,a", "--out", str(tmp_path / "x"))
    assert same.returncode == 2 and "different, non-empty names" in same.stderr
    other = tmp_path / "other"
    other.mkdir()
    rows = [{**r, "task": "mbpp"} for r in read_rows(tmp_path / "weak" / RESULTS_FILE)]
    (other / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    mixed = refused(runs[0], str(other), "--out", str(tmp_path / "x"))
    assert mixed.returncode == 2 and "different tasks (gsm8k, mbpp)" in mixed.stderr


def test_a_method_with_draws_on_only_some_rows_keeps_its_point_over_all_rows(tmp_path):
    """Rows written before a method recorded its draws cannot be replayed; the method's own point still counts them,
    and its replays count only the rows that have draws."""
    from powersampling.eval import load_problems
    from powersampling.eval.results import RESULTS_FILE, read_rows
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=3)
    run_eval(
        "gsm8k", ["low-temp", "low-temp+vote@2"], 3, toy_model(problems, p_digit=0.5), tmp_path,
        write_report=False, **SMALL,
    )  # fmt: skip
    rows = read_rows(tmp_path / RESULTS_FILE)
    older = next(r["problem_id"] for r in rows if r["method"] == "low-temp+vote@2")
    rows = [{k: v for k, v in r.items() if k != "draws"} if r["problem_id"] == older else r for r in rows]
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    points = {p["label"]: p for p in _curve_points(tmp_path)}
    assert points["low-temp+vote@2"]["problems"] == 3
    assert points["low-temp vote of 2"]["problems"] == 2

    run_eval(
        "gsm8k", ["low-temp+vote@3"], 3, toy_model(problems, p_digit=0.5), tmp_path, write_report=False, **SMALL
    )  # a second vote run replays to the same labels: each is named with its run
    labels = [p["label"] for p in _curve_points(tmp_path)]
    assert len(labels) == len(set(labels))
    assert "low-temp vote of 2 [low-temp+vote@2]" in labels and "low-temp vote of 2 [low-temp+vote@3]" in labels


def _curve_points(folder: Path) -> list[dict]:
    """The points the curve script writes for ``folder`` (budgets 1 and 2)."""
    script = [sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_tokens.py"), str(folder), "--budgets", "1,2"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads((folder / "accuracy_vs_tokens.json").read_text())["points"]
