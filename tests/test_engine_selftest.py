"""Engine self-tests in a child process: a crashing engine is reported in one line and never becomes the automatic
choice. The stand-in engines (tests/standins/crashing_engine.py) really die: SIGSEGV through ctypes, SIGABRT."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from powersampling.backends import loading, selftest
from powersampling.errors import ModelLoadError

STANDINS = Path(__file__).parent / "standins"
sys.path.insert(0, str(STANDINS))

import crashing_engine
from crashing_engine import share_converted_models


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """A fresh cache folder, the stand-ins importable by the child, and the real engine table restored after."""
    share_converted_models(tmp_path / "cache")
    monkeypatch.setenv("POWERSAMPLING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDINS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(selftest, "ENGINES", dict(selftest.ENGINES))
    monkeypatch.setattr(loading, "llama_cpp_available", loading.llama_cpp_available)
    return tmp_path / "cache"


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF stand-in")
    return str(path)


@pytest.mark.parametrize("kind, signal_name", [("segfault", "SIGSEGV"), ("abort", "SIGABRT")])
def test_a_child_that_dies_is_reported_as_crashed(isolated, model_file, kind, signal_name):
    crashing_engine.install(kind)
    outcome = selftest.self_test("llama.cpp", model_file, 1)
    assert outcome.status == "crashed"
    assert signal_name in outcome.message
    assert "GGML_NATIVE=OFF" in outcome.message  # how to rebuild
    assert "\n" not in outcome.message


def test_outcome_is_cached_per_build_model_and_threads(isolated, model_file):
    crashing_engine.install("segfault")
    first = selftest.self_test("llama.cpp", model_file, 1)
    again = selftest.self_test("llama.cpp", model_file, 1)
    assert not first.cached and again.cached and again.status == "crashed"
    assert not selftest.self_test("llama.cpp", model_file, 2).cached  # another thread count is its own key
    crashing_engine.install("works", build="rebuilt")  # a rebuilt engine is tested again
    rebuilt = selftest.self_test("llama.cpp", model_file, 1)
    assert rebuilt.ok and not rebuilt.cached and rebuilt.details == {"eval_batch": 8, "threads": 1}


def test_an_exception_in_the_child_is_a_failure_with_its_last_line(isolated, model_file):
    crashing_engine.install("raise_error")
    outcome = selftest.self_test("llama.cpp", model_file, 1)
    assert outcome.status == "failed"
    assert "the stand-in engine refuses this model" in outcome.message


def test_a_missing_engine_is_not_installed_without_a_child(isolated, model_file):
    selftest.ENGINES["llama.cpp"] = dataclasses.replace(selftest.ENGINES["llama.cpp"], package="no-such-package-x")
    outcome = selftest.self_test("llama.cpp", model_file, 1)
    assert outcome.status == "not installed" and outcome.seconds == 0


def test_auto_falls_back_to_transformers_when_llamacpp_crashes(isolated, caplog):
    crashing_engine.install("segfault")
    with caplog.at_level(logging.WARNING, logger="powersampling.backends"):
        lm = loading.load_model(None, backend="auto")
    assert type(lm).__name__ == "TransformersLM"
    (record,) = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert "SIGSEGV" in record.getMessage() and "using transformers instead" in record.getMessage()


def test_a_named_engine_that_crashes_is_a_load_error(isolated):
    crashing_engine.install("abort")
    with pytest.raises(ModelLoadError, match="SIGABRT"):
        loading.load_model(None, backend="llama.cpp")


def _cli_with_standin(kind: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    program = (
        f"import crashing_engine; crashing_engine.install({kind!r}); "
        "from powersampling.cli import main; import sys; sys.argv[0] = 'powersampling'; main()"
    )
    env = {**os.environ, "POWERSAMPLING_CACHE": str(cache), "PYTHONPATH": os.environ["PYTHONPATH"]}
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=300, env=env)


def test_cli_named_engine_crash_is_one_line_and_exit_2(isolated):
    proc = _cli_with_standin("segfault", "generate", "hi", "--backend", "llama.cpp", cache=isolated)
    assert proc.returncode == 2
    assert "SIGSEGV" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_auto_says_so_in_one_line_and_samples_with_transformers(isolated):
    proc = _cli_with_standin(
        "segfault", "generate", "What is 2+2?", "--method", "greedy", "--max-new-tokens", "4", cache=isolated
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "crashed" in line]
    assert len(warnings) == 1 and "using transformers instead" in warnings[0]
    assert proc.stdout.strip()
