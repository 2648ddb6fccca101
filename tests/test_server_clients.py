"""Real clients against a real server started here: lm-evaluation-harness's own CLI (``local-completions``) on a tiny
local generate_until task (with ``until``) and a tiny local multiple_choice task. The log-likelihoods it gets
through the server equal the model's own, computed in process; its generations equal greedy decoding cut at the
first stop string. Needs the ``clients`` extra (lm-eval)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import needs_module
from powersampling import build_sampler
from powersampling.backends.base import ContinuationRequest
from powersampling.backends.constraints import StopStringConstraint
from test_server import serve

needs_module("lm_eval", reason="lm-eval is not installed (pip install 'powersampling[clients]')")

MC = [
    {"question": "The sky is", "choices": [" blue", " green", " made of cheese"], "label": 0},
    {"question": "Two plus two is", "choices": [" four", " five"], "label": 0},
    {"question": "Paris is in", "choices": [" France", " Spain", " Italy", " the sea"], "label": 0},
]
GEN = [
    {"question": "Q: Name a fruit.\nA:", "answer": "apple"},
    {"question": "Q: What color is grass?\nA:", "answer": "green"},
]
UNTIL = ["\n\n", "."]


def _tasks(folder: Path) -> None:
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GEN))
    (folder / "ps_tiny_mc.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: ps_tiny_mc
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {folder / "mc.jsonl"}
            test_split: test
            output_type: multiple_choice
            doc_to_text: "{{{{question}}}}"
            doc_to_choice: "{{{{choices}}}}"
            doc_to_target: "{{{{label}}}}"
            metric_list:
              - metric: acc
            """
        )
    )
    (folder / "ps_tiny_gen.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: ps_tiny_gen
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {folder / "gen.jsonl"}
            test_split: test
            output_type: generate_until
            doc_to_text: "{{{{question}}}}"
            doc_to_target: "{{{{answer}}}}"
            generation_kwargs:
              until: {json.dumps(UNTIL)}
              max_gen_toks: 12
            metric_list:
              - metric: exact_match
            """
        )
    )


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    """The model's log p of the continuation after the context, split into tokens as lm-eval splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation)
    start = len(tok.encode(context))
    rows = model.next_token_logprobs([ContinuationRequest(whole[:i], 1) for i in range(start, len(whole))])
    return float(sum(row[whole[i]] for i, row in zip(range(start, len(whole)), rows)))


def test_lm_eval_cli_through_the_server_matches_the_model(tmp_path):
    from powersampling.backends.embedded import embedded_model_dir
    from test_server_openai import tiny_smol_model

    model = tiny_smol_model()
    tok = model.tokenizer
    _tasks(tmp_path)
    out = tmp_path / "out"
    with serve(model) as server:
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        args = (
            f"model=tiny-smol,base_url={server.url}/v1/completions,tokenizer={embedded_model_dir()},"
            "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1"
        )
        command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args]
        command += ["--tasks", "ps_tiny_mc,ps_tiny_gen", "--include_path", str(tmp_path)]
        command += ["--output_path", str(out), "--log_samples"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    mc = _samples(out, "ps_tiny_mc")
    assert len(mc) == len(MC)
    correct = 0
    for sample in mc:
        pairs = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        served = [float(r[0][0]) for r in sample["resps"]]
        local = [_loglikelihood(model, tok, context, continuation) for context, continuation in pairs]
        assert served == pytest.approx(local, abs=1e-4)
        correct += int(max(range(len(local)), key=local.__getitem__) == sample["doc"]["label"])
    (results,) = out.rglob("results_*.json")
    scores = json.loads(results.read_text())["results"]
    assert scores["ps_tiny_mc"]["acc,none"] == pytest.approx(correct / len(MC))
    gen = _samples(out, "ps_tiny_gen")
    assert len(gen) == len(GEN)
    stop = StopStringConstraint(tok, UNTIL)
    for sample in gen:
        prompt = sample["doc"]["question"]
        local = build_sampler("greedy", model, max_new_tokens=12).sample(tok.encode(prompt), constraint=stop)
        assert sample["resps"][0][0] == stop.truncate(local.text)[0]
