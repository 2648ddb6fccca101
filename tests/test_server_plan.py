"""/v1/plan: the planner behind the server's queue, with its route, fallback and quality reported and metered.
The model is the planner tests' ScriptedLM (a real LanguageModel with the SmolLM2 tokenizer whose samples follow
scripted answers); samplers and the grammar run for real."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from powersampling import FunctionLM
from powersampling.server import ServerSettings, create_app
from powersampling.server.background import BackgroundServer
from test_planner_helpers import ScriptedLM, answer

TASKS = (
    ("Choose a date for the party", []),
    ("Book a venue for the party", [1]),
    ("Send invitations to friends", [1, 2]),
)


def _answers(prompt: str) -> str:
    return answer(*TASKS)


def _metric(url: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def _serve(model, name: str):
    return BackgroundServer(create_app(model, ServerSettings(model_name=name, request_timeout_s=300)))


def test_plan_on_the_baseline_route():
    with _serve(ScriptedLM(_answers), "plan-baseline") as server:
        response = httpx.post(
            server.url + "/v1/plan",
            timeout=300,
            json={"request": "Plan a birthday party", "route": "baseline", "max_depth": 1, "seed": 0},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "plan" and body["route"] == "baseline" and body["fallback"] is None
        assert [t["description"] for t in body["plan"]["tasks"]] == [d for d, _ in TASKS]
        assert body["plan"]["tasks"][2]["dependencies"] == ["t1", "t2"]
        assert 0 < body["quality_score"] <= 1 and body["usage"]["model_calls"] == 1
        labels = dict(model_name="plan-baseline", route="baseline")
        assert _metric(server.url, "powersampling_plan_quality_score_count", **labels) == 1
        assert _metric(server.url, "powersampling_plan_quality_score_sum", **labels) == pytest.approx(
            body["quality_score"]
        )
        assert (
            _metric(server.url, "powersampling_requests_total", endpoint="plan", status="ok", method="sample", **labels)
            == 1
        )


def test_failed_power_route_falls_back_and_is_counted():
    model = ScriptedLM(_answers, fail_when=lambda temperature: temperature < 1)  # MH proposals at 1/alpha fail
    with _serve(model, "plan-fallback") as server:
        response = httpx.post(
            server.url + "/v1/plan",
            timeout=300,
            json={
                "request": "Plan a birthday party",
                "route": "power",
                "max_depth": 1,
                "seed": 0,
                "power_sampling": {"n_mcmc": 2, "block_size": 64},
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["route"] == "baseline" and body["requested_route"] == "power"
        assert "backend failure injected" in body["fallback"]["reason"]
        assert (
            _metric(
                server.url,
                "powersampling_fallbacks_total",
                model_name="plan-fallback",
                endpoint="plan",
                reason="RuntimeError",
            )
            == 1
        )
        assert (
            _metric(
                server.url,
                "powersampling_requests_total",
                model_name="plan-fallback",
                endpoint="plan",
                route="baseline",
                status="ok",
            )
            == 1
        )


@pytest.fixture(scope="module")
def bad_plan_server():
    with _serve(ScriptedLM(_answers), "plan-bad") as server:
        yield server


@pytest.mark.parametrize(
    "body, param",
    [
        ({"request": "x", "route": "magic"}, "route"),
        ({"request": ""}, "request"),
        ({"request": "x", "power_sampling": {"n_mcmc": 1000}}, "power_sampling.n_mcmc"),
        ({"request": "x", "power_sampling": {"deadline_s": 1}}, "power_sampling.deadline_s"),
        ({"request": "x", "max_depth": 0}, "max_depth"),
        ({"request": "x", "model": "other"}, "model"),
    ],
)
def test_bad_plan_requests_are_4xx(bad_plan_server, body, param):
    response = httpx.post(bad_plan_server.url + "/v1/plan", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param


def test_a_model_without_a_tokenizer_cannot_plan():
    lm = FunctionLM(4, 0, lambda prefix: np.zeros(4), name="no-tokenizer")
    with _serve(lm, "no-tokenizer") as server:
        response = httpx.post(server.url + "/v1/plan", json={"request": "Plan a party", "route": "baseline"})
        assert response.status_code == 400
        assert "tokenizer" in response.json()["error"]["message"]


def test_a_plan_prompt_beyond_the_context_is_400():
    model = ScriptedLM(_answers)
    model.context_length = 64  # far less than the planner's own instructions
    with _serve(model, "plan-context") as server:
        response = httpx.post(
            server.url + "/v1/plan", timeout=300, json={"request": "Plan a party", "route": "baseline"}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "request"
        assert model.sample_calls == 0


def test_plan_with_a_tool_vocabulary_calls_tools_with_their_arguments():
    tools = [
        {
            "id": "get_weather",
            "desc": "Query the weather",
            "parameters": [
                {"name": "location", "type": "string", "desc": "city"},
                {"name": "date", "type": "date", "desc": "day"},
            ],
        },
        {
            "id": "send_email",
            "desc": "Send an email",
            "parameters": [{"name": "email_address", "type": "string"}, {"name": "content", "type": "string"}],
        },
    ]

    def script(prompt: str) -> str:
        assert "get_weather(location, date: date)" in prompt  # the catalog shows each tool's parameters
        return answer(
            (
                "Check the weather in Paris",
                [],
                {"tool": "get_weather", "arguments": {"location": "Paris", "date": "2023-06-25"}},
            ),
            (
                "Email the forecast",
                [1],
                {"tool": "send_email", "arguments": {"email_address": "a@b.c", "content": "Sunny"}},
            ),
        )

    with _serve(ScriptedLM(script), "plan-tools") as server:
        response = httpx.post(
            server.url + "/v1/plan",
            timeout=300,
            json={
                "request": "Check the weather in Paris on 2023-06-25 and email it to a@b.c",
                "route": "baseline",
                "max_depth": 1,
                "seed": 0,
                "tools": tools,
            },
        )
        assert response.status_code == 200, response.text
        tasks = response.json()["plan"]["tasks"]
        assert [(t["tool"], t["arguments"]) for t in tasks] == [
            ("get_weather", {"location": "Paris", "date": "2023-06-25"}),
            ("send_email", {"email_address": "a@b.c", "content": "Sunny"}),
        ]
        assert tasks[1]["dependencies"] == [tasks[0]["id"]]
        bad = httpx.post(
            server.url + "/v1/plan",
            timeout=30,
            json={"request": "x", "tools": [{"id": "t", "parameters": [{"name": "a"}, {"name": "a"}]}]},
        )
        assert bad.status_code == 400 and "repeat" in bad.json()["error"]["message"]
        unknown_route = httpx.post(server.url + "/v1/plan", timeout=30, json={"request": "x", "route": "magic"})
        assert unknown_route.status_code == 400 and "route" in unknown_route.json()["error"]["message"]


@pytest.mark.parametrize("shape", ["openai", "mcp"])
def test_plan_takes_openai_and_mcp_tools(shape):
    schema = {
        "type": "object",
        "properties": {"location": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["location"],
    }
    tool = (
        {"type": "function", "function": {"name": "get_forecast", "description": "Weather", "parameters": schema}}
        if shape == "openai"
        else {"name": "get_forecast", "description": "Weather", "inputSchema": schema}
    )

    def script(prompt: str) -> str:
        assert "get_forecast" in prompt
        return answer(
            ("Get the forecast", [], {"tool": "get_forecast", "arguments": {"location": "Oslo", "days": 3}}),
            ("Get the long forecast", [1], {"tool": "get_forecast", "arguments": {"location": "Oslo"}}),
        )

    with _serve(ScriptedLM(script), f"plan-{shape}") as server:
        response = httpx.post(
            server.url + "/v1/plan",
            timeout=300,
            json={"request": "Forecast for Oslo", "route": "baseline", "max_depth": 1, "seed": 0, "tools": [tool]},
        )
        assert response.status_code == 200, response.text
        tasks = response.json()["plan"]["tasks"]
        assert [(t["tool"], t["arguments"]) for t in tasks] == [
            ("get_forecast", {"location": "Oslo", "days": 3}),
            ("get_forecast", {"location": "Oslo"}),  # the optional argument left out
        ]
