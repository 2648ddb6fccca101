"""The openai SDK against a real server started here: function calling (``tools``, every ``tool_choice``,
``parallel_tool_calls``, a follow-up turn with the tool's result) through the grammar engine, and the sampling
fields frameworks send (``n``, ``logprobs``, ``stop``, ``seed``)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from powersampling.planner.schema import tool_turn_max_tokens
from powersampling.planner.tools import parse_tools
from powersampling.server.schemas import ChatCompletionResponse
from test_server import KEY, client, serve
from test_server_openai import post, tiny_smol_model
from test_server_tracing import spans  # noqa: F401 (a fixture)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "hourly": {"type": "boolean"},
        "fields": {"type": "array", "items": {"enum": ["rain", "wind"]}, "maxItems": 2},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}},
            "required": ["lat"],
        },
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["city", "unit", "days", "hourly", "fields", "where", "score"],
}
ALARM = {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 0, "maximum": 99}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "the forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "set_alarm", "parameters": ALARM}},
]
SCHEMAS = {"get_weather": WEATHER, "set_alarm": ALARM}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
# enough tokens for any one call the grammar admits, so every run ends its turn
ONE_CALL_TOKENS = tool_turn_max_tokens(parse_tools(TOOLS), max_calls=1)
ALARM_TOKENS = tool_turn_max_tokens(parse_tools(TOOLS[1:]), max_calls=1)


def sdk(server) -> openai.OpenAI:
    # a constrained run on a shared CPU can outlast the default 30 s
    return client(server).with_options(timeout=180)


@pytest.fixture(scope="module")
def smol():
    model = tiny_smol_model()
    with serve(model, api_key=KEY) as server:
        yield server


def one_call(server, seed: int, method: str = "sample", **fields):
    """A chat request through the openai SDK that must call exactly one of TOOLS."""
    return sdk(server).chat.completions.create(
        model="tiny-smol",
        messages=fields.pop("messages", MESSAGES),
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=ONE_CALL_TOKENS,
        seed=seed,
        extra_body={"method": method, **fields.pop("extra_body", {})},
        **fields,
    )


def _check_calls(message, allowed=SCHEMAS) -> None:
    assert message.content is None and message.tool_calls
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), allowed[call.function.name])
    assert len({c.id for c in message.tool_calls}) == len(message.tool_calls)


METHODS = {
    "power": {"n_mcmc": 1, "block_size": 32},
    "smc": {"chains": 2},
    "scalable-power": {"top_k": 2, "rollouts": 1, "horizon": 4},
    "sample": {},
    "low-temp": {},
    "greedy": {},
    "best-of-n": {"n": 2},
}


@pytest.mark.parametrize("method", ["power", "sample"])
def test_required_tool_calls_validate_against_the_schema(smol, method):
    out = one_call(smol, 3, method, extra_body={"power_sampling": METHODS[method]})
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    _check_calls(choice.message)
    assert len(choice.message.tool_calls) == 1
    ChatCompletionResponse.model_validate(out.model_dump())


@pytest.mark.parametrize("method", list(METHODS))
def test_a_named_call_on_every_method(smol, method):
    out = sdk(smol).chat.completions.create(
        model="tiny-smol",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "set_alarm"}},
        parallel_tool_calls=False,
        max_tokens=ALARM_TOKENS,
        seed=3,
        extra_body={"method": method, "power_sampling": METHODS[method]},
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    _check_calls(choice.message)
    assert [c.function.name for c in choice.message.tool_calls] == ["set_alarm"]


def test_a_named_function_is_the_only_one_called_and_parallel_calls_are_bounded(smol):
    out = sdk(smol).chat.completions.create(
        model="tiny-smol",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "set_alarm"}},
        max_tokens=4 * ALARM_TOKENS,
        seed=1,
        n=2,
        extra_body={"method": "sample"},
    )
    for choice in out.choices:
        assert choice.finish_reason == "tool_calls"
        _check_calls(choice.message)
        assert {c.function.name for c in choice.message.tool_calls} == {"set_alarm"}
        assert 1 <= len(choice.message.tool_calls) <= 4


def test_auto_answers_with_calls_or_text_and_none_with_text_only(smol):
    seen = set()
    for seed in range(4):
        out = sdk(smol).chat.completions.create(
            model="tiny-smol",
            messages=MESSAGES,
            tools=TOOLS,
            max_tokens=ONE_CALL_TOKENS,
            parallel_tool_calls=False,
            seed=seed,
            extra_body={"method": "sample"},
        )
        choice = out.choices[0]
        if choice.finish_reason == "tool_calls":
            _check_calls(choice.message)
            seen.add("calls")
        else:
            assert choice.message.tool_calls is None and isinstance(choice.message.content, str)
            # a text answer is the grammar's {"content": ...}, unwrapped (a cut one comes back as sampled)
            seen.add("text")
    assert seen
    none = sdk(smol).chat.completions.create(
        model="tiny-smol",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=8,
        seed=0,
        extra_body={"method": "sample"},
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason != "tool_calls"
    assert not none.model_extra["power_sampling"].get("constrained")


def test_a_follow_up_turn_with_the_tool_result_is_rendered_and_answered(smol):
    first = one_call(smol, 5)
    call = first.choices[0].message.tool_calls[0]
    history = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12 C and rain"},
    ]
    second = sdk(smol).chat.completions.create(
        model="tiny-smol",
        messages=history,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=8,
        seed=0,
        extra_body={"method": "sample"},
    )
    assert second.choices[0].message.content and second.usage.prompt_tokens > first.usage.prompt_tokens


def test_streamed_tool_calls_arrive_as_deltas(smol):
    stream = one_call(smol, 2, stream=True)
    finals = [c.choices[0] for c in stream if c.choices and c.choices[0].finish_reason]
    assert finals[-1].finish_reason == "tool_calls"
    (call,) = finals[-1].delta.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _with(**fields):
    return {"model": "tiny-smol", "messages": MESSAGES, "max_tokens": 8, **fields}


@pytest.mark.parametrize(
    "body, param",
    [
        (_with(tools=[{"type": "function", "function": {"name": "x", "parameters": {"type": "array"}}}]), "tools.0"),
        (_with(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools.0.function.name"),
        (_with(tools=[{"type": "retrieval"}]), "tools.0.type"),
        (
            _with(tools=[{"type": "function", "function": {"name": "x", "parameters": {"required": "a"}}}]),
            "tools.0.function.parameters",
        ),
        (_with(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (_with(tool_choice="required"), "tool_choice"),
        (_with(parallel_tool_calls=False), "parallel_tool_calls"),
        (_with(tools=TOOLS, response_format={"type": "json_object"}), "response_format"),
        (_with(messages=[{"role": "tool", "content": "1"}]), "messages.0.tool_call_id"),
    ],
)
def test_bad_tools_are_400_naming_the_field(smol, body, param):
    response = post(smol, "/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()


def test_bad_tools_through_the_sdk_raise_bad_request(smol):
    with pytest.raises(openai.BadRequestError):
        sdk(smol).chat.completions.create(
            model="tiny-smol",
            messages=MESSAGES,
            tools=[{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "required": 3}}}],
        )


def test_n_logprobs_stop_and_seed_through_the_sdk(smol):
    def ask(**fields):
        return sdk(smol).chat.completions.create(model="tiny-smol", messages=MESSAGES, max_tokens=16, **fields)

    two = ask(n=2, seed=4, extra_body={"method": "sample"})
    assert [c.index for c in two.choices] == [0, 1]
    assert two.usage.completion_tokens > 0 and all(c.message.content is not None for c in two.choices)
    scored = ask(logprobs=True, top_logprobs=2, seed=4, extra_body={"method": "sample"})
    tokens = scored.choices[0].logprobs.content
    assert tokens and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)
    assert "".join(t.token for t in tokens) == scored.choices[0].message.content
    free = ask(seed=4, extra_body={"method": "sample"})
    stop = free.choices[0].message.content[3:6]
    cut = ask(seed=4, stop=[stop], extra_body={"method": "sample"})
    assert stop not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"
    assert free.choices[0].message.content.startswith(cut.choices[0].message.content)
    power = {"method": "power", "power_sampling": {"n_mcmc": 2, "block_size": 8}}
    again = [ask(seed=9, extra_body=power).choices[0].message.content for _ in range(2)]
    ask(seed=10, extra_body={"method": "smc", "power_sampling": {"chains": 3}})
    again.append(ask(seed=9, extra_body=power).choices[0].message.content)
    assert len(set(again)) == 1


def test_the_request_span_records_tool_calls_as_the_finish_reason(smol, spans):
    spans.clear()
    out = one_call(smol, 2, n=2)
    assert [c.finish_reason for c in out.choices] == ["tool_calls", "tool_calls"]
    (span,) = [s for s in spans.get_finished_spans() if s.name == "chat tiny-smol"]
    assert tuple(span.attributes["gen_ai.response.finish_reasons"]) == ("tool_calls", "tool_calls")


@pytest.mark.parametrize("rule", ["coverage", "consensus"])
def test_a_parts_choice_returns_the_candidate_whose_calls_match_the_others(smol, rule):
    """``select: coverage`` (or ``consensus``) over best-of-n's candidates: the reply is one of them, chosen by the
    rule over their tool calls (the response metadata holds each candidate's score); without tools there is
    nothing to compare, and the method's own pick is returned and named."""
    out = sdk(smol).chat.completions.create(
        model="tiny-smol",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=2 * ONE_CALL_TOKENS,
        seed=5,
        extra_body={"method": "best-of-n", "power_sampling": {"n": 4, "select": rule}},
    )
    choice = out.choices[0]
    _check_calls(choice.message)
    run = out.model_dump()["power_sampling"]
    assert run["selected_by"] == rule and run["select"] == rule
    scores = run[f"{rule}_choice"][rule]
    assert len(scores) == run[f"{rule}_choice"]["voters"] and max(scores.values()) <= 3
    plain = post(smol, "/v1/chat/completions", _with(method="best-of-n", power_sampling={"select": rule}))
    assert plain.status_code == 200, plain.text  # no tools: no calls to compare, best-of-n's own pick, said so
    assert plain.json()["power_sampling"]["selected_by"] == "mean_logprob"
