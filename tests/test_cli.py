"""The generate command as a user runs it: a real process, the embedded model, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "powersampling.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "hi", "--alpha", "0"], "alpha"),
        (["generate", "hi", "--mcmc-steps", "0"], "n_mcmc"),
        (["generate", "hi", "--block-size", "-3"], "block_size"),
        (["generate", "hi", "--mcmc-steps", "x"], "--mcmc-steps"),
        (["generate", "hi", "--method", "warp"], "--method"),
        (["generate", "hi", "--model", "/no/such/model"], "does not exist"),
        (["generate", "hi", "--model", "openai:gpt-4o", "--method", "sample"], "hosted chat API"),
        (["generate", "hi", "--model", "Anthropic:claude"], "cannot continue a token prefix"),
        (["generate", "   "], "empty"),
        (["generate", "hi", "--method", "sample", "--chains", "2"], "--chains applies to methods power, smc"),
        (["generate", "hi", "--temperature", "0"], "--temperature is power's proposal temperature"),
        (["generate", "hi", "--answer-regex", "x"], "--answer-regex is used by a majority vote"),
        (["generate", "hi", "--method", "best-of-n", "--select", "coverage"], "METHOD+cover"),
        (["generate", "hi", "--method", "best-of-n", "--select", "consensus"], "METHOD+consensus"),
        (["generate"], "Missing argument"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    proc = run_cli(*args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_generate_json_on_embedded_model_is_reproducible():
    args = [
        "generate",
        "What is 2+2?",
        "--json",
        "--seed",
        "3",
        "--max-new-tokens",
        "24",
        "--mcmc-steps",
        "2",
        "--block-size",
        "12",
    ]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["method"] == "power"
    md = out["metadata"]
    assert md["alpha"] == 4.0 and md["n_mcmc"] == 2 and md["block_size"] == 12 and md["seed"] == 3
    assert md["final_tokens"] <= 24 and md["tokens_generated"] >= md["final_tokens"]
    assert md["stopped_by"] in ("eos", "length")
    second = run_cli(*args)
    assert json.loads(second.stdout)["text"] == out["text"]


@pytest.mark.slow
def test_generate_greedy_plain_text():
    proc = run_cli("generate", "Name a color.", "--method", "greedy", "--max-new-tokens", "12")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("prompt, max_new_tokens", [("hello " * 9000, "16"), ("Name a color.", "8190")])
def test_generate_refuses_what_the_context_cannot_hold(prompt, max_new_tokens):
    # the embedded model's window is 8192 tokens: refused before any decoding, not after minutes of it
    proc = run_cli("generate", prompt, "--max-new-tokens", max_new_tokens, "--raw", timeout=120)
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "context length" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
