"""``powersampling doctor`` as a user runs it: a real process, the embedded model, a real crash from a stand-in
engine (tests/standins/crashing_engine.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STANDINS = Path(__file__).parent / "standins"
sys.path.insert(0, str(STANDINS))

from crashing_engine import share_converted_models


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the module: the transformers self-test runs once, later calls read its record."""
    folder = tmp_path_factory.mktemp("doctor-cache")
    share_converted_models(folder)
    return folder


def doctor(*args: str, cache: Path, standin: str | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "POWERSAMPLING_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(STANDINS), os.environ.get("PYTHONPATH", "")]),
    }
    setup = f"import crashing_engine; crashing_engine.install({standin!r}); " if standin else ""
    program = setup + "import sys; sys.argv[0] = 'powersampling'; from powersampling.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", program, "doctor", *args], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow
def test_doctor_reports_what_generate_runs_on(cache):
    proc = doctor("--json", cache=cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and not report["problems"]
    assert report["self_tests"]["transformers"]["status"] == "ok"
    assert report["cpus"]["usable"] >= 1
    assert report["threads"]["llama.cpp"]["threads"] == max(1, report["cpus"]["usable"] // 2)
    llama = report["self_tests"]["llama.cpp"]
    if report["packages"]["llama-cpp-python"] is None:
        assert llama["status"] == "not installed" and report["generate"]["engine"] == "transformers"
    else:
        assert llama["status"] == "ok", llama["message"]
        assert llama["details"]["eval_batch"] in (1, 2, 4, 8, 16, 32)
        assert report["generate"]["engine"] == "llama.cpp"
        assert report["llama_cpp_build"]["cpu_features"]
    # the same choice load_model makes
    from powersampling.backends import load_model

    os.environ["POWERSAMPLING_CACHE"] = str(cache)
    try:
        lm = load_model(None)
    finally:
        del os.environ["POWERSAMPLING_CACHE"]
    expected = {"llama.cpp": "LlamaCppLM", "transformers": "TransformersLM"}[report["generate"]["engine"]]
    assert type(lm).__name__ == expected


@pytest.mark.slow
def test_doctor_reports_a_crashing_engine_and_the_fallback(cache):
    proc = doctor("--json", cache=cache, standin="segfault")
    assert proc.returncode == 0, proc.stderr  # the default path still works, on transformers
    report = json.loads(proc.stdout)
    assert report["self_tests"]["llama.cpp"]["status"] == "crashed"
    assert "SIGSEGV" in report["self_tests"]["llama.cpp"]["message"]
    assert report["generate"]["engine"] == "transformers"
    assert "self-test did not pass" in report["generate"]["reason"]
    assert any("SIGSEGV" in w for w in report["warnings"])

    text = doctor(cache=cache, standin="segfault")
    assert text.returncode == 0
    assert "[!!] llama.cpp: crashed" in text.stdout
    assert "generate:   transformers" in text.stdout


@pytest.mark.slow
def test_doctor_exits_1_when_the_named_engine_is_broken(cache):
    proc = doctor("--json", "--backend", "llama.cpp", cache=cache, standin="abort")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert not report["ok"]
    assert any("SIGABRT" in problem for problem in report["problems"])
    assert "Traceback" not in proc.stderr
