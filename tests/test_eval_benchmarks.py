"""Benchmarks as classes: one defined here, in a test module, registers itself and runs end to end through
``powersampling eval`` on a real (tiny, random) transformers model, with no other file edited; and the harness
outside ``eval/benchmarks/`` names no benchmark."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from powersampling.errors import ConfigError
from powersampling.eval.benchmarks import Benchmark, benchmark_names, get_benchmark, register_benchmark
from powersampling.eval.benchmarks.base import AnswerBenchmark
from powersampling.eval.datasets import FewShotExample, Problem
from powersampling.eval.grading import Grade

WORDS = ("a", "b", "c", "d")  # the tiny model's vocabulary after <eos> and <bos>


@register_benchmark
class NextWord(AnswerBenchmark):
    """Continue a sequence of words; the answer is the first word written. A word-level toy, so that a 6-token
    random model can take it: the point is the harness around it, not the model's skill."""

    name = "toy-next-word"
    summary = "the next word of a short sequence (a test benchmark)"
    default_max_new_tokens = 3
    fewshot_stops = ()

    def load(self, data: Path | None) -> list[Problem]:
        sequences = [("a", "b", "c"), ("b", "c", "d"), ("c", "d", "a"), ("d", "a", "b")]
        return [
            Problem(self.name, f"seq-{i}", i, " ".join(seq), WORDS[(WORDS.index(seq[-1]) + 1) % 4])
            for i, seq in enumerate(sequences)
        ]

    def examples(self, problem: Problem) -> list[FewShotExample]:
        return []

    def chat_turn(self, question: str) -> str:
        return question

    def fewshot_text(self, examples, question: str) -> str:
        return question

    def vote_answer(self, text: str) -> str | None:
        words = text.split()
        return words[0] if words else None

    def grade_answer(self, reference: str, text: str) -> Grade:
        answer = self.vote_answer(text)
        return Grade(answer == reference, answer, "first word" if answer else "no word")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """conftest's tiny random Llama saved with a word-level tokenizer over its 6 tokens: a model folder the CLI
    loads like any other."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from powersampling.exactness import tiny_random_llama

    vocab = {"<eos>": 0, "<bos>": 1} | {w: i for i, w in enumerate(WORDS, start=2)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("tiny-words")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>").save_pretrained(folder)
    tiny_random_llama().save_pretrained(folder)
    return folder


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from powersampling.cli import main

    monkeypatch.setattr(sys, "argv", ["powersampling", "eval", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_benchmark_from_a_test_module_runs_end_to_end_through_the_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    common = ["--task", NextWord.name, "--out", str(out), "--no-progress"]
    code, stdout, err = run_main(
        monkeypatch,
        capsys,
        *common,
        "--model",
        str(tiny_model_dir),
        "--methods",
        "sample,power,sample+vote",
        "--limit",
        "3",
        "--n-mcmc",
        "2",
        "--block-size",
        "1",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["task"] for r in rows} == {NextWord.name}
    problems = {p.problem_id: p for p in NextWord().load(None)}
    for r in rows:
        # the benchmark's own grader decided, on the benchmark's own reference
        assert r["reference"] == problems[r["problem_id"]].reference
        assert r["extracted"] == NextWord().vote_answer(r["text"])
        assert r["correct"] == (r["extracted"] == r["reference"])
        assert r["final_tokens"] <= NextWord.default_max_new_tokens
    votes = [r for r in rows if r["method"] == "sample+vote"]
    assert all(r["metadata"]["selected_by"] == "majority" and r["n"] >= 2 for r in votes)
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["task"] == NextWord.name and settings["max_new_tokens"] == 3 and settings["block_size"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"sample", "power", "sample+vote"}
    assert summary["methods"]["power"]["correct"] == sum(r["correct"] for r in rows if r["method"] == "power")
    assert f"task **{NextWord.name}**" in stdout and "| power | 3 |" in stdout

    # its rows are graded again from their text by the same class, with nothing changed
    before = (out / "summary.json").read_text()
    code, _, err = run_main(monkeypatch, capsys, *common, "--report-only", "--regrade")
    assert code == 0, err
    assert "0 changed verdict" in err
    assert (out / "summary.json").read_text() == before


def test_the_registry_lists_builtins_and_registered_benchmarks_and_refuses_clashes():
    names = benchmark_names()
    assert {"gsm8k", "math500", "humaneval", "mbpp", "taskbench", NextWord.name} <= set(names)
    assert isinstance(get_benchmark(NextWord.name), NextWord)
    assert register_benchmark(NextWord) is NextWord  # the same class again is a no-op

    class Impostor(Benchmark):
        name = NextWord.name

    with pytest.raises(ConfigError, match="already registered"):
        register_benchmark(Impostor)

    class Nameless(Benchmark):
        pass

    with pytest.raises(ConfigError, match="needs a name"):
        register_benchmark(Nameless)
    with pytest.raises(ConfigError, match=f"unknown task 'nope'; choose one of: .*{NextWord.name}"):
        get_benchmark("nope")


def test_a_benchmark_without_answers_or_quality_score_refuses_those_selections(monkeypatch, capsys, tmp_path):
    from powersampling.eval.runner import check_arguments

    with pytest.raises(ConfigError, match="'\\+quality' needs a task with a quality score; toy-next-word has none"):
        check_arguments(NextWord.name, ["sample+quality"], 1)
    with pytest.raises(ConfigError, match="--data is for benchmarks that read a data folder"):
        check_arguments(NextWord.name, ["sample"], 1, data=tmp_path)
    code, _, err = run_main(
        monkeypatch, capsys, "--task", "humaneval", "--methods", "sample+vote", "--out", str(tmp_path)
    )
    assert code == 2 and "needs answers to compare; humaneval has none" in err


def _string_constants(root: Path, skip: str) -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if skip in path.as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((path.relative_to(root).as_posix(), node.lineno, node.value))
    return found


def test_no_benchmark_is_named_outside_its_own_module_and_no_method_in_the_harness():
    """The runner, the report and the CLI ask the benchmark class and the sampler registry; a new benchmark or
    method needs no edit there."""
    from powersampling.samplers import method_names

    src = Path(__import__("powersampling").__file__).parent
    builtin = {"gsm8k", "math500", "humaneval", "mbpp", "taskbench"}
    named = [c for c in _string_constants(src, "eval/benchmarks/") if c[2] in builtin]
    assert named == []
    methods = set(method_names())
    harness = [c for c in _string_constants(src / "eval", "eval/benchmarks/") if c[2].split("+")[0] in methods]
    harness += [c for c in _string_constants(src / "cli", "") if c[0] == "eval.py" and c[2].split("+")[0] in methods]
    assert harness == []


def test_a_benchmark_in_another_installed_package_is_found_through_its_entry_point(tmp_path):
    """An installed distribution (here a minimal one on the path) declares ``powersampling.benchmarks``; a fresh
    process finds its benchmark without importing anything by hand."""
    import os
    import subprocess

    (tmp_path / "wordbench.py").write_text(
        "from powersampling.eval.benchmarks import Benchmark\n\n"
        "class Words(Benchmark):\n    name = 'entry-point-words'\n"
    )
    dist = tmp_path / "wordbench-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wordbench\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[powersampling.benchmarks]\nwords = wordbench:Words\n")
    src = Path(__import__("powersampling").__file__).parent.parent
    code = "from powersampling.eval.benchmarks import get_benchmark; print(type(get_benchmark('entry-point-words')))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{src}"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "wordbench.Words" in proc.stdout


def test_regrading_asks_each_rows_benchmark_and_refuses_what_it_cannot_regrade():
    from powersampling.eval.runner import regrade_rows

    row = {"task": "gsm8k", "problem_id": "7", "text": "So the answer is 12.", "reference": "12", "correct": False}
    assert regrade_rows([row]) == 1 and row["correct"] and row["extracted"] == "12"
    with pytest.raises(ConfigError, match="humaneval rows cannot be graded again from their text"):
        regrade_rows([{"task": "humaneval", "problem_id": "HumanEval/0", "text": "pass", "correct": False}])
    with pytest.raises(ConfigError, match="gsm8k rows cannot be graded again"):  # no stored reference
        regrade_rows([{"task": "gsm8k", "problem_id": "1", "text": "12", "reference": None, "correct": False}])
    with pytest.raises(ConfigError, match="regrading TaskBench rows needs --data"):
        regrade_rows([{"task": "taskbench", "problem_id": "1", "text": "{}", "correct": False}])
    with pytest.raises(ConfigError, match="unknown task 'gsm9k'"):
        regrade_rows([{"task": "gsm9k", "problem_id": "1", "text": "", "correct": False}])
