"""TaskBench in the evaluation harness: the metrics on a hand-checked example (gold data's quirks included), the
tool-plan grammar, bad data folders, and an end-to-end run on the embedded model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from powersampling.eval.benchmarks.taskbench import f1, indel_ratio, load_data, pooled_metrics, record_scores

TOOLS = {
    "nodes": [
        {
            "id": "get_weather",
            "desc": "Query the weather for a location and a date",
            "parameters": [
                {"name": "location", "type": "string", "desc": "city"},
                {"name": "date", "type": "date", "desc": "day"},
            ],
        },
        {
            "id": "book_flight",
            "desc": "Book a flight",
            "parameters": [
                {"name": "date", "type": "date", "desc": ""},
                {"name": "from", "type": "string", "desc": ""},
                {"name": "to", "type": "string", "desc": ""},
            ],
        },
        {
            "id": "send_email",
            "desc": "Send an email",
            "parameters": [
                {"name": "email_address", "type": "string", "desc": ""},
                {"name": "content", "type": "string", "desc": ""},
            ],
        },
        {"id": "set_alarm", "desc": "Set an alarm", "parameters": [{"name": "time", "type": "string", "desc": ""}]},
    ]
}
TOOL_NAMES = [t["id"] for t in TOOLS["nodes"]]
RECORDS = [
    {
        "id": "00000001",
        "type": "chain",
        "instruction": "Check the weather in Paris on 2023-06-25 and email it to ann@example.com.",
        "task_nodes": [
            {
                "task": "get_weather",
                "arguments": [{"name": "location", "value": "Paris"}, {"name": "date", "value": "2023-06-25"}],
            },
            {
                "task": "send_email",
                "arguments": [
                    {"name": "email_address", "value": "ann@example.com"},
                    {"name": "content", "value": "The weather in Paris"},
                ],
            },
        ],
        "task_links": [{"source": "get_weather", "target": "send_email"}],
    },
    {
        "id": "00000002",
        "type": "single",
        "instruction": "Set an alarm for 07:30 AM.",
        "task_nodes": [{"task": "set_alarm", "arguments": [{"name": "time", "value": "07:30 AM"}]}],
        "task_links": [],
    },
]


def _node(task, **arguments):
    return {"task": task, "arguments": [{"name": k, "value": v} for k, v in arguments.items()]}


def test_metrics_on_a_hand_checked_example_with_the_gold_datas_quirks():
    # gold names a tool that is not in tools.json, and one link carries an extra key (both happen in the data)
    gold_nodes = [
        _node("get_weather", location="Paris", date="2023-06-25"),
        _node("send_email", email_address="a@b.c", content="Forecast"),
        _node("unknown_tool_x"),
    ]
    gold_links = [{"source": "get_weather", "target": "send_email", "intent": "share it"}]
    nodes = [
        _node("get_weather", location="Paris", date="2023-06-24"),
        _node("send_email", email_address="a@b.c", content="Forecast"),
        _node("book_flight", date="2023-06-25", **{"from": "Paris", "to": "Rome"}),
    ]
    links = [{"source": "get_weather", "target": "send_email"}, {"source": "send_email", "target": "book_flight"}]
    s = record_scores(gold_nodes, gold_links, nodes, links, TOOL_NAMES)
    assert s["node_counts"] == [2, 1, 0]  # the unknown gold tool counts on neither side
    assert s["edge_counts"] == [1, 1, 0]  # the extra key is ignored
    assert s["arg_name_counts"] == [4, 3, 0]
    assert s["arg_value_counts"] == [3, 4, 1]  # the wrong date is a false positive and a false negative
    # tool ids [1, 3, 2] against [1, 3, 0]: longest common subsequence 2 of 6 tokens
    assert s["edit_ratio"] == pytest.approx(4 / 6) and not s["exact_match"]
    metrics = pooled_metrics([s, record_scores(gold_nodes[:1], [], gold_nodes[:1], [], TOOL_NAMES)])
    assert metrics["node_f1"] == pytest.approx(f1([3, 1, 0]))
    assert metrics["edge_f1"] == pytest.approx(f1([1, 1, 0]))
    assert metrics["edit_distance"] == pytest.approx(1 - (4 / 6 + 1) / 2)
    assert indel_ratio([], []) == 1.0 and indel_ratio([1, 2], []) == 0.0


def test_quality_selection_needs_a_task_with_a_quality_score():
    from powersampling.errors import ConfigError
    from powersampling.eval.runner import check_arguments

    with pytest.raises(ConfigError, match=r"'\+quality' needs a task with a quality score"):
        check_arguments("gsm8k", ["sample", "power+quality"], 2)
    with pytest.raises(ConfigError, match="unknown method"):
        check_arguments("taskbench", ["power+best"], 2)


def test_empty_counts_score_one_everywhere_a_group_without_any_links_included():
    """One convention: no gold and no predicted items is a perfect answer (F1 1.0), for a record, a breakdown group
    and a pooled method alike; a spurious link where none is due scores 0."""
    assert f1([0, 0, 0]) == 1.0 and f1([0, 1, 0]) == 0.0 and f1([0, 0, 1]) == 0.0
    from powersampling.eval.benchmarks import get_benchmark
    from powersampling.eval.report import markdown_summary, summarize

    def row(problem_id, kind, gold_nodes, gold_links, nodes, links):
        scores = record_scores(gold_nodes, gold_links, nodes, links, TOOL_NAMES)
        common = dict(
            task="taskbench",
            tokens_generated=10,
            final_tokens=10,
            wall_s=1.0,
            metadata={},
            quality_score=0.5,
            valid=True,
        )
        return dict(problem_id=problem_id, method="sample", type=kind, gold_nodes=len(gold_nodes),
                    correct=scores["exact_match"], **scores, **common)  # fmt: skip

    alarm = [_node("set_alarm", time="07:30 AM")]
    chain = [_node("get_weather", location="Paris"), _node("send_email", content="Forecast")]
    link = [{"source": "get_weather", "target": "send_email"}]
    rows = [row("1", "single", alarm, [], alarm, []), row("2", "chain", chain, link, chain, [])]
    by_type = summarize(rows, n_boot=50)["methods"]["sample"]["by_type"]
    # the single-tool plan is right and has no links to score; the chain plan missed its one link
    assert by_type["single"] == {"records": 1, "node_f1": 1.0, "edge_f1": 1.0}
    assert by_type["chain"]["edge_f1"] == 0.0
    assert summarize(rows[:1], n_boot=50)["methods"]["sample"]["edge_f1"] == 1.0  # pooled over link-free records
    summary = summarize(rows, n_boot=50)
    assert "1.00 / 1.00 (1)" in markdown_summary(summary, None, None, n_boot=50, benchmark=get_benchmark("taskbench"))


def test_the_tool_grammar_refuses_an_unlisted_tool_or_parameter(tmp_path):
    from powersampling.backends.constraints import JsonSchemaConstraint
    from powersampling.planner.schema import task_list_schema
    from test_planner_helpers import smol_tokenizer

    data = load_data(_data_dir(tmp_path))
    tok = smol_tokenizer()
    constraint = JsonSchemaConstraint(tok, task_list_schema(data.spec), vocab_size=len(tok), stop_token_ids=[2])
    good = (
        '{"count": 1, "tasks": [{"id": 1, "description": "Set the alarm", "call": {"tool": "set_alarm", '
        '"arguments": {"time": "07:30 AM"}}, "dependencies": []}]}'
    )
    assert constraint.accepts(tok.encode(good, add_special_tokens=False))
    for bad in (
        good.replace("set_alarm", "send_fax"),
        good.replace('"time"', '"hour"'),
        good.replace('{"time": "07:30 AM"}', "{}"),  # every parameter is required
        good.replace('"time": "07:30 AM"', '"time": "07:30 AM", "snooze": "5"'),
    ):
        assert not constraint.accepts(tok.encode(bad, add_special_tokens=False)), bad
    date = good.replace("set_alarm", "get_weather").replace(
        '{"time": "07:30 AM"}', '{"location": "Paris", "date": "tomorrow"}'
    )
    assert not constraint.accepts(tok.encode(date, add_special_tokens=False))  # a date parameter takes a date
    assert constraint.accepts(tok.encode(date.replace("tomorrow", "2023-06-25"), add_special_tokens=False))


def _data_dir(tmp_path, records=RECORDS, requests=True):
    folder = tmp_path / "taskbench"
    folder.mkdir(exist_ok=True)
    (folder / "tools.json").write_text(json.dumps(TOOLS))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if requests:
        (folder / "dev_user_requests.jsonl").write_text(
            json.dumps({"id": "00000002", "user_request": "Please set an alarm for 07:30 AM tomorrow."}) + "\n"
        )
    return folder


def test_user_requests_replace_the_instruction_when_given(tmp_path):
    data = load_data(_data_dir(tmp_path))
    assert data.records[1]["request"] == "Please set an alarm for 07:30 AM tomorrow."
    assert data.records[0]["request"] == RECORDS[0]["instruction"]
    assert [t.name for t in data.tools] == TOOL_NAMES


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no tools", "tools.json does not exist"),
        ("broken line", "dev.jsonl line 2: not a valid JSON line"),
        ("empty records", "dev.jsonl holds no records"),
        ("two record files", "exactly one records file"),
        ("node without task", "dev.jsonl line 1: a task node"),
        ("bad requests line", "dev_user_requests.jsonl line 1"),
    ],
)
def test_a_malformed_data_folder_is_one_line_and_exit_2(tmp_path, damage, message, monkeypatch, capsys):
    from powersampling.cli import main

    folder = _data_dir(tmp_path)
    if damage == "no tools":
        (folder / "tools.json").unlink()
    elif damage == "broken line":
        (folder / "dev.jsonl").write_text(json.dumps(RECORDS[0]) + '\n{"id": "2", \n')
    elif damage == "empty records":
        (folder / "dev.jsonl").write_text("")
    elif damage == "two record files":
        (folder / "test.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    elif damage == "node without task":
        (folder / "dev.jsonl").write_text(json.dumps({**RECORDS[0], "task_nodes": [{"tool": "x"}]}) + "\n")
    elif damage == "bad requests line":
        (folder / "dev_user_requests.jsonl").write_text('{"id": 5}\n')
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "powersampling",
            "eval",
            "--task",
            "taskbench",
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "no-model"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_end_to_end_on_two_records_with_the_embedded_model(tmp_path):
    from powersampling import load_model
    from powersampling.eval.results import read_rows
    from powersampling.eval.runner import run_eval

    model = load_model(None)  # llama.cpp when installed, else transformers
    out = tmp_path / "run"
    summary = run_eval(
        "taskbench",
        ["sample", "power", "power+quality"],
        None,
        model,
        out,
        data=_data_dir(tmp_path),
        alpha=2.0,
        n_mcmc=2,
        block_size=32,
        max_new_tokens=256,
        seed=0,
        progress=False,
    )
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 6
    picked = [r for r in rows if r["method"] == "power+quality" and r["valid"]]
    assert picked  # +quality: the task's own quality score (request and plan only) picked among MH's states
    for r in picked:
        assert r["metadata"]["selected_by"] == "evaluator"
        assert r["metadata"]["quality_score"] == pytest.approx(r["quality_score"])
    for r in rows:
        assert r["valid"] == bool(r["pred_nodes"]) and set(r) >= {"node_counts", "edge_counts", "quality_score"}
        assert all(n["task"] in TOOL_NAMES for n in r["pred_nodes"])
        for node in r["pred_nodes"]:  # each call carries exactly its tool's parameters
            params = {p["name"] for t in TOOLS["nodes"] if t["id"] == node["task"] for p in t["parameters"]}
            assert {a["name"] for a in node["arguments"]} == params
    for method in ("sample", "power"):
        m = summary["methods"][method]
        assert set(m) >= {
            "node_f1",
            "edge_f1",
            "edit_distance",
            "arg_name_f1",
            "arg_value_f1",
            "valid_rate",
            "by_type",
            "by_gold_nodes",
        }
        assert 0 <= m["node_f1"] <= 1 and m["valid_rate"] == pytest.approx(
            np.mean([r["valid"] for r in rows if r["method"] == method])
        )
    assert summary["methods"]["power"]["token_cost_vs_sample"] > 1
    assert "node_f1_difference_b_minus_a" in summary["comparisons"][0]
    assert (out / "summary.md").read_text().count("node F1") >= 1 and (out / "accuracy_vs_cost.png").is_file()


def test_regrade_scores_taskbench_rows_again_from_their_text(tmp_path, monkeypatch, capsys):
    from powersampling.cli import main
    from powersampling.eval.results import read_rows, write_rows
    from powersampling.eval.runner import run_eval
    from test_planner_helpers import ScriptedLM

    alarm_plan = (
        '{"count": 1, "tasks": [{"id": 1, "description": "Set the alarm", "call": {"tool": "set_alarm", '
        '"arguments": {"time": "07:30 AM"}}, "dependencies": []}]}'
    )
    data, out = _data_dir(tmp_path), tmp_path / "run"
    model = ScriptedLM(lambda prompt: alarm_plan)
    run_eval("taskbench", ["sample"], None, model, out, data=data, max_new_tokens=128, seed=0, progress=False)
    rows = read_rows(out / "results.jsonl")
    alarm = next(r for r in rows if r["problem_id"] == "00000002")
    assert alarm["correct"] and alarm["node_counts"] == [1, 0, 0]
    for r in rows:  # as if scored by an older grader
        r.update(correct=False, node_counts=[0, 0, 0], quality_score=0.0)
    write_rows(out / "results.jsonl", rows)
    argv = ["powersampling", "eval", "--task", "taskbench", "--out", str(out), "--report-only", "--regrade"]
    monkeypatch.setattr(sys, "argv", argv)  # TaskBench rows need the records they were run on
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "needs --data" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(sys, "argv", argv + ["--data", str(data)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0 and "1 changed verdict" in capsys.readouterr().err
    regraded = {r["problem_id"]: r for r in read_rows(out / "results.jsonl")}
    assert regraded["00000002"]["correct"] and regraded["00000002"]["node_counts"] == [1, 0, 0]
    assert regraded["00000002"]["quality_score"] > 0.5
    other = tmp_path / "other"  # other data than the run's: refused
    other.mkdir()
    (other / "tools.json").write_text(json.dumps(TOOLS))
    (other / "dev.jsonl").write_text(json.dumps(RECORDS[1]) + "\n")
    monkeypatch.setattr(sys, "argv", argv + ["--data", str(other)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "is not the data" in capsys.readouterr().err


def test_the_report_says_how_often_the_higher_quality_plan_of_a_record_is_the_better_one():
    from powersampling.eval.report import summarize

    alarm, weather = [_node("set_alarm", time="07:30 AM")], [_node("get_weather", location="Paris")]

    def row(problem_id, method, predicted, quality):
        scores = record_scores(alarm, [], predicted, [], TOOL_NAMES)
        common = dict(
            task="taskbench", tokens_generated=10, final_tokens=10, wall_s=1.0, metadata={}, valid=True, type="single"
        )
        return dict(problem_id=problem_id, method=method, quality_score=quality, gold_nodes=1,
                    correct=scores["exact_match"], **scores, **common)  # fmt: skip

    rows = [
        row("1", "sample", alarm, 0.9),  # right and rated higher
        row("1", "low-temp", weather, 0.2),
        row("2", "sample", alarm, 0.3),  # right but rated lower
        row("2", "low-temp", weather, 0.8),
        row("3", "sample", alarm, 0.5),  # same score: no evidence either way
        row("3", "low-temp", weather, 0.5),
    ]
    within = summarize(rows, n_boot=50)["quality_score_within_record"]
    assert within["node_f1"] == {"pairs": 2, "agreement": 0.5}
    assert summarize(rows, n_boot=50)["quality_score_spearman"]["edge_f1"] is None  # no plan has links: constant
