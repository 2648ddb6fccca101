"""BFCL in the evaluation harness: the data loads by category, prompts carry the functions under the tools grammar,
BFCL's own AST checker grades gold answers right and wrong ones wrong, irrelevance takes "no call", votes compare
call sets, and an end-to-end run on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_module

needs_module("bfcl_eval", "pip install --no-deps bfcl-eval==2026.3.23")

from powersampling.errors import ConfigError
from powersampling.eval import load_problems
from powersampling.eval.benchmarks import ExecLimits, get_benchmark

ROOT = Path(__file__).resolve().parents[1]


def turn(*calls: tuple[str, dict]) -> str:
    return json.dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in calls]})


def grade(problem, text):
    return get_benchmark("bfcl").grade(problem, text, None, ExecLimits())


@pytest.fixture(scope="module")
def problems():
    return {p.problem_id: p for p in load_problems("bfcl")}


def test_every_category_loads_interleaved_with_its_functions_as_tool_specs(problems):
    ids = list(problems)
    assert len(ids) == 400 + 200 + 200 + 200 + 240
    assert ids[:6] == [
        "simple_python_0",
        "multiple_0",
        "parallel_0",
        "parallel_multiple_0",
        "irrelevance_0",
        "simple_python_1",
    ]
    tools = problems["simple_python_1"].fields["bfcl"].tools
    assert [t.name for t in tools] == ["math.factorial"] and tools[0].properties["number"]["type"] == "integer"
    # BFCL's own types become JSON Schema: float -> number, dict -> object, tuple -> array
    kinds = {
        v["type"]
        for p in problems.values()
        for t in p.fields["bfcl"].tools
        for v in t.properties.values()
        if "type" in v
    }
    assert kinds <= {"string", "integer", "number", "boolean", "array", "object"}
    for problem in problems.values():  # every entry's turn has its instructions and its grammar's schema
        turn = get_benchmark("bfcl").turn(problem)
        assert turn.instructions() and turn.schema()["anyOf"]
    chosen = load_problems("bfcl", 3, 0, categories="irrelevance,parallel")
    assert [p.problem_id for p in chosen] == ["irrelevance_0", "parallel_0", "irrelevance_1"]


def test_the_tool_list_says_what_each_parameter_means_and_the_prompt_is_fingerprinted(problems, monkeypatch):
    """The prompt lists each parameter's description (where BFCL's functions say what an optional parameter
    defaults to) and asks for one call per thing the request asks; a run's fingerprint covers the prompt, so rows
    of another prompt are not resumed or merged."""
    from powersampling.eval.benchmarks.bfcl import BFCL
    from powersampling.planner.turns import ToolTurn

    bfcl = get_benchmark("bfcl")
    entry = problems["simple_python_57"]
    text = bfcl.turn(entry).instructions()
    assert "\n    calibration_factor: The calibration factor to adjust the density, default value is 1e9" in text
    chosen = [entry, problems["parallel_3"]]
    before = bfcl.data_fingerprint(chosen)
    # the run's categories count, not its slice: --offset parts of one run have one fingerprint and merge
    assert bfcl.data_fingerprint([problems["simple_python_0"], problems["parallel_9"]]) == before
    assert bfcl.data_fingerprint(chosen[:1]) != before

    def one_call(tools):  # a prompt that also says "Make one call."
        return ToolTurn(tuple(tools), "auto", 1)

    monkeypatch.setattr(BFCL, "turn_for", staticmethod(one_call))
    assert "Make one call." in bfcl.turn(entry).instructions() and bfcl.data_fingerprint(chosen) != before
    # a turn of several calls shows a list of several and asks for one call per thing asked; a turn of one does not
    assert "...}}, ...]}, one call for each thing the request asks;" in text
    assert "one call for each" not in bfcl.turn(entry).instructions()


@pytest.mark.parametrize(
    "task, categories, message",
    [
        ("bfcl", "simple_python,nope", "unknown BFCL categories nope"),
        ("bfcl", "parallel,parallel", "repeat"),
        ("bfcl", " , ", "unknown BFCL categories (none)"),
        ("gsm8k", "simple_python", "gsm8k has none"),
    ],
)
def test_bad_categories_are_one_line_errors(task, categories, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_problems(task, 1, categories=categories)


def test_gold_answers_are_correct_and_wrong_ones_are_not_through_bfcls_checker(problems):
    simple = problems["simple_python_0"]  # calculate_triangle_area(base=10, height=5, unit optional)
    assert grade(simple, turn(("calculate_triangle_area", {"base": 10, "height": 5}))).correct
    assert grade(simple, turn(("calculate_triangle_area", {"base": 10, "height": 5, "unit": "units"}))).correct
    wrong = grade(simple, turn(("calculate_triangle_area", {"base": 11, "height": 5})))
    assert not wrong.correct and wrong.fields["error_type"] == "value_error:others"
    twice = grade(simple, turn(*[("calculate_triangle_area", {"base": 10, "height": 5})] * 2))
    assert not twice.correct and "wrong_count" in twice.detail
    assert grade(problems["simple_python_1"], turn(("math.factorial", {"number": 5}))).correct  # dotted names
    text_answer = grade(simple, json.dumps({"content": "The area is 25."}))
    assert not text_answer.correct and text_answer.fields["error_type"] == "ast_decoder:no_call"
    cut = grade(simple, '{"tool_calls": [{"name": "calculate_triangle_area", "arguments": {"base": 1')
    assert not cut.correct and not cut.fields["complete_turn"] and cut.extracted is None
    # parallel: any order of the calls
    parallel = problems["parallel_0"]
    calls = [
        ("spotify.play", {"artist": "Taylor Swift", "duration": 20}),
        ("spotify.play", {"artist": "Maroon 5", "duration": 15}),
    ]
    assert grade(parallel, turn(*calls)).correct and grade(parallel, turn(*calls[::-1])).correct
    assert not grade(parallel, turn(calls[0])).correct


def test_irrelevance_takes_no_call(problems):
    entry = problems["irrelevance_0"]  # a triangle's area, offered only a BMI function
    no_call = grade(entry, json.dumps({"content": "No function fits."}))
    assert no_call.correct and no_call.extracted == "no call"
    called = grade(entry, turn(("determine_body_mass_index", {"weight": 10.0, "height": 5.0})))
    assert not called.correct and called.fields["error_type"] == "irrelevance_error:decoder_success"
    cut = grade(entry, '{"tool_calls": [{"name": "determine_body_mass_index", "argu')
    assert not cut.correct and cut.fields["error_type"] == "incomplete_turn"


def test_the_vote_compares_canonical_call_sets(problems):
    extract = get_benchmark("bfcl").answer_extractor(problems["parallel_0"])
    a = turn(("spotify.play", {"artist": "A", "duration": 2}), ("spotify.play", {"duration": 3, "artist": "B"}))
    b = turn(("spotify.play", {"artist": "B", "duration": 3}), ("spotify.play", {"duration": 2, "artist": "A"}))
    assert extract(a) == extract(b) != extract(turn(("spotify.play", {"artist": "A", "duration": 2})))
    assert extract(json.dumps({"content": "x"})) == extract(json.dumps({"content": "y"})) == "no call"
    assert extract('{"tool_calls": [') is None


def test_prompt_describes_the_functions_and_its_grammar_admits_the_gold_answer(problems):
    from test_server_openai import tiny_smol_model

    model = tiny_smol_model()
    bench = get_benchmark("bfcl")
    prompt = bench.prompt(problems["simple_python_1"], model, "chat", None)
    assert "math.factorial" in prompt.text and "Calculate the factorial of 5" in prompt.text
    gold = turn(("math.factorial", {"number": 5}))
    assert prompt.constraint.accepts(model.tokenizer.encode(gold))
    assert prompt.constraint.accepts(model.tokenizer.encode(json.dumps({"content": "none"})))
    assert not prompt.constraint.accepts(model.tokenizer.encode(turn(("math.factorial", {"number": "five"}))))
    assert not prompt.constraint.accepts(model.tokenizer.encode(turn(("math.gamma", {"number": 5}))))
    # the same turn (auto: calls or text) for every category: the prompt never says which one an entry is in
    irrelevant = bench.prompt(problems["irrelevance_0"], model, "chat", None)
    assert (
        prompt.text.split("You can call")[1].split("\n")[-1] == irrelevant.text.split("You can call")[1].split("\n")[-1]
    )


def test_greedy_and_a_vote_run_and_regrade_on_a_tiny_model(tmp_path):
    from powersampling.eval.report import write_report
    from powersampling.eval.results import read_rows
    from powersampling.eval.runner import regrade_rows, run_eval
    from test_server_openai import tiny_smol_model

    out = tmp_path / "run"
    summary = run_eval(
        "bfcl",
        ["greedy", "sample+vote"],
        2,
        tiny_smol_model(),
        out,
        categories="simple_python,irrelevance",
        best_of_n=2,
        max_new_tokens=48,
        progress=False,
    )
    rows = read_rows(out / "results.jsonl")
    assert {(r["problem_id"], r["method"]) for r in rows} == {
        (p, m) for p in ("simple_python_0", "irrelevance_0") for m in ("greedy", "sample+vote")
    }
    for row in rows:
        assert row["category"] == row["problem_id"].rsplit("_", 1)[0]
    by_category = summary["methods"]["greedy"]["by_category"]
    assert set(by_category) == {"simple_python", "irrelevance"} and all(
        v["problems"] == 1 for v in by_category.values()
    )
    report = (out / "summary.md").read_text()
    assert "Accuracy by BFCL category" in report and "Paired difference from greedy by category" in report
    assert set(summary["bfcl_versus_baseline"]["methods"]["sample+vote"]) == {"simple_python", "irrelevance"}
    verdicts = [r["correct"] for r in rows]
    assert regrade_rows(rows) == 0 and [r["correct"] for r in rows] == verdicts
    write_report(out)


def test_the_parts_choices_compare_canonical_calls_and_run_replay_and_regrade(problems, tmp_path):
    """``+cover`` keeps the candidate whose calls contain the most of the other candidates' calls, ``+consensus``
    the one whose calls agree best with theirs; their rows record each draw's calls as parts, the replay at the
    full budget returns the row's own pick, and regrading fills in the parts of rows recorded without them
    (best-of-n's candidates then replay as coverage and consensus of k too)."""
    from powersampling.eval.curves import replay, selection_points
    from powersampling.eval.results import read_rows, write_rows
    from powersampling.eval.runner import regrade_rows, run_eval
    from powersampling.samplers.base import majority_vote
    from powersampling.samplers.result import Completion
    from test_server_openai import tiny_smol_model

    parts = get_benchmark("bfcl").answer_parts(problems["parallel_0"])
    a, b = ("spotify.play", {"artist": "A", "duration": 2}), ("spotify.play", {"duration": 3, "artist": "B"})
    assert parts(turn(b, a)) == parts(turn(a, b)) and len(parts(turn(a, b))) == 2  # calls in any order
    assert parts(turn(a)) == [json.dumps({"arguments": {"artist": "A", "duration": 2}, "name": "spotify.play"})]
    assert parts(turn(a))[0] in parts(turn(a, b)) and parts(turn(a, a)) == parts(turn(a)) * 2
    assert parts(json.dumps({"content": "none fits"})) == [] and parts('{"tool_calls": [') is None

    out = tmp_path / "run"
    run_eval(
        "bfcl", ["greedy", "sample+cover@3", "sample+consensus@3", "best-of-n"], 2, tiny_smol_model(), out,
        categories="parallel,irrelevance", extra_params={"best-of-n.n": 3}, max_new_tokens=48, progress=False,
    )  # fmt: skip
    rows = read_rows(out / "results.jsonl")
    for method, rule in (("sample+cover@3", "coverage"), ("sample+consensus@3", "consensus")):
        chosen = [r for r in rows if r["method"] == method]
        assert len(chosen) == 2
        for row in chosen:
            assert row["metadata"]["select"] == rule and row["n"] == 3 and len(row["draws"]) == 3
            assert all(d["parts"] == parts(d["text"]) for d in row["draws"])
            assert replay(row["draws"], 3, rule).graded["calls"] == row["calls"]
            if row["metadata"]["selected_by"] == rule:
                assert f"{rule}_choice" in row["metadata"]
        labels = [p.label for p in selection_points(rows, method, budgets=(1, 2, 3))]
        assert labels == ["sample (one of the draws)", f"sample {rule} of 2", f"sample {rule} of 3"]

    for row in rows:  # as rows recorded before draws carried their parts
        for draw in row.get("draws", []):
            draw.pop("parts")
    assert regrade_rows(rows) == 0
    best = [r for r in rows if r["method"] == "best-of-n"]
    assert all(d["parts"] == parts(d["text"]) for r in best for d in r["draws"])
    labels = [p.label for p in selection_points(rows, "best-of-n", budgets=(1, 2, 3))]
    assert labels == [
        "best-of-n (one of the draws)", "best of 2", "best of 3",
        "coverage of 2", "coverage of 3", "consensus of 2", "consensus of 3", "vote of 2", "vote of 3",
    ]  # fmt: skip
    voted = {p.label: p for p in selection_points(rows, "best-of-n", budgets=(3,))}["vote of 3"]
    for r in best:  # the vote over call sets, as the sampler's +vote holds it over the benchmark's canonical answers
        extract = get_benchmark("bfcl").answer_extractor(problems[r["problem_id"]])
        completions = [Completion([0] * d["tokens"], d["text"], d["logprob"], d["complete"]) for d in r["draws"]]
        chosen, _ = majority_vote(completions, extract)
        if chosen is None:  # no candidate finished a turn: the vote has no answer, the likeliest is returned
            chosen = max(range(len(completions)), key=lambda i: r["draws"][i]["logprob"] / r["draws"][i]["tokens"])
        assert voted.outcomes[r["problem_id"]].graded["calls"] == r["draws"][chosen]["fields"]["calls"]

    write_rows(out / "results.jsonl", rows)
    script = [sys.executable, "benchmarks/accuracy_vs_tokens.py", str(out), "--reference", "greedy", "--by", "category"]
    done = subprocess.run(script + ["--budgets", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "accuracy_vs_tokens.json").read_text())
    assert set(document["by"]) == {"parallel", "irrelevance"}
    assert {c["label"] for c in document["by"]["parallel"]} >= {"sample coverage of 3", "coverage of 3", "best of 3"}
    assert all(c["problems"] == 1 for c in document["by"]["parallel"])
    held_out = subprocess.run(script + ["--indices", "1:2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert held_out.returncode == 0, held_out.stderr
    assert set(json.loads((out / "accuracy_vs_tokens.json").read_text())["by"]) == {"irrelevance"}
    for bad, message in ((["--indices", "5"], "--indices takes A:B"), (["--by", "nothing"], "no field 'nothing'")):
        refused = subprocess.run(script[:5] + bad, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert refused.returncode == 2 and message in refused.stderr


def test_the_parts_choices_need_answers_made_of_parts():
    from powersampling.eval.runner import check_arguments

    with pytest.raises(ConfigError, match=r"'\+cover' needs answers made of parts"):
        check_arguments("gsm8k", ["low-temp+cover@4"], 2)
    with pytest.raises(ConfigError, match=r"'\+consensus' needs answers made of parts"):
        check_arguments("gsm8k", ["sample+consensus@4"], 2)
    check_arguments("bfcl", ["low-temp+cover@4", "power+cover@2", "smc+consensus@2"], 2, categories="parallel")
    with pytest.raises(ConfigError, match="chooses among its n_chains"):
        check_arguments("bfcl", ["power+cover@1"], 2, categories="parallel")


def test_cli_refuses_bad_categories_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "powersampling.cli", "eval", "--task", "bfcl", "--categories", "simple,multiple"]
        + ["--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "unknown BFCL categories simple" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_end_to_end_cli_on_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "powersampling.cli", "eval", "--task", "bfcl", "--categories", "parallel,irrelevance"]
        + ["--methods", "greedy", "--limit", "2", "--threads", "1", "--no-progress", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == ["parallel_0", "irrelevance_0"]
    for row in rows:
        content_or_calls = json.loads(row["text"]) if row["complete_turn"] else None
        if content_or_calls is not None:
            assert set(content_or_calls) in ({"tool_calls"}, {"content"})
        assert row["grade_detail"]
    assert "| greedy |" in result.stdout and "parallel" in result.stdout


def test_each_method_is_paired_with_greedy_per_category_on_the_entries_both_ran():
    from powersampling.eval.benchmarks import get_benchmark

    def rows(verdicts: dict[str, bool]) -> dict[str, dict]:
        return {pid: {"problem_id": pid, "correct": ok} for pid, ok in verdicts.items()}

    greedy = rows({"parallel_0": False, "parallel_1": False, "parallel_2": True, "irrelevance_0": True})
    vote = rows(
        {"parallel_0": True, "parallel_1": True, "parallel_2": True, "parallel_3": True, "irrelevance_0": False}
    )
    summary = {"methods": {"greedy": {}, "low-temp+vote@8": {}}}
    bfcl = get_benchmark("bfcl")
    bfcl.add_metrics(summary, {"greedy": greedy, "low-temp+vote@8": vote}, n_boot=200)
    versus = summary["bfcl_versus_baseline"]
    assert versus["baseline"] == "greedy" and set(versus["methods"]) == {"low-temp+vote@8"}
    parallel = versus["methods"]["low-temp+vote@8"]["parallel"]
    # parallel_3 has no greedy row, so three pairs: two flips to right, one right in both
    assert parallel["problems"] == 3 and parallel["difference"] == pytest.approx(2 / 3)
    assert parallel["ci95"][0] <= 2 / 3 <= parallel["ci95"][1] and parallel["mcnemar_exact_p"] == pytest.approx(0.5)
    assert versus["methods"]["low-temp+vote@8"]["irrelevance"]["difference"] == -1.0
    assert summary["methods"]["low-temp+vote@8"]["by_category"]["parallel"]["correct"] == 4
