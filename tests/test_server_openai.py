"""The OpenAI fields frameworks send, against a live server: stop strings, seeds that reproduce whatever was served
before, n > 1, and fields that are honoured or refused by name."""

from __future__ import annotations

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
