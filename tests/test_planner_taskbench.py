"""The TaskBench harness on records written here: loading, TaskBench's F1 definitions, and a full run through the
planner (ScriptedLM answering with the gold plan for one record and a wrong one for another)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from powersampling.planner import RouteSettings
from test_planner_helpers import ScriptedLM, answer

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "taskbench_planning.py"
_spec = importlib.util.spec_from_file_location("taskbench_planning", _PATH)
tb = importlib.util.module_from_spec(_spec)
sys.modules["taskbench_planning"] = tb  # dataclasses look their module up while the file runs
_spec.loader.exec_module(tb)

TOOLS = ["get_weather", "send_email", "book_flight", "search_hotels"]
RECORDS = [
    {"id": "r1", "instruction": "Check the weather in Paris and email it to Ann",
     "task_nodes": [{"task": "get_weather", "arguments": ["Paris"]}, {"task": "send_email", "arguments": ["Ann"]}],
     "task_links": [{"source": "get_weather", "target": "send_email"}], "type": "chain"},
    {"id": "r2", "instruction": "Book a flight to Rome and find a hotel there",
     "task_nodes": [{"task": "book_flight", "arguments": []}, {"task": "search_hotels", "arguments": []}],
     "task_links": [], "type": "dag"},
]


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    (tmp_path / "tool_desc.json").write_text(json.dumps({"nodes": [{"id": t, "desc": t} for t in TOOLS]}))
    return tmp_path


def test_loading_normalizes_names(data_dir):
    assert tb.load_tools(data_dir) == TOOLS
    records = tb.load_records(data_dir)
    assert records[0].nodes == ["get weather", "send email"]
    assert records[0].links == [("get weather", "send email")] and records[1].links == []


def test_f1_follows_taskbench_set_counting():
    counts = {"tp": 0, "fp": 0, "fn": 0}
    tb.add_counts(counts, ["a", "b"], ["a", "c", "c"])  # duplicates count once, as in TaskBench's flatten
    tb.add_counts(counts, ["d"], [])
    assert counts == {"tp": 1, "fp": 1, "fn": 2}
    assert tb.prf(counts)["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert tb.prf({"tp": 0, "fp": 0, "fn": 0})["f1"] == 0.0


def test_harness_scores_planner_output(data_dir, tmp_path):
    def answers(prompt: str) -> str:
        if "Paris" in prompt:  # the gold plan
            return answer(("Get the weather in Paris", [], {"tool": "get_weather"}),
                          ("Email the forecast to Ann", [1], {"tool": "send_email"}))
        # one right tool, one wrong, and a link the gold plan does not have
        return answer(("Book the flight to Rome", [], {"tool": "book_flight"}),
                      ("Send a confirmation email", [1], {"tool": "send_email"}))

    lm = ScriptedLM(answers)
    records = tb.load_records(data_dir)
    result = tb.evaluate_route(lm, "baseline", records, tb.load_tools(data_dir),
                               settings=RouteSettings(seed=0), max_tasks=3)
    assert result["failures"] == 0
    assert result["node_counts"] == {"tp": 3, "fp": 1, "fn": 1}
    assert result["link_counts"] == {"tp": 1, "fp": 1, "fn": 0}
    assert result["node_f1"] == pytest.approx(0.75) and result["link_f1"] == pytest.approx(2 / 3)
    table = tb.markdown_table([result])
    assert "| baseline | 2 | 0.750 | 0.667 |" in table
