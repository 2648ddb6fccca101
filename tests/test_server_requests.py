"""What the server accepts as a request: methods from the registry, strictly typed fields, JSON bodies only, prompts
that fit the model. The real app behind FastAPI's TestClient (no network: the checks are about parsing)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from powersampling.samplers import method_names
from powersampling.server import ServerSettings, create_app
from test_server import toy_lm


@pytest.fixture(scope="module")
def http():
    with TestClient(create_app(toy_lm("toy-req"), ServerSettings(max_prompt_tokens=64))) as client:
        yield client


def _completion(**fields):
    return {"model": "toy-req", "prompt": "1 2", "max_tokens": 4, **fields}


def _error(response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize("method", ["", "beam", " power"])
def test_a_method_outside_the_registry_is_400_naming_method(http, method):
    error = _error(http.post("/v1/completions", json=_completion(method=method)))
    assert error["param"] == "method" and error["code"] == "invalid_value"
    assert "power" in error["message"]  # says what to choose from


def test_openapi_lists_the_registry_methods():
    schema = TestClient(create_app(toy_lm("toy-openapi"))).get("/openapi.json").json()["components"]["schemas"]
    for model in ("CompletionRequest", "ChatCompletionRequest"):
        choices = [s for s in schema[model]["properties"]["method"]["anyOf"] if s.get("type") == "string"]
        assert choices[0]["enum"] == list(method_names())


def test_a_method_registered_after_the_app_was_built_is_served():
    code = """
from fastapi.testclient import TestClient
from powersampling import FunctionLM
from powersampling.samplers import method_spec, register_method
from powersampling.samplers.base import MethodSpec
from powersampling.server import create_app
import numpy as np

client = TestClient(create_app(FunctionLM(4, 0, lambda prefix: np.zeros(4), name="m")))
greedy = method_spec("greedy")
register_method(MethodSpec("my-greedy", greedy.config, greedy.build))
answer = client.post("/v1/completions", json={"model": "m", "prompt": [1], "max_tokens": 2, "method": "my-greedy"})
assert answer.status_code == 200, answer.text
enum = client.get("/openapi.json").json()["components"]["schemas"]["CompletionRequest"]["properties"]["method"]
assert "my-greedy" in enum["anyOf"][0]["enum"], enum
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 5.5}, "max_tokens"),  # 5.0 is an integer (JSON Schema), 5.5 is not
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"seed": "1"}, "seed"),
        ({"power_sampling": {"alpha": "2"}}, "power_sampling.alpha"),
        ({"power_sampling": {"n_mcmc": True}}, "power_sampling.n_mcmc"),
        ({"stream": True, "stream_options": {"include_usage": "true"}}, "stream_options.include_usage"),
        ({"prompt": [1, True]}, "prompt"),
    ],
)
def test_fields_are_strictly_typed(http, fields, param):
    error = _error(http.post("/v1/completions", json=_completion(**fields)))
    assert error["param"] is not None and error["param"].startswith(param), error


def test_an_int_is_a_float():
    with TestClient(create_app(toy_lm("toy-req"))) as client:
        for fields in ({"method": "sample", "temperature": 1}, {"power_sampling": {"alpha": 2, "n_mcmc": 1}}):
            answer = client.post("/v1/completions", json=_completion(**fields))
            assert answer.status_code == 200, answer.text


def test_plan_fields_are_strictly_typed(http):
    for fields, param in (
        ({"max_depth": "1"}, "max_depth"),
        ({"seed": True}, "seed"),
        ({"power_sampling": {"n_mcmc": "2"}}, "power_sampling.n_mcmc"),
    ):
        error = _error(http.post("/v1/plan", json={"request": "Plan a party", **fields}))
        assert error["param"] == param


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_declared_json_is_415(http, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/plan"):
        response = http.post(path, content=b'{"model": "toy-req", "prompt": "1"}', headers=headers)
        error = _error(response, 415)
        assert error["code"] == "unsupported_media_type" and error["type"] == "invalid_request_error"
        assert "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_is_json(http, content_type):
    response = http.post(
        "/v1/completions",
        content=b'{"model": "toy-req", "prompt": "1", "max_tokens": 2}',
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_an_empty_body_says_so(http, body):
    error = _error(http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"}))
    assert error["message"] == "the request body is empty; send a JSON object"


def test_a_null_body_is_not_a_missing_parameter(http):
    error = _error(http.post("/v1/completions", content=b"null", headers={"Content-Type": "application/json"}))
    assert error["message"] == "the request body must be a JSON object"


@pytest.fixture(scope="module")
def short_context():
    model = toy_lm("toy-ctx")
    model.context_length = 12  # a model that states its window
    with TestClient(create_app(model, ServerSettings(request_timeout_s=5))) as client:
        yield client


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": [1] * 9, "max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": "1 2", "max_tokens": 11}, "prompt"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "1 2 3 4 5 6 7 8 9"}], "max_tokens": 4},
            "messages",
        ),
    ],
)
def test_prompt_and_max_tokens_beyond_the_context_are_refused_at_once(short_context, path, body, param):
    error = _error(short_context.post(path, json={"model": "toy-ctx", **body}))
    assert error["code"] == "context_length_exceeded" and error["param"] == param
    assert "context length" in error["message"] and "12" in error["message"]


def test_prompt_and_max_tokens_that_fit_the_context_run(short_context):
    response = short_context.post(
        "/v1/completions", json={"model": "toy-ctx", "prompt": [1] * 8, "max_tokens": 4, "method": "greedy"}
    )
    assert response.status_code == 200, response.text


def test_docs_are_one_self_contained_page():
    with TestClient(create_app(toy_lm("toy-docs"), ServerSettings(api_key="k"))) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        for path in ("/v1/completions", "/v1/chat/completions", "PowerSamplingParams"):
            assert path in page.text
        assert "POST /v1/plan" not in page.text  # the planner needs a grammar, which the toy model has not
        lowered = page.text.lower()
        assert "<script" not in lowered and "<link" not in lowered and "//" not in lowered.replace("</", "")
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/redoc").status_code == 404


def test_no_docs_serves_neither_page_nor_schema():
    with TestClient(create_app(toy_lm("toy-docs"), ServerSettings(docs=False))) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404
