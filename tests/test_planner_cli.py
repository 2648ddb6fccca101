"""``powersampling plan`` as a user runs it (a real process), and one end-to-end plan on the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from powersampling.planner import DAG_JSON_SCHEMA, dag_from_json


def run_cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "powersampling.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["plan", "   "], None, "empty"),
        (["plan"], None, "Missing argument"),
        (["plan", "x", "--max-depth", "0"], None, "max_depth"),
        (["plan", "x", "--method", "warp"], None, "--method"),
        (["plan", "x", "--format", "svg"], None, "--format"),
        (["plan", "x", "--alpha", "-1"], None, "alpha"),
        (["plan", "x", "--tools", " , "], None, "tools"),
        (["plan", "x", "--model", "/no/such/model"], None, "does not exist"),
        (["plan", "x"], {"POWER_SAMPLING_HTDAG_ENABLED": "sometimes"}, "POWER_SAMPLING_HTDAG_ENABLED"),
        (["plan", "x"], {"POWER_SAMPLING_ROLLOUT_PERCENT": "101"}, "POWER_SAMPLING_ROLLOUT_PERCENT"),
        (["plan", "x" * 5000, "--method", "baseline", "--model", "/no/such"], None, "does not exist"),
        (["plan", "x", "--execute"], None, "--execute needs --tools-module"),
        (["plan", "x", "--tools-module", "/no/such/tools.py"], None, "does not exist"),
        (["plan", "x", "--tools", "a", "--tools-file", "t.json"], None, "give one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, env, message):
    proc = run_cli(*args, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_plan_on_the_embedded_model_is_a_valid_dag():
    proc = run_cli(
        "plan",
        "Organize a small team offsite",
        "--method",
        "baseline",
        "--max-depth",
        "1",
        "--max-tasks-per-level",
        "3",
        "--seed",
        "0",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, DAG_JSON_SCHEMA)
    dag = dag_from_json(proc.stdout)
    assert 2 <= len(dag) <= 3
    md = dag.metadata
    assert md["route"] == "baseline" and md["fallback"] is False and md["model_calls"] == 1
    assert "baseline route" in proc.stderr  # progress and summary go to stderr, the plan alone to stdout


TOOLS_MODULE = '''from typing import Literal


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Current weather in a city."""
    return f"sunny in {city}"


def send_email(to: str, body: str) -> str:
    """Send an email to someone."""
    return f"sent to {to}"
'''


@pytest.mark.slow
def test_plan_and_execute_on_the_embedded_model(tmp_path):
    """The user's path: typed functions in a file, a plan on the embedded model, the calls run and reported."""
    module = tmp_path / "mytools.py"
    module.write_text(TOOLS_MODULE)
    proc = run_cli(
        "plan",
        "Check the weather in Paris and email it to ann@example.com",
        "--tools-module",
        str(module),
        "--execute",
        "--method",
        "baseline",
        "--max-tasks-per-level",
        "3",
        "--seed",
        "0",
        "--json",
        "--threads",
        "1",
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: a call failed, which a 135M model's plan may do
    out = json.loads(proc.stdout)
    calls = out["execution"]["calls"]
    assert calls and {c["tool"] for c in calls} <= {"get_weather", "send_email"}
    assert all(c["status"] in ("ok", "error", "skipped") for c in calls)
    assert all(c["output"].startswith(("sunny in", "sent to")) for c in calls if c["status"] == "ok")
    assert "first tool call" in proc.stderr and "Traceback" not in proc.stderr
    assert dag_from_json(json.dumps(out["plan"])).tasks
