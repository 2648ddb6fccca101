"""``powersampling eval`` as a user runs it: a real process, exit codes, and a small run on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "powersampling.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "gsm9k"], "unknown task"),
        (["--task", "gsm8k", "--methods", "sample,beam"], "unknown method"),
        (["--task", "gsm8k", "--limit", "0"], "limit"),
        (["--task", "gsm8k", "--limit", "many"], "--limit"),
        (["--task", "gsm8k", "--alpha", "0"], "alpha"),
        (["--task", "gsm8k", "--n-mcmc", "0"], "n_mcmc"),
        (["--task", "gsm8k", "--param", "warp=9"], "warp"),
        (["--task", "gsm8k", "--param", "novalue"], "name=value"),
        (["--task", "gsm8k", "--methods", "sample", "--param", "smc.n-particles=4"], "not one of the methods"),
        (["--task", "gsm8k", "--methods", "power", "--param", "power.top-k=4"], "do not apply to method 'power'"),
        (["--task", "gsm8k", "--style", "poem"], "style"),
        (["--task", "gsm8k", "--best-of-n", "0"], "best_of_n"),
        (["--task", "gsm8k", "--offset", "5000"], "past the end"),
        (["--task", "gsm8k", "--model", "/no/such/model"], "does not exist"),
        (["--task", "gsm8k", "--report-only"], "does not exist"),
        (["--methods", "sample"], "--task"),
        (["--task", "gsm8k", "--merge", "/no/such/run", "--merge", "/no/such/other"], "not an evaluation folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, monkeypatch, capsys):
    """In-process through the real entry point (``main``), which is what the console script calls."""
    from powersampling.cli import main

    monkeypatch.setattr(sys, "argv", ["powersampling", "eval", "--out", str(tmp_path / "out"), *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _bad_run_folder(tmp_path, case: str):
    """A run folder (or a path) that a user could hand to --out by mistake."""
    out = tmp_path / "run"
    if case == "under a file":
        (tmp_path / "plain.txt").write_text("x")
        return tmp_path / "plain.txt" / "run"
    out.mkdir()
    if case == "run.json is a folder":
        (out / "run.json").mkdir()
    elif case == "results.jsonl is a folder":
        (out / "results.jsonl").mkdir()
    elif case == "invalid UTF-8":
        (out / "results.jsonl").write_bytes(b'{"problem_id": "1", "method": "sample"}\n\xff\xfe oops\n')
    elif case == "a row without problem_id":
        (out / "results.jsonl").write_text('{"method": "sample", "correct": true}\n')
    return out


@pytest.mark.parametrize(
    "case, message",
    [
        ("/sys/x", "cannot create the folder /sys/x"),
        ("/proc/x", "cannot create the folder /proc/x"),
        ("under a file", "is a file"),
        ("run.json is a folder", "run.json is not a file"),
        ("results.jsonl is a folder", "results.jsonl is not a file"),
        ("invalid UTF-8", "line 2 is not valid UTF-8"),
        ("a row without problem_id", "line 1 is not a results row"),
    ],
)
def test_a_bad_run_folder_is_one_line_and_exit_2_before_the_model_loads(case, message, tmp_path, monkeypatch, capsys):
    from powersampling.cli import main

    out = case if case.startswith("/") else str(_bad_run_folder(tmp_path, case))
    # a model path that does not exist: had the folder been accepted, the error would be about the model
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "powersampling",
            "eval",
            "--task",
            "gsm8k",
            "--methods",
            "sample",
            "--limit",
            "1",
            "--out",
            out,
            "--model",
            str(tmp_path / "no-model"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_torn_last_line_is_repaired_and_said_in_one_line(tmp_path):
    from powersampling.eval import load_problems
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=2)
    out = tmp_path / "run"
    run_eval("gsm8k", ["sample"], 2, toy_model(problems), out, write_report=False, **SMALL)
    results = out / "results.jsonl"
    complete = results.read_bytes()
    first_row = complete.split(b"\n")[0] + b"\n"
    results.write_bytes(first_row + b'{"problem_id": "x", "meth')  # killed mid-write
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, 'tests'); from test_eval_runner import *; "
            "from powersampling.eval.runner import run_eval; from powersampling.eval import load_problems; "
            f"p = load_problems('gsm8k', limit=2); run_eval('gsm8k', ['sample'], 2, toy_model(p), {str(out)!r}, "
            "write_report=False, **{**SMALL, 'progress': True})",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    repaired = [line for line in proc.stderr.splitlines() if "torn last line" in line]
    assert len(repaired) == 1 and "bytes" in repaired[0]
    assert len(results.read_bytes().split(b"\n")) == 3  # the first row kept, the torn one run again


def test_bad_input_from_a_real_process(tmp_path):
    proc = run_cli("eval", "--task", "gsm8k", "--methods", "power,nope", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "unknown method" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_small_fewshot_run_on_the_embedded_model(tmp_path):
    """Few-shot prompting with stop strings through the transformers backend, plain and power sampling."""
    out = tmp_path / "run"
    args = [
        "eval",
        "--task",
        "gsm8k",
        "--methods",
        "sample,power",
        "--limit",
        "1",
        "--style",
        "fewshot",
        "--shots",
        "2",
        "--max-new-tokens",
        "32",
        "--block-size",
        "8",
        "--n-mcmc",
        "2",
        "--seed",
        "3",
        "--backend",
        "transformers",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = run_cli(*args, "--threads", "1")  # two torch threads on two busy shared cores run several times slower
    assert proc.returncode == 0, proc.stderr
    assert "| power | 1 |" in proc.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["sample", "power"]
    for r in rows:
        assert r["style"] == "fewshot" and r["final_tokens"] <= 32
        text = r["text"]
        # decoding ends in the token that completes the first stop string, never runs past it
        for stop in ("\n\n", "Question:"):
            i = text.find(stop)
            assert i == -1 or len(text) - (i + len(stop)) <= 8, text
    assert rows[1]["metadata"]["total_iterations"] > 0
    assert (out / "accuracy_vs_cost.png").is_file()
    report = run_cli("eval", "--task", "gsm8k", "--out", str(out), "--report-only")
    assert report.returncode == 0 and "| sample | 1 |" in report.stdout


def test_regrade_grades_stored_rows_again_and_the_report_follows(tmp_path, monkeypatch, capsys):
    from powersampling.cli import main
    from powersampling.eval import load_problems
    from powersampling.eval.results import read_rows, write_rows
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=2)
    run_eval("gsm8k", ["sample"], 2, toy_model(problems), tmp_path, write_report=False, **SMALL)
    rows = read_rows(tmp_path / "results.jsonl")
    rows[0].update(text=f"So the answer is 1 + 1 = {rows[0]['reference']}.", correct=False)  # graded by an older rule
    rows[1].update(text="So the answer is 12345.", correct=True)
    write_rows(tmp_path / "results.jsonl", rows)
    argv = ["powersampling", "eval", "--task", "gsm8k", "--out", str(tmp_path), "--report-only", "--regrade"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "2 changed verdict" in captured.err and "| sample | 2 |" in captured.out
    regraded = read_rows(tmp_path / "results.jsonl")
    assert regraded[0]["correct"] and regraded[0]["extracted"] == rows[0]["reference"]
    assert not regraded[1]["correct"]
    monkeypatch.setattr(sys, "argv", argv[:-2] + ["--regrade"])  # without --report-only
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "--report-only" in capsys.readouterr().err


def test_merge_gathers_side_by_side_runs_and_prints_the_report(tmp_path, monkeypatch, capsys):
    from powersampling.cli import main
    from powersampling.eval import load_problems
    from powersampling.eval.runner import run_eval
    from test_eval_runner import SMALL, toy_model

    problems = load_problems("gsm8k", limit=4)
    for name, offset in (("a", 0), ("b", 2)):
        run_eval(
            "gsm8k",
            ["sample", "low-temp"],
            2,
            toy_model(problems),
            tmp_path / name,
            offset=offset,
            write_report=False,
            **SMALL,
        )
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "powersampling",
            "eval",
            "--task",
            "gsm8k",
            "--out",
            str(tmp_path / "all"),
            "--merge",
            str(tmp_path / "a"),
            "--merge",
            str(tmp_path / "b"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err
    assert "merged 8 rows from 2 folders" in captured.err
    assert "| low-temp | 4 | 4 | 100.0% |" in captured.out
    assert (tmp_path / "all" / "accuracy_vs_cost.png").is_file()
