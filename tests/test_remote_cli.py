"""Remote servers from ``load_model`` and the command line, against the real server processes of
test_remote_backend.py (vLLM wire format) and test_remote_sglang.py (SGLang's /generate), which serve a tiny
random Llama with a 40-token vocabulary. The tokenizer given with ``--tokenizer`` is a 40-token word-level
tokenizer saved to a temporary folder, so its ids are the served model's ids."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from test_remote_backend import STOP, VOCAB, log_softmax, model_logits, tiny_model, vllm_like_server  # noqa: F401
from test_remote_sglang import sglang_like_server  # noqa: F401

WORDS = [f"w{i}" for i in range(3, VOCAB)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": STOP, "<bos>": 1, "<unk>": 2} | {w: i for i, w in enumerate(WORDS, start=3)}
    assert sorted(vocab.values()) == list(range(VOCAB))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("remote-tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def local_model():
    return tiny_model()


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "powersampling.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "server,path,api",
    [("vllm", "raw-full", "vllm"), ("vllm", "processed-k20", "vllm"), ("sglang", "default", "sglang")],
)
def test_load_model_with_a_url_returns_a_remote_lm_that_samples(request, tokenizer_dir, local_model, server, path, api):
    import powersampling as ps
    from powersampling.backends.remote import RemoteLM
    from powersampling.samplers import prompt_ids

    base = request.getfixturevalue("vllm_like_server" if server == "vllm" else "sglang_like_server")
    lm = ps.load_model(f"{base}/{path}", tokenizer=tokenizer_dir)  # backend="auto" picks remote for a URL
    try:
        assert isinstance(lm, RemoteLM)
        assert lm.api == api and lm.vocab_size == VOCAB and lm.stop_token_ids == frozenset({STOP})
        prompt = prompt_ids(lm, "w5 w7 w9")
        assert prompt == [5, 7, 9]
        result = ps.PowerSampler(
            lm, ps.PowerSamplingConfig(alpha=2.0, n_mcmc=2, block_size=3, max_new_tokens=6, seed=0)
        ).sample(prompt)
        assert 1 <= len(result.token_ids) <= 6 and result.metadata["total_iterations"] > 0
        logits = model_logits(local_model, prompt + result.token_ids)[len(prompt) - 1 : -1]
        expected = log_softmax(logits)[np.arange(len(result.token_ids)), result.token_ids]
        np.testing.assert_allclose(result.logprobs, expected, atol=2e-4)  # the served model's own log p
        assert result.text == lm.tokenizer.decode(result.token_ids)
    finally:
        lm.close()


def test_load_model_passes_api_and_remote_options_through(vllm_like_server, tokenizer_dir, monkeypatch):
    import powersampling as ps
    from powersampling.errors import CapabilityError, ModelLoadError

    url = f"{vllm_like_server}/raw-k5"
    with pytest.raises(CapabilityError, match="top-k"):
        ps.load_model(url, backend="remote", tokenizer=tokenizer_dir)
    lm = ps.load_model(url, backend="remote", tokenizer=tokenizer_dir, approximate=True, api="vllm")
    try:
        assert lm.mode == "topk"
    finally:
        lm.close()
    with pytest.raises(ModelLoadError, match="SGLang"):  # the vLLM-style peer has no /model_info
        ps.load_model(f"{vllm_like_server}/raw-full", tokenizer=tokenizer_dir, api="sglang")
    # the API key comes from the environment unless given; the test server ignores it, so check the header sent
    monkeypatch.setenv("POWERSAMPLING_REMOTE_API_KEY", "from-env")
    lm = ps.load_model(f"{vllm_like_server}/raw-full", tokenizer=tokenizer_dir)
    try:
        assert lm._http.headers["Authorization"] == "Bearer from-env"
    finally:
        lm.close()
    lm = ps.load_model(f"{vllm_like_server}/raw-full", tokenizer=tokenizer_dir, api_key="given")
    try:
        assert lm._http.headers["Authorization"] == "Bearer given"
    finally:
        lm.close()


def test_load_model_errors_are_one_line(tmp_path, tokenizer_dir):
    import powersampling as ps
    from powersampling.errors import ModelLoadError

    cases = [
        (dict(path="http://127.0.0.1:9/v1", backend="remote"), "--tokenizer FOLDER"),
        (dict(path="http://127.0.0.1:9", backend="transformers"), "only the remote backend"),
        (dict(path="https://example.invalid", backend="llama.cpp"), "only the remote backend"),
        (dict(path="https://example.invalid", backend="vllm"), "only the remote backend"),
        (dict(path=None, backend="remote"), "needs a server URL"),
        (dict(path=str(tmp_path), backend="remote", tokenizer=tokenizer_dir), "needs a server URL"),
        (dict(path=str(tmp_path), tokenizer=tokenizer_dir), "only given for a remote model"),
        (dict(path="http://127.0.0.1:9", tokenizer=str(tmp_path / "missing")), "does not exist"),
        (dict(path="http://127.0.0.1:9", tokenizer=str(tmp_path)), "could not load a tokenizer"),
    ]
    for kwargs, message in cases:
        path = kwargs.pop("path")
        with pytest.raises(ModelLoadError, match=re.escape(message)) as info:
            ps.load_model(path, **kwargs)
        assert "\n" not in str(info.value)


def test_unreachable_server_is_a_load_error(tokenizer_dir):
    import socket

    import powersampling as ps
    from powersampling.errors import ModelLoadError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelLoadError, match=f"127.0.0.1:{port}") as info:
        ps.load_model(f"http://127.0.0.1:{port}", tokenizer=tokenizer_dir, timeout_s=5.0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("server,path", [("vllm", "processed-full"), ("sglang", "default")])
def test_generate_runs_end_to_end_against_a_server(request, tokenizer_dir, local_model, server, path):
    base = request.getfixturevalue("vllm_like_server" if server == "vllm" else "sglang_like_server")
    proc = run_cli(
        "generate",
        "w5 w7 w9",
        "--model",
        f"{base}/{path}",
        "--tokenizer",
        tokenizer_dir,
        "--backend",
        "remote",
        "--alpha",
        "2",
        "--mcmc-steps",
        "2",
        "--block-size",
        "3",
        "--max-new-tokens",
        "6",
        "--seed",
        "0",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["method"] == "power"
    md = out["metadata"]
    assert 1 <= md["final_tokens"] <= 6 and md["total_iterations"] > 0
    words = out["text"].split()
    assert words and all(w in WORDS for w in words), out["text"]  # the server's tokens, decoded locally
    # the plain-text form prints the completion on stdout
    plain = run_cli(
        "generate",
        "w5 w7 w9",
        "--model",
        f"{base}/{path}",
        "--tokenizer",
        tokenizer_dir,
        "--method",
        "sample",
        "--max-new-tokens",
        "6",
        "--seed",
        "1",
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() and all(w in WORDS for w in plain.stdout.split()), plain.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "w5", "--model", "http://127.0.0.1:9", "--backend", "remote"], "--tokenizer FOLDER"),
        (["generate", "w5", "--model", "http://127.0.0.1:9"], "--tokenizer FOLDER"),
        (["generate", "w5", "--model", "http://127.0.0.1:9", "--backend", "transformers"], "only the remote backend"),
        (["generate", "w5", "--backend", "remote"], "needs a server URL"),
        (["generate", "w5", "--backend", "remote", "--model", "./folder"], "needs a server URL"),
        (["serve", "--backend", "remote"], "needs a server URL"),
        (["serve", "--model", "http://127.0.0.1:9", "--backend", "llama.cpp"], "only the remote backend"),
    ],
)
def test_cli_remote_errors_are_one_line_and_exit_code_2(args, message):
    assert_one_line_error(run_cli(*args), message)


def test_cli_tokenizer_option_is_checked(tokenizer_dir, tmp_path):
    assert_one_line_error(
        run_cli("generate", "w5", "--model", "http://127.0.0.1:9", "--tokenizer", str(tmp_path / "nope")),
        "does not exist",
    )
    assert_one_line_error(
        run_cli("generate", "w5", "--model", str(tmp_path), "--tokenizer", tokenizer_dir),
        "only given for a remote model",
    )


def test_eval_takes_a_remote_model(vllm_like_server, tokenizer_dir, tmp_path):
    assert_one_line_error(
        run_cli("eval", "--task", "gsm8k", "--limit", "1", "--out", str(tmp_path / "a"), "--backend", "remote"),
        "needs a server URL",
    )
    assert_one_line_error(
        run_cli(
            "eval",
            "--task",
            "gsm8k",
            "--limit",
            "1",
            "--out",
            str(tmp_path / "b"),
            "--model",
            f"{vllm_like_server}/raw-full",
        ),
        "--tokenizer FOLDER",
    )


@pytest.mark.slow
def test_a_gguf_file_gives_the_tokenizer():
    from transformers import AutoTokenizer

    from powersampling.backends.embedded import embedded_gguf_path, embedded_model_dir
    from powersampling.backends.loading import load_tokenizer

    from_gguf = load_tokenizer(str(embedded_gguf_path()))
    from_folder = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    assert len(from_gguf) == len(from_folder)
    text = "Exact power sampling: p^alpha, 12 tokens."
    assert from_gguf.encode(text) == from_folder.encode(text)
    assert from_gguf.eos_token == from_folder.eos_token


def test_eval_with_problems_in_flight_writes_the_rows_of_a_sequential_run(vllm_like_server, tokenizer_dir, tmp_path):
    """--concurrency against a server: the same rows (each request carries its own seed), in problem order."""
    import powersampling as ps
    from powersampling.eval.results import read_rows
    from powersampling.eval.runner import run_eval

    lm = ps.load_model(f"{vllm_like_server}/raw-full", tokenizer=tokenizer_dir)
    settings = dict(
        alpha=2.0,
        n_mcmc=2,
        block_size=3,
        max_new_tokens=6,
        seed=3,
        style="fewshot",
        shots=0,
        progress=False,
        write_report=False,
    )
    run_eval("gsm8k", ["sample", "power"], 5, lm, tmp_path / "one", **settings)
    run_eval("gsm8k", ["sample", "power"], 5, lm, tmp_path / "four", concurrency=4, **settings)
    one, four = read_rows(tmp_path / "one" / "results.jsonl"), read_rows(tmp_path / "four" / "results.jsonl")
    key = lambda r: (r["problem_id"], r["method"], r["text"], r["tokens_generated"])
    assert [key(r) for r in four] == [key(r) for r in one]


def test_eval_refuses_problems_in_flight_on_a_backend_that_decodes_one_call_at_a_time(tmp_path):
    from powersampling.errors import ConfigError
    from powersampling.eval.runner import run_eval
    from powersampling.exactness import random_table_model

    with pytest.raises(ConfigError, match="one call at a time"):
        run_eval("gsm8k", ["sample"], 2, random_table_model(), tmp_path, concurrency=2, progress=False)
