"""RemoteLM over SGLang's native ``/generate`` API, against a real server process started by the tests.

SGLang itself cannot be installed here: its runtime needs a CUDA GPU and compiled kernels (sgl-kernel,
flashinfer), and the test machine is a 2-core CPU without a GPU. The peer is therefore a protocol-faithful
stand-in: a FastAPI app (this file, run as a subprocess) that serves a tiny random Llama through SGLang's
``/generate`` wire format with log-probabilities computed from the model's real logits the way SGLang 0.5.23
computes them (file paths below are inside the sglang package):

* sampled tokens (``output_token_logprobs``, ``output_top_logprobs``): log softmax(logits / T), before any
  filtering (srt/layers/sampler.py); log_softmax(logits) when ``SGLANG_RETURN_ORIGINAL_LOGPROB`` is set and at
  temperature 0, which SGLang runs as top_k 1 at temperature 1 (srt/sampling/sampling_params.py);
* ``input_token_logprobs``: log_softmax of the raw logits, one ``[logprob, token_id, text]`` entry per input
  token from ``logprob_start_len``, the first without a value, echoed ids at or past vocab_size - 1 written as 0
  (srt/managers/scheduler_components/logprob_result_processor.py); ``logprob_start_len`` -1 means no input
  entries, one past the prompt is refused (srt/managers/scheduler.py);
* stop: on ``stop_token_ids`` and on the model's EOS unless ``ignore_eos`` (which switches off both), the stop
  token kept, ``finish_reason`` ``{"type": "stop", "matched": id}`` (srt/managers/schedule_batch.py);
* an unknown ``sampling_params`` key is refused with 400, as SGLang's contract check does (api/v1/api_types.py).
  Truncation (top_k/top_p/min_p), penalties, grammars other than ``json_schema`` and stop strings are refused as
  well: the stand-in does not implement them, and RemoteLM must never ask for them;
* ``json_schema``: sampled under an xgrammar mask (the tokenizer of ``json_tokenizer()``), compact JSON as if
  started with ``--constrained-json-disable-any-whitespace``; log-probabilities stay the unmasked model's.

Two server configurations are mounted under path prefixes, as SGLang would be started with different settings:

    /default    SGLang as shipped (sampled-token log-probabilities carry the temperature)
    /original   SGLANG_RETURN_ORIGINAL_LOGPROB=1 (sampled-token log-probabilities at temperature 1)
"""

from __future__ import annotations

import sys
import uuid

import numpy as np
import pytest

from test_remote_backend import (  # noqa: F401
    STOP,
    VOCAB,
    ServerGrammar,
    _constrained,
    _requests,
    assert_masked_values,
    assert_matches_schema,
    free_port,
    json_constraint,
    json_tokenizer,
    local_model,
    log_softmax,
    model_logits,
    start_server,
    stop_server,
    tiny_model,
    wait_for,
)

CONFIGS = {"default": False, "original": True}  # prefix -> SGLANG_RETURN_ORIGINAL_LOGPROB
TOP_K_ALL = 1 << 30
SAMPLING_KEYS = {  # SGLang 0.5.23 api/v1/api_types.py SamplingParams
    "max_new_tokens",
    "stop",
    "stop_token_ids",
    "stop_regex",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_new_tokens",
    "n",
    "json_schema",
    "regex",
    "ebnf",
    "structural_tag",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "stream_interval",
    "logit_bias",
    "sampling_seed",
    "custom_params",
    "beam_width",
    "watermark",
    "choice",
}
NEUTRAL = {
    "top_p": 1.0,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "n": 1,
    "regex": None,
    "ebnf": None,
    "structural_tag": None,
    "stop": None,
    "stop_regex": None,
    "logit_bias": {},
    "custom_params": None,
    "beam_width": None,
    "watermark": None,
    "choice": [],
}


# the server (runs in a subprocess)


class BadRequest(Exception):
    pass


def top_entries(logprobs: np.ndarray, k: int) -> list:
    order = np.argsort(-logprobs, kind="stable")[:k]
    return [[float(logprobs[v]), int(v), None] for v in order]


def generate_one(model, original: bool, prompt, params: dict, return_logprob: bool, start: int, k: int) -> dict:
    if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
        raise BadRequest("input_ids must be a non-empty list of token ids")
    unknown = sorted(set(params) - SAMPLING_KEYS)
    if unknown:
        raise BadRequest(
            f"unknown field `{unknown[0]}`, expected one of " + ", ".join(f"`{key}`" for key in sorted(SAMPLING_KEYS))
        )
    for key, neutral in NEUTRAL.items():
        if params.get(key, neutral) not in (neutral, None):
            raise BadRequest(f"this stand-in does not implement {key}={params[key]!r}")
    temperature = float(params.get("temperature", 1.0))
    top_k = params.get("top_k", TOP_K_ALL)
    top_k = TOP_K_ALL if top_k == -1 else int(top_k)
    if 0 <= temperature < 1e-6:  # SGLang: greedy is top_k 1 at temperature 1
        temperature, top_k = 1.0, 1
    if temperature < 0 or (top_k != 1 and top_k < VOCAB):
        raise BadRequest("this stand-in implements no top_k truncation (and no negative temperature)")
    max_new = int(params.get("max_new_tokens", 128))
    stops = set(params.get("stop_token_ids") or [])
    ignore_eos = bool(params.get("ignore_eos", False))
    rng = np.random.default_rng(params.get("sampling_seed"))
    n = len(prompt)
    if start == -1:
        start = n
    if start > n:
        raise BadRequest(
            f"req.logprob_start_len={start} is higher than the number of input tokens "
            f"len(req.origin_input_ids)={n}. Please use a smaller logprob_start_len."
        )

    grammar = ServerGrammar(params["json_schema"], any_whitespace=False) if params.get("json_schema") else None
    ids = list(prompt)
    out, out_lp, out_top = [], [], []
    finish = {"type": "length", "length": max_new}
    for _ in range(max_new):
        logits = model_logits(model, ids)[-1]
        masked = logits if grammar is None else np.where(grammar.allowed(), logits, -np.inf)
        if top_k == 1:
            token = int(np.argmax(masked))
        else:
            probs = np.exp(log_softmax(masked / temperature))
            token = int(rng.choice(VOCAB, p=probs / probs.sum()))
        if grammar is not None:
            grammar.accept(token)
        reported = log_softmax(logits if original else logits / temperature)
        out.append(token)
        out_lp.append([float(reported[token]), token, None])
        if k > 0:
            out_top.append(top_entries(reported, k))
        ids.append(token)
        if not ignore_eos and (token in stops or token == STOP):
            finish = {"type": "stop", "matched": token}
            break

    meta = {
        "id": uuid.uuid4().hex,
        "finish_reason": finish,
        "prompt_tokens": n,
        "completion_tokens": len(out),
        "cached_tokens": 0,
        "weight_version": "default",
    }
    if return_logprob:
        scored = log_softmax(model_logits(model, prompt)) if start < n else None
        echo = [t if t < VOCAB - 1 else 0 for t in prompt]
        meta["input_token_logprobs"] = [
            [None if i == start else float(scored[i - 1][prompt[i]]), echo[i], None] for i in range(start, n)
        ]
        meta["output_token_logprobs"] = out_lp
        meta["output_token_logprobs_length"] = len(out_lp)
        if k > 0:
            meta["input_top_logprobs"] = [
                None if i == start else top_entries(scored[i - 1], k) for i in range(start, n)
            ]
            meta["output_top_logprobs"] = out_top
    return {"text": "", "output_ids": out, "meta_info": meta}  # text: the stand-in has no tokenizer


def build_app():
    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    torch.set_num_threads(1)
    model = tiny_model()
    app = FastAPI()

    def mount(prefix: str, original: bool) -> None:
        info = {
            "model_path": "tiny-llama",
            "served_model_name": "tiny-llama",
            "tokenizer_path": None,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
        }

        @app.get(f"/{prefix}/health")
        def health():
            return {}

        @app.get(f"/{prefix}/model_info")
        def model_info():
            return info

        @app.get(f"/{prefix}/get_model_info")
        def get_model_info():
            return info

        @app.post(f"/{prefix}/generate")
        def generate(body: dict):
            try:
                if body.get("input_ids") is None:
                    raise BadRequest("this stand-in takes token-id prompts (input_ids) only")
                if body.get("stream") or body.get("token_ids_logprob") is not None:
                    raise BadRequest("this stand-in implements neither stream nor token_ids_logprob")
                batch = (
                    isinstance(body["input_ids"], list)
                    and bool(body["input_ids"])
                    and isinstance(body["input_ids"][0], list)
                )
                prompts = body["input_ids"] if batch else [body["input_ids"]]

                def per_request(key, default):
                    value = body.get(key)
                    value = default if value is None else value
                    return value if batch and isinstance(value, list) else [value] * len(prompts)

                params = per_request("sampling_params", {})
                flags = per_request("return_logprob", False)
                starts = per_request("logprob_start_len", -1)
                tops = per_request("top_logprobs_num", 0)
                outs = [
                    generate_one(model, original, prompt, dict(p), bool(f), int(s), int(k))
                    for prompt, p, f, s, k in zip(prompts, params, flags, starts, tops)
                ]
            except BadRequest as exc:
                return JSONResponse({"error": {"message": str(exc)}}, 400)
            return outs if batch else outs[0]

    for prefix, original in CONFIGS.items():
        mount(prefix, original)
    return app


# the tests


@pytest.fixture(scope="module")
def sglang_like_server():
    port = free_port()
    process = start_server([sys.executable, __file__, str(port)])
    try:
        wait_for(f"http://127.0.0.1:{port}/default/health", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def _check_against_model(local_model, prefixes, conts, temperature, atol=1e-4):
    # the server decodes with a float32 KV cache, the reference is one float32 forward: logits agree to ~1e-6
    # relative, which at logits of tens and T = 0.5 is up to ~2e-5 in log q
    for prefix, cont in zip(prefixes, conts):
        assert 1 <= len(cont) <= 6
        logits = model_logits(local_model, list(prefix) + cont.token_ids)[len(prefix) - 1 : len(prefix) - 1 + len(cont)]
        picked = np.arange(len(cont)), cont.token_ids
        np.testing.assert_allclose(cont.logp, log_softmax(logits)[picked], atol=atol)
        expected_q = np.zeros(len(cont)) if temperature == 0 else log_softmax(logits / temperature)[picked]
        np.testing.assert_allclose(cont.logq, expected_q, atol=atol)
        assert cont.stopped == (cont.token_ids[-1] == STOP)
        assert STOP not in cont.token_ids[:-1]


PREFIXES = [[1, 5, 7], [1, 9], [1, 5, 7, 3, 3]]


def test_default_server_gives_the_models_log_p_and_log_q(sglang_like_server, local_model):
    from powersampling.backends.remote import RemoteLM

    lm = RemoteLM(f"{sglang_like_server}/default", vocab_size=VOCAB, stop_token_ids=[STOP])  # api="auto"
    try:
        assert (lm.api, lm.mode, lm.logprobs_are_processed, lm.model) == ("sglang", "score", True, "tiny-llama")
        conts = lm.sample(_requests(PREFIXES), 0.5, np.random.default_rng(0))
        _check_against_model(local_model, PREFIXES, conts, 0.5)
        greedy = lm.sample(_requests(PREFIXES), 0.0, np.random.default_rng(0))
        _check_against_model(local_model, PREFIXES, greedy, 0.0)
        for prefix, cont in zip(PREFIXES, greedy):
            logits = model_logits(local_model, list(prefix) + cont.token_ids)
            assert cont.token_ids == [int(np.argmax(row)) for row in logits[len(prefix) - 1 : -1]]
    finally:
        lm.close()


def test_original_logprob_server_is_exact_through_the_whole_distribution(sglang_like_server, local_model):
    from powersampling.backends.remote import RemoteLM

    lm = RemoteLM(f"{sglang_like_server}/original", vocab_size=VOCAB, stop_token_ids=[STOP])
    try:
        assert (lm.api, lm.mode, lm.logprobs_are_processed) == ("sglang", "full", False)
        conts = lm.sample(_requests(PREFIXES), 0.5, np.random.default_rng(1))
        _check_against_model(local_model, PREFIXES, conts, 0.5)
    finally:
        lm.close()


def test_original_logprob_server_is_refused_without_the_whole_distribution(sglang_like_server, local_model):
    from powersampling.backends.remote import RemoteLM
    from powersampling.errors import CapabilityError

    url = f"{sglang_like_server}/original"
    with pytest.raises(CapabilityError, match="SGLANG_RETURN_ORIGINAL_LOGPROB") as no_vocabulary:
        RemoteLM(url, stop_token_ids=[STOP])
    assert "\n" not in str(no_vocabulary.value) and "no vocab_size" in str(no_vocabulary.value)
    with pytest.raises(CapabilityError, match="did not return a whole distribution"):
        RemoteLM(url, vocab_size=VOCAB - 8, stop_token_ids=[STOP])
    lm = RemoteLM(url, stop_token_ids=[STOP], approximate=True)
    try:
        assert lm.mode == "topk"
        (cont,) = lm.sample(_requests([[1, 4, 4]]), 0.5, np.random.default_rng(2))
        logits = model_logits(local_model, [1, 4, 4] + cont.token_ids)[2 : 2 + len(cont)]
        picked = np.arange(len(cont)), cont.token_ids
        np.testing.assert_allclose(cont.logp, log_softmax(logits)[picked], atol=1e-4)  # log p stays exact
        error = np.abs(cont.logq - log_softmax(logits / 0.5)[picked])
        assert np.all(error <= lm.max_log_z_gap + 1e-6)  # log q is off by at most the bound's width
    finally:
        lm.close()


def test_server_side_stop_is_reported_as_stopped(sglang_like_server, local_model):
    """SGLang stops on the model's EOS even when RemoteLM was given no stop ids (ignore_eos stays off)."""
    from powersampling.backends.remote import RemoteLM

    def greedy_path(prefix, limit=10):
        ids = list(prefix)
        for _ in range(limit):
            ids.append(int(np.argmax(model_logits(local_model, ids)[-1])))
            if ids[-1] == STOP:
                return ids[len(prefix) :]
        return None

    prefix, path = next((p, path) for p in ([1, a] for a in range(2, VOCAB)) if (path := greedy_path(p)))
    lm = RemoteLM(f"{sglang_like_server}/default", vocab_size=VOCAB, stop_token_ids=[])
    try:
        (cont,) = lm.sample(_requests([prefix], max_new=12), 0.0, np.random.default_rng(0))
        assert cont.token_ids == path and cont.stopped
    finally:
        lm.close()


def test_api_selection(sglang_like_server):
    from powersampling.backends.remote import RemoteLM
    from powersampling.errors import ConfigError, ModelLoadError

    lm = RemoteLM(f"{sglang_like_server}/default/v1", api="sglang", vocab_size=VOCAB, stop_token_ids=[STOP])
    try:
        assert (lm.api, lm.base_url) == ("sglang", f"{sglang_like_server}/default")
    finally:
        lm.close()
    with pytest.raises(ModelLoadError, match="v1/models"):  # the SGLang stand-in serves no OpenAI routes
        RemoteLM(f"{sglang_like_server}/default", api="vllm", vocab_size=VOCAB)
    with pytest.raises(ModelLoadError, match="SGLang"):
        RemoteLM(f"{sglang_like_server}/nothing-here", api="sglang", vocab_size=VOCAB)
    with pytest.raises(ConfigError, match="unknown remote api"):
        RemoteLM(sglang_like_server, api="tgi")


def test_power_sampling_runs_through_sglang(sglang_like_server, local_model):
    from powersampling.backends.remote import RemoteLM
    from powersampling.samplers import PowerSampler, PowerSamplingConfig

    lm = RemoteLM(f"{sglang_like_server}/default", vocab_size=VOCAB, stop_token_ids=[STOP])
    try:
        result = PowerSampler(
            lm, PowerSamplingConfig(alpha=2.0, n_mcmc=2, block_size=3, max_new_tokens=6, seed=0)
        ).sample([1, 2])
        assert 1 <= len(result.token_ids) <= 6
        assert result.metadata["total_iterations"] > 0
        logits = model_logits(local_model, [1, 2] + result.token_ids)[1 : 1 + len(result.token_ids)]
        expected = log_softmax(logits)[np.arange(len(result.token_ids)), result.token_ids]
        np.testing.assert_allclose(result.logprobs, expected, atol=1e-4)
    finally:
        lm.close()


def test_schema_constrained_draws_are_exact_with_original_log_probabilities(sglang_like_server, local_model):
    from powersampling.backends.remote import RemoteLM

    lm = RemoteLM(f"{sglang_like_server}/original", tokenizer=json_tokenizer(), stop_token_ids=[STOP])
    try:
        assert lm.mode == "full" and lm.exact_under_constraints
        constraint = json_constraint()
        conts = lm.sample(_constrained(constraint, n=2), 0.5, np.random.default_rng(0))
        assert_masked_values(local_model, constraint, conts, 0.5, atol=1e-4)
        for cont in conts:
            assert cont.stopped
            assert_matches_schema(lm.tokenizer.decode(cont.token_ids))
    finally:
        lm.close()


def test_default_server_draws_under_its_grammar_but_not_exactly(sglang_like_server):
    from powersampling.backends.remote import RemoteLM

    lm = RemoteLM(f"{sglang_like_server}/default", tokenizer=json_tokenizer(), stop_token_ids=[STOP])
    try:
        assert lm.mode == "score" and not lm.exact_under_constraints
        assert "SGLANG_RETURN_ORIGINAL_LOGPROB=1" in lm.inexact_constraints_reason
        for cont in lm.sample(_constrained(json_constraint(), n=2), 0.5, np.random.default_rng(0)):
            assert not cont.exact and cont.stopped
            assert_matches_schema(lm.tokenizer.decode(cont.token_ids))
    finally:
        lm.close()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(build_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
