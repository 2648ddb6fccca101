"""Planning against a server: the planner's grammar goes to the server's structured-output support on the baseline
route, and a power route is refused with the reason where the server cannot give exact log-probabilities under a
grammar. The peer is the vLLM-wire stand-in of test_remote_backend.py, started with a printable-ASCII vocabulary
(POWERSAMPLING_STANDIN_ASCII=1) so that the planner's JSON can be spelled one character per token."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_remote_backend import ASCII_CHARACTERS, free_port, json_tokenizer, start_server, stop_server, wait_for

TOOLS = {
    "nodes": [
        {"id": "set_alarm", "desc": "Set an alarm", "parameters": [{"name": "time", "type": "string"}]},
        {"id": "play_music", "desc": "Play a song", "parameters": [{"name": "title", "type": "string"}]},
    ]
}


@pytest.fixture(scope="module")
def ascii_server():
    port = free_port()
    os.environ["POWERSAMPLING_STANDIN_ASCII"] = "1"
    try:
        process = start_server(
            [sys.executable, str(os.path.join(os.path.dirname(__file__), "test_remote_backend.py")), str(port)]
        )
    finally:
        del os.environ["POWERSAMPLING_STANDIN_ASCII"]
    try:
        wait_for(f"http://127.0.0.1:{port}/raw-full/v1/models", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def plan_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    json_tokenizer(tuple(ASCII_CHARACTERS)).save_pretrained(folder / "tokenizer")
    (folder / "tools.json").write_text(json.dumps(TOOLS))
    return folder


def _plan(url: str, files, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "powersampling.cli",
            "plan",
            "Wake me at 7 and play some music",
            "--model",
            url,
            "--tokenizer",
            str(files / "tokenizer"),
            "--tools-file",
            str(files / "tools.json"),
            "--max-depth",
            "1",
            "--max-tasks-per-level",
            "2",
            "--seed",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_baseline_route_plans_through_the_servers_grammar(ascii_server, plan_files):
    proc = _plan(f"{ascii_server}/raw-full", plan_files, "--method", "baseline", "--json")
    assert proc.returncode == 0, proc.stderr
    dag = json.loads(proc.stdout)
    assert dag["metadata"]["route"] == "baseline" and not dag["metadata"]["fallback"]
    assert 1 <= len(dag["tasks"]) <= 2  # the random model's plan, but every task calls a listed tool
    for task in dag["tasks"]:
        params = {p["name"] for t in TOOLS["nodes"] if t["id"] == task["tool"] for p in t["parameters"]}
        assert params and set(task["arguments"]) == params


@pytest.mark.parametrize("path", ["processed-k20"])
def test_a_power_route_is_refused_where_the_server_cannot_give_exact_log_probabilities(ascii_server, plan_files, path):
    proc = _plan(f"{ascii_server}/{path}", plan_files, "--method", "power")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs exact log-probabilities" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
