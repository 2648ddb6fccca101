"""RemoteLM against real server processes started by the tests.

The main peer is a small FastAPI app (in this file, run as a subprocess) that serves a tiny random Llama over
vLLM's ``/v1/completions`` wire format with real log-probabilities from the model's logits. One process mounts
four server configurations under path prefixes, as vLLM would be started with different flags:

    /raw-full       --max-logprobs -1 (default raw_logprobs mode)
    /processed-full --max-logprobs -1 --logprobs-mode processed_logprobs
    /processed-k20  --logprobs-mode processed_logprobs (top-20 at most, prompt_logprobs for scoring)
    /raw-k5         --max-logprobs 5 (top-k only: refused unless approximate=True)

Structured outputs (a JSON schema as ``structured_outputs: {"json": ...}``) are sampled under an xgrammar mask
built with the tokenizer of ``json_tokenizer()``, whose 40 single-character tokens are the model's ids. As vLLM's
xgrammar backend does, the stand-in takes whitespace from its server configuration, not from the request: compact
here (as if started with ``--structured-outputs-config '{"disable_any_whitespace": true}'``) unless said below.
Log-probabilities are the unmasked model's, except under ``masked``. Two more configurations:

    /raw-full-guided  as /raw-full, but an older vLLM: ``guided_json`` only, ``structured_outputs`` refused (400)
    /raw-full-masked  as /raw-full, but log-probabilities computed after the grammar's mask (vLLM V1 applies the
                      bitmask to the logits before the sampler computes them), and the default any-whitespace
                      grammar

llama-cpp-python's own server (which takes only text prompts) is the second peer. SGLang's native /generate API is
tested in test_remote_sglang.py.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np
import pytest

from conftest import needs_module

STOP = 0
# Started with POWERSAMPLING_STANDIN_ASCII=1 the server's model has a printable-ASCII vocabulary (the planner's JSON
# needs every letter); otherwise 40 tokens: three special, then the characters below.
ASCII_CHARACTERS = [chr(c) for c in range(32, 127)]
ASCII = os.environ.get("POWERSAMPLING_STANDIN_ASCII") == "1"


class Config(NamedTuple):
    mode: str  # "raw" or "processed" log-probabilities
    max_logprobs: int
    grammar_field: str = "structured_outputs"
    masked: bool = False  # log-probabilities after the grammar's mask
    any_whitespace: bool = False


CONFIGS = {
    "raw-full": Config("raw", -1),
    "processed-full": Config("processed", -1),
    "processed-k20": Config("processed", 20),
    "raw-k5": Config("raw", 5),
    "raw-full-guided": Config("raw", -1, grammar_field="guided_json"),
    "raw-full-masked": Config("raw", -1, masked=True, any_whitespace=True),
}
JSON_CHARACTERS = (
    ASCII_CHARACTERS if ASCII else list('{}[]:,"') + [" "] + list("0123456789") + list("abcdefghijklmnorstu")
)
VOCAB = 3 + len(JSON_CHARACTERS)
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "name": {"type": "string", "maxLength": 3}},
    "required": ["ok", "name"],
}


def tiny_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=STOP,
        bos_token_id=1,
        pad_token_id=STOP,
    )
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


@functools.cache
def json_tokenizer(characters: tuple[str, ...] = tuple(JSON_CHARACTERS)):
    """A transformers tokenizer over the model's ids: three special tokens, then one character each (by default
    the 37 characters enough for JSON objects of booleans and short strings)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": STOP, "<bos>": 1, "<unk>": 2} | {c: i for i, c in enumerate(characters, start=3)}
    assert sorted(vocab.values()) == list(range(3 + len(characters)))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")


class ServerGrammar:
    """A server's JSON-schema grammar for one request: xgrammar over ``json_tokenizer()``."""

    _compilers: dict = {}

    def __init__(self, schema_text: str, any_whitespace: bool) -> None:
        import xgrammar as xgr

        if "compiler" not in self._compilers:
            info = xgr.TokenizerInfo.from_huggingface(json_tokenizer(), vocab_size=VOCAB, stop_token_ids=[STOP])
            self._compilers["compiler"] = xgr.GrammarCompiler(info)
        compiled = self._compilers["compiler"].compile_json_schema(schema_text, any_whitespace=any_whitespace)
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, VOCAB)

    def allowed(self) -> np.ndarray:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        return np.unpackbits(self.bitmask.numpy().view(np.uint8), bitorder="little")[:VOCAB].astype(bool)

    def accept(self, token: int) -> None:
        assert self.matcher.accept_token(token), f"token {token} does not match the grammar"


def json_constraint(any_whitespace: bool = False):
    from powersampling.backends.constraints import JsonSchemaConstraint

    return JsonSchemaConstraint(
        json_tokenizer(), SCHEMA, vocab_size=VOCAB, stop_token_ids=[STOP], any_whitespace=any_whitespace
    )


def masked_reference(model, constraint, prompt, tokens, temperature):
    """log p and log q of ``tokens`` under the step-wise renormalized mask of ``constraint``, from the model."""
    logits = model_logits(model, list(prompt) + list(tokens))[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
    state = constraint.start([])
    logp, logq = [], []
    for row, token in zip(logits, tokens):
        mask = state.allowed_tokens()
        allowed = np.ones(VOCAB, dtype=bool) if mask is None else np.asarray(mask[:VOCAB], dtype=bool)
        logp.append(log_softmax(np.where(allowed, row, -np.inf))[token])
        logq.append(log_softmax(np.where(allowed, row / temperature, -np.inf))[token] if temperature else 0.0)
        state.advance(token)
    return np.array(logp), np.array(logq)


def assert_masked_values(model, constraint, conts, temperature, atol=2e-4) -> None:
    """Exact continuations whose log p and log q are the masked, renormalized values from the model."""
    for cont in conts:
        assert cont.exact
        logp, logq = masked_reference(model, constraint, PROMPT, cont.token_ids, temperature)
        np.testing.assert_allclose(cont.logp, logp, atol=atol)
        np.testing.assert_allclose(cont.logq, logq, atol=atol)


def assert_matches_schema(text: str) -> None:
    value = json.loads(text)
    assert list(value) == ["ok", "name"], text
    assert isinstance(value["ok"], bool) and isinstance(value["name"], str) and len(value["name"]) <= 3, text


# the server (runs in a subprocess)


def build_app():
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    model = tiny_model()
    app = FastAPI()

    def grammar_of(body: dict, config: Config) -> tuple[ServerGrammar | None, str | None]:
        """The request's grammar, or the error a server with this configuration answers."""
        fields = [f for f in ("structured_outputs", "guided_json") if body.get(f) is not None]
        if not fields:
            return None, None
        if fields != [config.grammar_field]:
            return None, f"unknown field: {fields[0]}"
        schema = body["guided_json"] if fields == ["guided_json"] else body["structured_outputs"]["json"]
        return ServerGrammar(json.dumps(schema), config.any_whitespace), None

    def mount(prefix: str, config: Config) -> None:
        mode, max_logprobs = config.mode, config.max_logprobs

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
                    return JSONResponse(
                        {
                            "error": {
                                "message": f"Requested logprobs of {asked}, which is greater "
                                f"than max allowed: {max_logprobs}"
                            }
                        },
                        400,
                    )
            temperature = float(body.get("temperature", 1.0))
            if body.get("top_k", -1) not in (-1, 0) or body.get("top_p", 1.0) != 1.0 or body.get("min_p", 0.0):
                return JSONResponse({"error": {"message": "this test server does not truncate"}}, 400)
            grammar, refusal = grammar_of(body, config)
            if refusal:
                return JSONResponse({"error": {"message": refusal}}, 400)
            rng = np.random.default_rng(body.get("seed"))
            stops = set(body.get("stop_token_ids") or [])
            ids = list(prompt)
            tokens, token_lps, tops = [], [], []
            finish = "length"
            for _ in range(int(body.get("max_tokens", 16))):
                raw = model_logits(model, ids)[-1]
                logits = raw if grammar is None else np.where(grammar.allowed(), raw, -np.inf)
                if temperature == 0:
                    token = int(np.argmax(logits))
                else:
                    probs = np.exp(log_softmax(logits / temperature))
                    token = int(rng.choice(VOCAB, p=probs / probs.sum()))
                shown = logits if config.masked else raw
                reported = log_softmax(shown / temperature if mode == "processed" and temperature > 0 else shown)
                reported = np.maximum(reported, -9999.0)  # as vLLM writes -inf
                tokens.append(f"token_id:{token}")
                token_lps.append(float(reported[token]))
                if k is not None:
                    order = np.argsort(-reported)[: (VOCAB if k == -1 else max(k, 1))]
                    if k == 0:
                        order = [token]
                    tops.append({f"token_id:{int(v)}": float(reported[v]) for v in order})
                ids.append(token)
                if grammar is not None:
                    grammar.accept(token)
                if token in stops:
                    finish = "stop"
                    break
            choice = {
                "index": 0,
                "text": "",
                "finish_reason": finish,
                "logprobs": {
                    "tokens": tokens,
                    "token_logprobs": token_lps,
                    "top_logprobs": tops if k is not None else None,
                }
                if k is not None
                else None,
            }
            if body.get("prompt_logprobs") is not None:
                lp = log_softmax(model_logits(model, prompt))
                choice["prompt_logprobs"] = [None] + [
                    {str(t): {"logprob": float(lp[i][t]), "rank": 1}} for i, t in enumerate(prompt[1:])
                ]
            return {"id": "cmpl-test", "object": "text_completion", "model": "tiny-llama", "choices": [choice]}

    for prefix, config in CONFIGS.items():
        mount(prefix, config)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str]) -> subprocess.Popen:
    """A server process whose output goes to a file: a pipe nobody reads fills up and blocks the server."""
    log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)  # noqa: SIM115 (open while the server runs)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
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
        logits = model_logits(local_model, list(prefix) + cont.token_ids)[len(prefix) - 1 : len(prefix) - 1 + len(cont)]
        picked = np.arange(len(cont)), cont.token_ids
        np.testing.assert_allclose(cont.logp, log_softmax(logits)[picked], atol=2e-4)
        np.testing.assert_allclose(cont.logq, log_softmax(logits / temperature)[picked], atol=2e-4)
        assert cont.stopped == (cont.token_ids[-1] == STOP)


@pytest.mark.parametrize(
    "prefix,expected_mode,processed",
    [("raw-full", "full", False), ("processed-full", "full", True), ("processed-k20", "score", False)],
)
def test_exact_modes_report_the_models_log_p_and_log_q(vllm_like_server, local_model, prefix, expected_mode, processed):
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
        logits = model_logits(local_model, prefix + cont.token_ids)[len(prefix) - 1 : len(prefix) - 1 + len(cont)]
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
        result = PowerSampler(
            lm, PowerSamplingConfig(alpha=2.0, n_mcmc=2, block_size=3, max_new_tokens=6, seed=0)
        ).sample([1, 2])
        assert 1 <= len(result.token_ids) <= 6
        assert result.metadata["total_iterations"] > 0
    finally:
        lm.close()


PROMPT = [1, 5, 7]


def _constrained(constraint, n=3, prompt=PROMPT, max_new=40):
    from powersampling.backends.base import ContinuationRequest

    return [ContinuationRequest(prompt, max_new, generated_start=len(PROMPT), constraint=constraint)] * n


def _json_lm(url):
    from powersampling.backends.remote import RemoteLM

    return RemoteLM(url, tokenizer=json_tokenizer(), stop_token_ids=[STOP])  # vocab_size 40 from the tokenizer


@pytest.mark.parametrize("prefix", ["raw-full", "processed-full", "raw-full-guided"])
def test_schema_constrained_draws_are_exact_in_full_mode(vllm_like_server, local_model, prefix):
    lm = _json_lm(f"{vllm_like_server}/{prefix}")
    try:
        assert lm.mode == "full" and lm.exact_under_constraints and lm.inexact_constraints_reason is None
        constraint = json_constraint()
        conts = lm.sample(_constrained(constraint), 0.5, np.random.default_rng(0))
        assert_masked_values(local_model, constraint, conts, 0.5)
        for cont in conts:
            assert cont.stopped and cont.token_ids[-1] == STOP
            assert_matches_schema(lm.tokenizer.decode(cont.token_ids))
        assert lm._wire._grammar_field == ("guided_json" if prefix == "raw-full-guided" else "structured_outputs")
    finally:
        lm.close()


def test_a_server_that_masks_its_log_probabilities_must_mask_as_the_local_grammar(vllm_like_server, local_model):
    from powersampling.errors import CapabilityError

    lm = _json_lm(f"{vllm_like_server}/raw-full-masked")  # its grammar allows any whitespace
    try:
        with pytest.raises(CapabilityError, match="the server's grammar disagrees with the local one"):
            lm.sample(_constrained(json_constraint(), n=1), 0.5, np.random.default_rng(0))
        constraint = json_constraint(any_whitespace=True)
        conts = lm.sample(_constrained(constraint, n=2), 0.5, np.random.default_rng(1))
        assert_masked_values(local_model, constraint, conts, 0.5)
    finally:
        lm.close()


def test_power_sampling_under_a_json_schema_runs_through_the_server(vllm_like_server, local_model):
    """MH resamples from inside the grammar, which a server cannot start from: those rows are drawn token by
    token from the server's full distributions under the local mask."""
    from powersampling.samplers import build_sampler

    lm = _json_lm(f"{vllm_like_server}/raw-full")
    try:
        constraint = json_constraint()
        result = build_sampler("power", lm, alpha=2.0, n_mcmc=2, block_size=8, max_new_tokens=40, seed=0).sample(
            PROMPT, constraint=constraint
        )
        assert result.metadata["constrained"] and result.metadata["total_iterations"] > 0
        assert_matches_schema(result.text)
        logp, _ = masked_reference(local_model, constraint, PROMPT, result.token_ids, 0.5)
        np.testing.assert_allclose(result.logprobs, logp, atol=2e-4)
    finally:
        lm.close()


def test_score_mode_draws_under_the_servers_grammar_but_not_exactly(vllm_like_server):
    from powersampling.errors import CapabilityError
    from powersampling.samplers import build_sampler

    lm = _json_lm(f"{vllm_like_server}/processed-k20")
    try:
        assert lm.mode == "score" and not lm.exact_under_constraints
        assert "--max-logprobs -1" in lm.inexact_constraints_reason
        for cont in lm.sample(_constrained(json_constraint()), 0.5, np.random.default_rng(0)):
            assert not cont.exact and cont.stopped
            assert_matches_schema(lm.tokenizer.decode(cont.token_ids))
        with pytest.raises(CapabilityError, match=r"full-vocabulary log-probabilities.*--max-logprobs -1"):
            build_sampler("power", lm, alpha=2.0, n_mcmc=1, block_size=8, max_new_tokens=40, seed=0).sample(
                PROMPT, constraint=json_constraint()
            )
        with pytest.raises(CapabilityError, match="inside its grammar"):  # a server would start the grammar afresh
            lm.sample(_constrained(json_constraint(), n=1, prompt=PROMPT + [3]), 0.5, np.random.default_rng(0))
        baseline = build_sampler("sample", lm, max_new_tokens=40, seed=0).sample(PROMPT, constraint=json_constraint())
        assert_matches_schema(baseline.text)
    finally:
        lm.close()


def test_a_stop_string_constraint_cuts_the_draw_locally(vllm_like_server):
    from powersampling.backends.constraints import StopStringConstraint

    lm = _json_lm(f"{vllm_like_server}/processed-k20")  # exact in any mode: the constraint masks nothing
    try:
        (free,) = lm.sample(_constrained(None, n=1, max_new=12), 1.0, np.random.default_rng(3))
        pieces = [lm.tokenizer.decode([t]) for t in free.token_ids]
        stop = next(p for p in pieces[:-1] if p)
        first = pieces.index(stop)
        (cut,) = lm.sample(
            _constrained(StopStringConstraint(lm.tokenizer, [stop]), n=1, max_new=12), 1.0, np.random.default_rng(3)
        )  # the same seeds: the server draws the same tokens
        assert cut.token_ids == free.token_ids[: first + 1] and cut.stopped and cut.exact
        # log p comes from a scoring request over prefix + drawn tokens: a shorter request is a float32 forward
        # pass of another shape, which rounds differently in the last bits
        np.testing.assert_allclose(cut.logp, free.logp[: first + 1], rtol=1e-5)
        np.testing.assert_allclose(cut.logq, free.logq[: first + 1])
    finally:
        lm.close()


class EvenTokens:
    """A constraint no server knows: even token ids only, the stop token among them."""

    def start(self, generated):
        return self

    def allowed_tokens(self):
        return np.arange(VOCAB) % 2 == 0

    def advance(self, token_id):
        assert token_id % 2 == 0

    def is_finished(self):
        return False


def test_other_masking_constraints_are_drawn_token_by_token_in_full_mode(vllm_like_server, local_model):
    from powersampling.errors import CapabilityError

    lm = _json_lm(f"{vllm_like_server}/raw-full")
    try:
        conts = lm.sample(_constrained(EvenTokens(), n=2, max_new=6), 0.5, np.random.default_rng(0))
        assert_masked_values(local_model, EvenTokens(), conts, 0.5)
        assert all(t % 2 == 0 for cont in conts for t in cont.token_ids)
    finally:
        lm.close()
    lm = _json_lm(f"{vllm_like_server}/processed-k20")
    try:
        with pytest.raises(CapabilityError, match="full-vocabulary"):
            lm.sample(_constrained(EvenTokens(), n=1), 0.5, np.random.default_rng(0))
    finally:
        lm.close()


@pytest.mark.slow
def test_llama_cpp_server_is_refused_for_text_only_prompts():
    needs_module("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    from powersampling.backends.embedded import embedded_gguf_path
    from powersampling.backends.remote import RemoteLM
    from powersampling.errors import CapabilityError

    port = free_port()
    process = start_server(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(embedded_gguf_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "512",
            "--logits_all",
            "true",
        ]
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", process)
        with pytest.raises(CapabilityError, match="token-id prompts"):
            RemoteLM(f"http://127.0.0.1:{port}", vocab_size=49152)
    finally:
        stop_server(process)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(build_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
