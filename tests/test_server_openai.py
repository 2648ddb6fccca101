"""The OpenAI fields frameworks send, against a live server: stop strings, seeds that reproduce whatever was served
before, n > 1, and fields that are honoured or refused by name."""

from __future__ import annotations

import json

import httpx
import pytest

from powersampling import build_sampler
from powersampling.backends.constraints import StopStringConstraint
from test_server import KEY, client, serve, toy_lm


@pytest.fixture(scope="module")
def live():
    model = toy_lm("toy-openai")
    with serve(model, api_key=KEY) as server:
        server.model = model
        yield server


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


@pytest.mark.parametrize("method", ["power", "smc", "scalable-power", "sample", "greedy", "best-of-n"])
def test_stop_strings_end_the_completion_for_every_method(live, method):
    """The toy model's text is its token ids joined by spaces; "5 1" spans two tokens. A run that meets a stop
    string returns the text before it with finish_reason stop, and is the library's run under the same
    constraint."""
    stops = ["5 1", "7"]
    seen_stop = False
    for seed in range(12):
        out = client(live).completions.create(
            model="toy-openai",
            prompt=[1, 2, 3],
            max_tokens=8,
            stop=stops,
            seed=seed,
            extra_body={"method": method},
        )
        local = build_sampler(method, toy_lm("x"), max_new_tokens=8, seed=seed).sample(
            [1, 2, 3], constraint=StopStringConstraint(live.model.tokenizer, stops)
        )
        text, found = StopStringConstraint(live.model.tokenizer, stops).truncate(local.text)
        choice = out.choices[0]
        assert choice.text == text and not any(s in choice.text for s in stops)
        assert out.usage.completion_tokens == len(local.token_ids)
        if found:
            seen_stop = True
            assert choice.finish_reason == "stop"
        elif local.token_ids[-1] != 0:
            assert choice.finish_reason == "length" and len(local.token_ids) == 8
        if method == "greedy" or seen_stop:
            break
    assert seen_stop or method == "greedy", f"{method}: no run met a stop string"


def test_a_single_stop_string_and_chat(live):
    out = client(live).chat.completions.create(
        model="toy-openai",
        messages=[{"role": "user", "content": "1 2"}],
        max_tokens=8,
        stop="5",
        seed=3,
        extra_body={"method": "sample"},
    )
    assert "5" not in out.choices[0].message.content


@pytest.mark.parametrize(
    "stop",
    [["a", "b", "c", "d", "e"], [""], "", ["x" * 300], [1]],
)
def test_bad_stop_values_are_400_naming_stop(live, stop):
    response = post(live, "/v1/completions", {"model": "toy-openai", "prompt": "1", "stop": stop})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "stop"


def tiny_smol_model():
    """A random 2-layer Llama over the real SmolLM2 tokenizer: real transformers code (batched rows, the prefix
    cache pool), real text, fast."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from powersampling.backends.hf import TransformersLM
    from test_planner_helpers import smol_tokenizer

    tok = smol_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=2,
    )
    return TransformersLM(LlamaForCausalLM(config).eval(), tok, name="tiny-smol")


@pytest.fixture(scope="module")
def smol():
    model = tiny_smol_model()
    with serve(model, api_key=KEY) as server:
        server.model = model
        yield server


def _chat(server, content: str, **fields):
    body = {"model": "tiny-smol", "messages": [{"role": "user", "content": content}], "max_tokens": 12, **fields}
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_seeded_request_gives_the_same_text_whatever_was_served_before(smol):
    """Interleaved: the same seeded request between unrelated ones (other prompts, batched rows of SMC and n > 1,
    unseeded runs) returns the same tokens with bitwise the same log-probabilities (the decode's own, which carry
    the numerics of the batch layout they were computed in)."""
    a = {"seed": 0, "logprobs": True, "method": "power", "power_sampling": {"n_mcmc": 3, "block_size": 4}}

    def key(out):
        return [(c["token"], c["logprob"]) for c in out["choices"][0]["logprobs"]["content"]]

    first = _chat(smol, "What is 12*7?", **a)
    others = [
        lambda: _chat(smol, "Tell me a story about a cat and a dog.", method="smc", power_sampling={"chains": 6}),
        lambda: _chat(smol, "What is 12*7? Think first.", n=3, method="sample"),
        lambda: _chat(smol, "What is 12*7?", method="power", max_tokens=20, power_sampling={"chains": 4}),
    ]
    for other in others:
        other()
        again = _chat(smol, "What is 12*7?", **a)
        assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
        assert key(again) == key(first)


def test_n_choices_are_independent_samples_with_usage_summed(smol):
    one = _chat(smol, "Name a color.", seed=4, method="sample")
    three = _chat(smol, "Name a color.", seed=4, method="sample", n=3)
    texts = [c["message"]["content"] for c in three["choices"]]
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert len(set(texts)) == 3
    per_choice = three["power_sampling"]["choices"]
    # the rows of one batched draw, reproducible from the seed
    assert [c["batched_rows"] for c in per_choice] == [3, 3, 3] and {c["method"] for c in per_choice} == {"sample"}
    again = _chat(smol, "Name a color.", seed=4, method="sample", n=3)
    assert [c["message"]["content"] for c in again["choices"]] == texts
    assert three["usage"]["completion_tokens"] == sum(c["final_tokens"] for c in per_choice)
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]


def test_n_low_temp_choices_are_batched_rows_and_greedy_is_decoded_once(smol):
    low = _chat(smol, "Name a color.", seed=5, method="low-temp", n=2)
    assert [c["batched_rows"] for c in low["power_sampling"]["choices"]] == [2, 2]
    assert {c["temperature"] for c in low["power_sampling"]["choices"]} == {0.25}  # 1/alpha, alpha 4 by default
    greedy = _chat(smol, "Name a color.", method="greedy", n=2)
    one = _chat(smol, "Name a color.", method="greedy")
    texts = {c["message"]["content"] for c in greedy["choices"]}
    assert texts == {one["choices"][0]["message"]["content"]}
    assert greedy["usage"]["completion_tokens"] == 2 * one["usage"]["completion_tokens"]


def test_echo_returns_the_prompt_log_probabilities_of_the_model(smol):
    """vLLM's layout, for a batch of a string and token ids, max_tokens 0: every prompt token's log p under the
    model (None for the first), the top alternatives, offsets into the echoed text; equal to the in-process
    next-token distributions."""
    from powersampling.backends.base import ContinuationRequest

    model = smol.model
    text = "The capital of France is Paris."
    ids = model.tokenizer.encode(text)
    body = {"model": "tiny-smol", "prompt": [text, ids[:4]], "echo": True, "logprobs": 2, "max_tokens": 0}
    response = post(smol, "/v1/completions", body)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(choices) == 2 and choices[0]["text"] == text
    lp = choices[0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == len(ids) and "".join(lp["tokens"]) == text
    assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(len(ids))]
    rows = model.next_token_logprobs([ContinuationRequest(ids[:i], 1) for i in range(1, len(ids))])
    expected = [float(rows[i - 1][ids[i]]) for i in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    for i in range(1, len(ids)):
        top = lp["top_logprobs"][i]
        assert len(top) <= 2 and max(top.values()) == pytest.approx(float(rows[i - 1].max()), abs=1e-4)
    assert choices[1]["logprobs"]["token_logprobs"][1:] == pytest.approx(expected[:3], abs=1e-4)
    assert choices[1]["finish_reason"] == "length"


def test_chat_logprobs_are_the_model_log_p_of_the_returned_tokens(smol):
    from powersampling.backends.base import ContinuationRequest

    out = _chat(smol, "Say hi.", seed=1, method="power", logprobs=True, top_logprobs=3, stop=["\n"])
    content = out["choices"][0]["logprobs"]["content"]
    ids = smol.model.tokenizer.chat_prompt([{"role": "user", "content": "Say hi."}])
    tokens = [smol.model.tokenizer.encode(c["token"]) for c in content]
    assert all(len(c["top_logprobs"]) == 3 for c in content)
    assert "".join(c["token"] for c in content).startswith(out["choices"][0]["message"]["content"])
    if content and len(tokens[0]) == 1:
        row = smol.model.next_token_logprobs([ContinuationRequest(ids, 1)])[0]
        assert content[0]["logprob"] == pytest.approx(float(row[tokens[0][0]]), abs=1e-4)


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"method": "greedy", "temperature": 0.7}, "temperature"),
        ({"method": "power", "temperature": 0}, "temperature"),
        ({"method": "low-temp", "temperature": 0.5}, "temperature"),
        ({"method": "power", "temperature": 0.5, "power_sampling": {"proposal_temperature": 0.3}}, "temperature"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "1", "name": "bob"}]}, "messages.0.name"),
        ({"messages": [{"role": "user", "content": "1", "tool_calls": []}]}, "messages.0.tool_calls"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_fields_without_a_meaning_are_refused_by_name(live, fields, param):
    body = {"model": "toy-openai", "messages": [{"role": "user", "content": "1 2"}], "max_tokens": 4, **fields}
    response = post(live, "/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_temperature_is_the_proposal_temperature_under_power_and_zero_means_greedy(live):
    out = post(live, "/v1/completions", {"model": "toy-openai", "prompt": "1 2", "max_tokens": 4, "temperature": 0.5})
    assert out.json()["power_sampling"]["method"] == "power"
    assert out.json()["power_sampling"]["proposal_temperature"] == 0.5
    out = post(live, "/v1/completions", {"model": "toy-openai", "prompt": "1 2", "max_tokens": 4, "temperature": 0})
    assert out.json()["power_sampling"]["method"] == "greedy"
    local = build_sampler("greedy", toy_lm("x"), max_new_tokens=4).sample([1, 2])
    assert out.json()["choices"][0]["text"] == local.text


def test_the_openapi_schema_has_integer_bounds_and_the_served_model(live):
    schema = httpx.get(live.url + "/openapi.json").json()
    seed = schema["components"]["schemas"]["CompletionRequest"]["properties"]["seed"]["anyOf"][0]
    assert seed["exclusiveMaximum"] == 2**63 and isinstance(seed["exclusiveMaximum"], int)
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        assert schema["components"]["schemas"][name]["properties"]["model"]["enum"] == ["toy-openai"]
    assert '"exclusiveMaximum":9.2' not in httpx.get(live.url + "/openapi.json").text.replace(" ", "")


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}, "n": {"type": "integer"}},
    "required": ["ok", "color"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("method", ["power", "smc", "scalable-power", "sample", "low-temp", "greedy", "best-of-n"])
def test_response_format_json_schema_on_every_method(smol, method):
    import json

    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    ps = {"n_mcmc": 2, "block_size": 8} if method == "power" else {}
    out = _chat(smol, "Answer in JSON.", seed=2, method=method, max_tokens=48, response_format=fmt, power_sampling=ps)
    choice = out["choices"][0]
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    assert choice["finish_reason"] == "stop" and out["power_sampling"]["constrained"]


def test_response_format_json_object_and_refusals(smol, live):
    import json

    # a random model fills free-form keys until the cap; the grammar still admits only an object's prefix
    out = _chat(smol, "JSON please.", seed=1, method="greedy", max_tokens=48, response_format={"type": "json_object"})
    text, reason = out["choices"][0]["message"]["content"], out["choices"][0]["finish_reason"]
    assert text.startswith("{")
    if reason == "stop":
        assert isinstance(json.loads(text), dict)
    bad = post(
        smol,
        "/v1/chat/completions",
        {
            "model": "tiny-smol",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema"},
        },
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"
    no_tokenizer = post(
        live,
        "/v1/chat/completions",
        {
            "model": "toy-openai",
            "messages": [{"role": "user", "content": "1"}],
            "response_format": {"type": "json_object"},
        },
    )
    assert no_tokenizer.status_code == 400 and no_tokenizer.json()["error"]["param"] == "response_format"


def test_responses_match_the_published_response_models(smol):
    from powersampling.server.schemas import ChatCompletionResponse, CompletionResponse

    chat = _chat(smol, "Hi.", seed=0, method="sample", n=2, logprobs=True, top_logprobs=2)
    ChatCompletionResponse.model_validate(chat)
    body = {"model": "tiny-smol", "prompt": ["Hi", "Yo"], "echo": True, "logprobs": 1, "max_tokens": 2, "seed": 0}
    CompletionResponse.model_validate(post(smol, "/v1/completions", body).json())
    schema = httpx.get(smol.url + "/openapi.json").json()
    content = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_power_n_is_chains_of_one_run_as_batched_rows(live):
    """n > 1 under power sampling: n chains of one run (batched rows), choice i the final state of chain i, each
    ending by its own rule; the library's run with n_chains = n and the same seed gives the same states."""
    stops = ["5 1"]
    out = client(live).completions.create(
        model="toy-openai",
        prompt=[1, 2, 3],
        max_tokens=8,
        n=3,
        seed=5,
        stop=stops,
        extra_body={"method": "power", "power_sampling": {"n_mcmc": 2, "block_size": 4}},
    )
    constraint = StopStringConstraint(live.model.tokenizer, stops)
    local = build_sampler("power", toy_lm("x"), max_new_tokens=8, seed=5, n_chains=3, n_mcmc=2, block_size=4).sample(
        [1, 2, 3], constraint=constraint
    )
    assert [c.text for c in out.choices] == [constraint.truncate(s.text)[0] for s in local.samples]
    assert out.usage.completion_tokens == sum(len(s.token_ids) for s in local.samples)
    per_choice = out.model_extra["power_sampling"]["choices"]
    assert all(c["n_chains"] == 3 for c in per_choice)
    for choice, sample in zip(out.choices, local.samples):
        ended = sample.token_ids[-1] == 0 or constraint.start(sample.token_ids).is_finished()
        assert choice.finish_reason == ("stop" if ended else "length")


def test_a_stream_carries_every_choice_with_its_logprobs(live):
    """n > 1, logprobs and echo stream too: the final chunks hold the choices of the non-streamed body, one each."""
    body = {"model": "toy-openai", "prompt": "1 2", "max_tokens": 4, "n": 2, "seed": 3, "logprobs": 1, "echo": True}
    whole = post(live, "/v1/completions", body).json()["choices"]
    with httpx.stream(
        "POST",
        live.url + "/v1/completions",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    streamed = [c for line in lines[:-1] for c in json.loads(line)["choices"]]
    assert [c["index"] for c in streamed] == [0, 1]
    for got, want in zip(streamed, whole):
        assert got["text"] == want["text"] and got["logprobs"] == want["logprobs"]
