"""RemoteLM against real server processes started by the tests.

The main peer is a small FastAPI app (in this file, run as a subprocess) that serves a tiny random Llama over
vLLM's ``/v1/completions`` wire format with real log-probabilities from the model's logits. One process mounts
four server configurations under path prefixes, as vLLM would be started with different flags:

    /raw-full       --max-logprobs -1 (default raw_logprobs mode)
    /processed-full --max-logprobs -1 --logprobs-mode processed_logprobs
    /processed-k20  --logprobs-mode processed_logprobs (top-20 at most, prompt_logprobs for scoring)
    /raw-k5         --max-logprobs 5 (top-k only: refused unless approximate=True)

llama-cpp-python's own server (which takes only text prompts) is the second peer. SGLang's native /generate API is
tested in test_remote_sglang.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

VOCAB = 40
STOP = 0
CONFIGS = {"raw-full": ("raw", -1), "processed-full": ("processed", -1), "processed-k20": ("processed", 20),
           "raw-k5": ("raw", 5)}


def tiny_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=STOP, bos_token_id=1, pad_token_id=STOP)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    return model.eval()


def model_logits(model, ids) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(ids)]))
    return out.logits[0].double().numpy()


def log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    return x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))


# the server (runs in a subprocess)

def build_app():
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    model = tiny_model()
    app = FastAPI()

    def mount(prefix: str, mode: str, max_logprobs: int) -> None:
        @app.get(f"/{prefix}/v1/models")
        def models():
            return {"object": "list", "data": [{"id": "tiny-llama", "object": "model"}]}

        @app.post(f"/{prefix}/v1/completions")
        def completions(body: dict):
            prompt = body.get("prompt")
            if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
                return JSONResponse({"error": {"message": "this test server takes token-id prompts only"}}, 400)
            k = body.get("logprobs")
            for asked in (k, body.get("prompt_logprobs")):
                if asked is not None and max_logprobs != -1 and (asked == -1 or asked > max_logprobs):
                    return JSONResponse({"error": {"message": f"Requested logprobs of {asked}, which is greater "
                                                              f"than max allowed: {max_logprobs}"}}, 400)
            temperature = float(body.get("temperature", 1.0))
            if body.get("top_k", -1) not in (-1, 0) or body.get("top_p", 1.0) != 1.0 or body.get("min_p", 0.0):
                return JSONResponse({"error": {"message": "this test server does not truncate"}}, 400)
            rng = np.random.default_rng(body.get("seed"))
            stops = set(body.get("stop_token_ids") or [])
            ids = list(prompt)
            tokens, token_lps, tops = [], [], []
            finish = "length"
            for _ in range(int(body.get("max_tokens", 16))):
                logits = model_logits(model, ids)[-1]
                if temperature == 0:
                    token = int(np.argmax(logits))
                else:
                    probs = np.exp(log_softmax(logits / temperature))
                    token = int(rng.choice(VOCAB, p=probs / probs.sum()))
                reported = log_softmax(logits / temperature if mode == "processed" and temperature > 0 else logits)
                tokens.append(f"token_id:{token}")
                token_lps.append(float(reported[token]))
                if k is not None:
                    order = np.argsort(-reported)[: (VOCAB if k == -1 else max(k, 1))]
                    if k == 0:
                        order = [token]
                    tops.append({f"token_id:{int(v)}": float(reported[v]) for v in order})
                ids.append(token)
                if token in stops:
                    finish = "stop"
                    break
            choice = {"index": 0, "text": "", "finish_reason": finish,
                      "logprobs": {"tokens": tokens, "token_logprobs": token_lps,
                                   "top_logprobs": tops if k is not None else None} if k is not None else None}
            if body.get("prompt_logprobs") is not None:
                lp = log_softmax(model_logits(model, prompt))
                choice["prompt_logprobs"] = [None] + [
                    {str(t): {"logprob": float(lp[i][t]), "rank": 1}} for i, t in enumerate(prompt[1:])]
            return {"id": "cmpl-test", "object": "text_completion", "model": "tiny-llama", "choices": [choice]}

    for prefix, (mode, max_logprobs) in CONFIGS.items():
        mount(prefix, mode, max_logprobs)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str]) -> subprocess.Popen:
    """A server process whose output goes to a file: a pipe nobody reads fills up and blocks the server."""
    log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    process.log_path = log.name
    return process


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    os.unlink(process.log_path)


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120.0) -> None:
    import httpx

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if process.poll() is not None:
            with open(process.log_path) as log:
                raise RuntimeError(f"server exited with {process.returncode}: {log.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up")


@pytest.fixture(scope="module")
def vllm_like_server():
    port = free_port()
    process = start_server([sys.executable, __file__, str(port)])
    try:
        wait_for(f"http://127.0.0.1:{port}/raw-full/v1/models", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def local_model():
    return tiny_model()


def _requests(prefixes, max_new=6):
    from powersampling.backends.base import ContinuationRequest

    return [ContinuationRequest(prefix=p, max_new_tokens=max_new) for p in prefixes]


def _check_against_model(local_model, prefixes, conts, temperature):
    for prefix, cont in zip(prefixes, conts):
        assert 1 <= len(cont) <= 6
        logits = model_logits(local_model, list(prefix) + cont.token_ids)[len(prefix) - 1: len(prefix) - 1 + len(cont)]
        picked = np.arange(len(cont)), cont.token_ids
        np.testing.assert_allclose(cont.logp, log_softmax(logits)[picked], atol=2e-4)
        np.testing.assert_allclose(cont.logq, log_softmax(logits / temperature)[picked], atol=2e-4)
        assert cont.stopped == (cont.token_ids[-1] == STOP)


@pytest.mark.parametrize("prefix,expected_mode,processed",
                         [("raw-full", "full", False), ("processed-full", "full", True),
                          ("processed-k20", "score", False)])
def test_exact_modes_report_the_models_log_p_and_log_q(vllm_like_server, local_model, prefix, expected_mode,
                                                       processed):
    from powersampling.backends.remote import RemoteLM

    lm = RemoteLM(f"{vllm_like_server}/{prefix}", vocab_size=VOCAB, stop_token_ids=[STOP])
    try:
        assert (lm.api, lm.mode, lm.logprobs_are_processed) == ("vllm", expected_mode, processed)  # auto-detected
        prefixes = [[1, 5, 7], [1, 9], [1, 5, 7, 3, 3]]
        conts = lm.sample(_requests(prefixes), 0.5, np.random.default_rng(0))
        _check_against_model(local_model, prefixes, conts, 0.5)
    finally:
        lm.close()


def test_topk_only_server_is_refused_unless_the_approximation_is_asked_for(vllm_like_server, local_model):
    from powersampling.backends.remote import RemoteLM
    from powersampling.errors import CapabilityError

    url = f"{vllm_like_server}/raw-k5"
    with pytest.raises(CapabilityError, match="top-k"):
        RemoteLM(url, vocab_size=VOCAB, stop_token_ids=[STOP])
    lm = RemoteLM(url, vocab_size=VOCAB, stop_token_ids=[STOP], approximate=True)
    try:
        assert lm.mode == "topk"
        prefix = [1, 4, 4]
        (cont,) = lm.sample(_requests([prefix]), 0.5, np.random.default_rng(1))
        logits = model_logits(local_model, prefix + cont.token_ids)[len(prefix) - 1: len(prefix) - 1 + len(cont)]
        picked = np.arange(len(cont)), cont.token_ids
        np.testing.assert_allclose(cont.logp, log_softmax(logits)[picked], atol=2e-4)  # log p stays exact
        error = np.abs(cont.logq - log_softmax(logits / 0.5)[picked])
        assert np.all(error <= lm.max_log_z_gap + 1e-6)  # log q is off by at most the bound's width
    finally:
        lm.close()


def test_bounded_log_z_brackets_the_true_value():
    from powersampling.backends.remote import bounded_log_z

    rng = np.random.default_rng(0)
    for _ in range(50):
        logp = log_softmax(rng.normal(size=200) * 3)
        alpha = float(rng.uniform(1, 6))
        true = np.log(np.sum(np.exp(alpha * logp)))
        estimate, gap = bounded_log_z(np.sort(logp)[::-1][:10], alpha)
        assert abs(estimate - true) <= gap + 1e-9


def test_power_sampling_runs_through_the_remote_backend(vllm_like_server):
    from powersampling.backends.remote import RemoteLM
    from powersampling.samplers import PowerSampler, PowerSamplingConfig

    lm = RemoteLM(f"{vllm_like_server}/raw-full", vocab_size=VOCAB, stop_token_ids=[STOP])
    try:
        result = PowerSampler(lm, PowerSamplingConfig(alpha=2.0, n_mcmc=2, block_size=3, max_new_tokens=6,
                                                      seed=0)).sample([1, 2])
        assert 1 <= len(result.token_ids) <= 6
        assert result.metadata["total_iterations"] > 0
    finally:
        lm.close()


def test_constraints_are_refused(vllm_like_server):
    from powersampling.backends.base import ContinuationRequest
    from powersampling.backends.remote import RemoteLM
    from powersampling.errors import CapabilityError

    class AllowAll:
        def start(self, generated):
            raise AssertionError("never started")

    lm = RemoteLM(f"{vllm_like_server}/raw-full", vocab_size=VOCAB, stop_token_ids=[STOP])
    try:
        with pytest.raises(CapabilityError, match="constraint"):
            lm.sample([ContinuationRequest([1], 3, constraint=AllowAll())], 1.0, np.random.default_rng(0))
    finally:
        lm.close()


@pytest.mark.slow
def test_llama_cpp_server_is_refused_for_text_only_prompts():
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    from powersampling.backends.embedded import embedded_gguf_path
    from powersampling.backends.remote import RemoteLM
    from powersampling.errors import CapabilityError

    port = free_port()
    process = start_server([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
                            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--logits_all", "true"])
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", process)
        with pytest.raises(CapabilityError, match="token-id prompts"):
            RemoteLM(f"http://127.0.0.1:{port}", vocab_size=49152)
    finally:
        stop_server(process)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(build_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
