"""Tools in every format (OpenAI, MCP, TaskBench, typed Python callables) become one ToolSpec; the grammar built
from it admits exactly what the JSON Schema admits (bounded), references only to earlier tasks, and the cheaper
EBNF build of bounded class patterns keeps the language of xgrammar's own build. Grammars run for real on the
embedded model's tokenizer."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from powersampling.backends.constraints import JsonSchemaConstraint
from powersampling.backends.grammar_build import json_schema_grammar
from powersampling.planner import (
    Planner,
    PlannerConfig,
    RouteSettings,
    RoutingConfig,
    TaskListSpec,
    max_output_tokens,
    task_list_schema,
    to_tool_calls,
    tool_calls_from_turn,
    tool_turn_max_tokens,
    tool_turn_schema,
)
from powersampling.planner.schema import DESCRIPTION_CHARS, VALUE_CHARS, parse_task_list
from powersampling.planner.tools import ToolsFileError, ToolSpec, load_tools, parse_tools, tool_catalog
from test_planner_helpers import ScriptedLM, answer, smol_tokenizer

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
    },
    "required": ["city", "days"],
}


class Unit(str, enum.Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


def get_weather(
    city: Annotated[str, Field(description="the city")],
    days: Annotated[int, Field(ge=1, le=7)],
    unit: Unit = Unit.celsius,
) -> str:
    """Weather forecast for a city.

    Longer text that is not part of the description."""
    return f"{city} {days} {unit.value}"


def test_every_format_gives_the_same_tool():
    openai = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city.",
            "parameters": WEATHER_SCHEMA,
        },
    }
    mcp_result = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "tools": [
                {"name": "get_weather", "description": "Weather forecast for a city.", "inputSchema": WEATHER_SCHEMA}
            ]
        },
    }
    responses_api = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather forecast for a city.",
        "parameters": WEATHER_SCHEMA,
    }
    (from_openai,) = parse_tools([openai])
    (from_mcp,) = parse_tools(mcp_result)
    (from_responses,) = parse_tools([responses_api])
    (from_python,) = parse_tools([get_weather])
    assert from_openai == from_mcp == from_responses
    assert from_python.name == "get_weather" and from_python.description == "Weather forecast for a city."
    assert from_python.function is get_weather
    # pydantic's schema says the same (the enum arrives through a $ref, inlined here)
    props = from_python.properties
    assert props["days"] == {"maximum": 7, "minimum": 1, "type": "integer"}
    assert props["unit"]["enum"] == ["celsius", "fahrenheit"] and props["unit"]["default"] == "celsius"
    assert from_python.required == from_openai.required == ("city", "days")
    assert ToolSpec.from_openai(from_openai.to_openai()) == from_openai
    assert ToolSpec.from_mcp(from_openai.to_mcp()) == from_openai


def test_taskbench_format_keeps_its_prompt_text(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(
        json.dumps(
            {
                "nodes": [
                    {
                        "id": "Image Search",
                        "desc": "Finds images",
                        "parameters": [
                            {"name": "query", "type": "string"},
                            {"name": "when", "type": "date"},
                            {"name": "count", "type": "integer"},
                        ],
                    },
                ]
            }
        )
    )
    (tool,) = load_tools(path)
    assert tool.parameters["properties"]["when"] == {"type": "string", "format": "date"}
    assert tool.required == ("query", "when", "count")
    assert tool_catalog([tool]) == "- Image Search(query, when: date, count: integer): Finds images"


@pytest.mark.parametrize(
    "item, message",
    [
        (
            {"name": "f", "parameters": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}},
            "unsupported JSON Schema keyword(s): not",
        ),
        (
            {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"$ref": "#/$defs/A"}},
                    "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}},
                },
            },
            "recursive $ref",
        ),
        ({"name": "f", "parameters": {"type": "array"}}, "of type object"),
        ({"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "str"}}}}, "unknown type"),
        ({"name": "f", "parameters": {"type": "object", "properties": {}, "required": [5]}}, "list property names"),
        ({"type": "function", "function": {"name": 'bad"name'}}, "not 1-64 characters"),
        (42, "neither a name"),
    ],
)
def test_bad_tools_are_one_line_errors(item, message):
    with pytest.raises(ToolsFileError, match="tool 1") as info:
        parse_tools([item])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_required_name_without_a_declaration_takes_any_value():
    (spec,) = parse_tools([{"name": "f", "parameters": {"type": "object", "properties": {}, "required": ["b"]}}])
    assert spec.parameters["properties"] == {"b": {}} and spec.parameters["required"] == ["b"]


def test_callables_the_plan_cannot_call_by_name_are_refused():
    def splat(*args: int) -> int:
        return 0

    with pytest.raises(ToolsFileError, match=r"\*args cannot be given by name"):
        ToolSpec.from_callable(splat)


class Address(BaseModel):
    street: str
    zip_code: Annotated[str, Field(pattern="^[0-9]{5}$")]


def ship(
    items: list[str],
    address: Address,
    express: bool = False,
    weight: float | None = None,
    priority: Literal[1, 2, 3] = 2,
) -> str:
    """Ship items to an address."""
    return "shipped"


@pytest.fixture(scope="module")
def ship_grammar():
    tok = smol_tokenizer()
    spec = TaskListSpec(
        min_tasks=1, max_tasks=3, tools=(ship, get_weather), ask_atomic=False, count_first=True, references=True
    )
    constraint = JsonSchemaConstraint(
        tok, task_list_schema(spec), vocab_size=len(tok), stop_token_ids=[tok.eos_token_id]
    )
    return tok, spec, constraint


def plan_text(*calls: dict, deps: tuple = ()) -> str:
    tasks = [
        {"id": k, "description": f"Do step number {k}", "call": call, "dependencies": list(deps[k - 1]) if deps else []}
        for k, call in enumerate(calls, start=1)
    ]
    return json.dumps({"count": len(tasks), "tasks": tasks})


ADDRESS = {"street": "1 Main St", "zip_code": "12345"}


@pytest.mark.parametrize(
    "arguments, admitted",
    [
        ({"items": ["a", "b"], "address": ADDRESS}, True),  # optional ones left out
        ({"items": [], "address": ADDRESS, "express": True, "weight": 2.5, "priority": 3}, True),
        ({"items": ["a"], "address": ADDRESS, "weight": None}, True),  # Optional: null admitted
        ({"items": ["a"]}, False),  # required nested object missing
        ({"items": ["a"], "address": {"street": "1 Main St"}}, False),  # nested required property missing
        ({"items": ["a"], "address": {**ADDRESS, "zip_code": "1234"}}, False),  # the model's own pattern
        ({"items": ["a"], "address": ADDRESS, "priority": 4}, False),  # enum
        ({"items": ["a"], "address": ADDRESS, "express": "yes"}, False),  # boolean
        ({"items": "a", "address": ADDRESS}, False),  # array
        ({"items": ["a"], "address": ADDRESS, "color": "red"}, False),  # undeclared property
        ({"items": ["x"] * 9, "address": ADDRESS}, False),  # more items than the grammar's bound
        ({"items": ['say "hi"'], "address": ADDRESS}, False),  # strings without escapes, by design
    ],
)
def test_grammar_admits_exactly_the_schema(ship_grammar, arguments, admitted):
    tok, spec, constraint = ship_grammar
    text = plan_text({"tool": "ship", "arguments": arguments})
    assert constraint.accepts(tok.encode(text)) is admitted
    if admitted:
        assert parse_task_list(text, spec)[0]["arguments"] == arguments


def test_references_only_to_earlier_tasks(ship_grammar):
    tok, spec, constraint = ship_grammar
    first = {"tool": "get_weather", "arguments": {"city": "Paris", "days": 2}}
    later = {"tool": "ship", "arguments": {"items": {"from_task": 1}, "address": ADDRESS}}
    ok = plan_text(first, later)
    assert constraint.accepts(tok.encode(ok))
    assert parse_task_list(ok, spec)[1]["dependencies"] == [1]  # taking an output means waiting for it
    assert not constraint.accepts(tok.encode(plan_text(later, first)))  # task 1 has no earlier task
    itself = {"tool": "ship", "arguments": {"items": {"from_task": 2}, "address": ADDRESS}}
    assert not constraint.accepts(tok.encode(plan_text(first, itself)))


def test_token_bound_covers_the_longest_answer(ship_grammar):
    tok, spec, constraint = ship_grammar
    longest = {
        "tool": "ship",
        "arguments": {
            "items": ["~" * 80] * 8,
            "address": {"street": "~" * 80, "zip_code": "12345"},
            "express": False,
            "weight": -999999999999.999999,
            "priority": 3,
        },
    }
    text = plan_text(longest, longest, longest, deps=((), (1,), (1, 2)))
    assert constraint.accepts(tok.encode(text))
    assert len(tok.encode(text)) + 1 <= max_output_tokens(spec)


def test_planned_calls_export_as_openai_tool_calls():
    plan = answer(
        ("Get the weather in Paris", [], {"tool": "get_weather", "arguments": {"city": "Paris", "days": 2}}),
        ("Ship the umbrella", [1], {"tool": "ship", "arguments": {"items": ["umbrella"], "address": ADDRESS}}),
    )
    config = PlannerConfig(route="baseline", max_depth=1, tools=(get_weather, ship), settings=RouteSettings(seed=0))
    dag = Planner(ScriptedLM(lambda prompt: plan), config, routing=RoutingConfig()).decompose("Weather and ship")
    calls = to_tool_calls(dag)
    assert [c["id"] for c in calls] == ["call_t1", "call_t2"]
    assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "days": 2}


def test_one_assistant_turn_of_tool_calls():
    tok = smol_tokenizer()
    tools = parse_tools([get_weather, ship])
    schema = tool_turn_schema(tools, min_calls=1, max_calls=2)
    constraint = JsonSchemaConstraint(tok, schema, vocab_size=len(tok), stop_token_ids=[tok.eos_token_id])
    turn = {
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Rome", "days": 1}},
            {"name": "ship", "arguments": {"items": ["x"], "address": ADDRESS}},
        ]
    }
    text = json.dumps(turn)
    assert constraint.accepts(tok.encode(text))
    assert len(tok.encode(text)) + 1 <= tool_turn_max_tokens(tools, max_calls=2)
    assert not constraint.accepts(tok.encode(json.dumps({"tool_calls": []})))  # at least one call
    assert not constraint.accepts(tok.encode(json.dumps({"tool_calls": turn["tool_calls"] * 2})))  # at most two
    assert not constraint.accepts(
        tok.encode(json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]}))
    )
    calls = tool_calls_from_turn(text)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "ship"]
    assert json.loads(calls[1]["function"]["arguments"])["address"] == ADDRESS


def test_cheaper_build_keeps_the_language():
    """The EBNF rewrite of bounded class patterns against xgrammar's own build of the same schema, on strings at
    and around every boundary (length, first character, excluded characters, non-ASCII, escapes)."""
    import xgrammar as xgr

    from powersampling.backends.constraints import _compiler_for

    tok = smol_tokenizer()
    schema = {
        "type": "object",
        "properties": {
            "d": {"type": "string", "pattern": f"^[A-Za-z0-9][{DESCRIPTION_CHARS}]{{2,5}}$"},
            "v": {"type": "string", "pattern": f"^[{VALUE_CHARS}]{{1,4}}$"},
            "n": {"type": "string", "pattern": "^[0-9]{2}$"},
        },
        "required": ["d", "v", "n"],
        "additionalProperties": False,
    }
    text = json.dumps(schema)
    kind, ebnf = json_schema_grammar(text, any_whitespace=False)
    assert kind == "ebnf" and "Regex(" not in ebnf and "basic_any" not in ebnf
    _, _, compiler = _compiler_for(tok, len(tok), [tok.eos_token_id])
    rewritten, original = compiler.compile_grammar(ebnf), compiler.compile_json_schema(text, any_whitespace=False)

    def accepts(grammar, value: str) -> bool:
        matcher = xgr.GrammarMatcher(grammar)
        ids = tok.encode(value, add_special_tokens=False) + [tok.eos_token_id]
        return all(matcher.accept_token(i) for i in ids)

    samples = [
        "A!",
        "Ab",
        "Abc",
        "Abcdef",
        "Abcdefg",
        "aB c",
        "9a-b",
        " abc",
        "Ab~c",
        "Ab_c",
        "Abé",
        "Ab\\\\c",
        'Ab\\"c',
    ]
    values = ["", "x", "~!#", "abcd", "abcde", 'a\\"b', "a\\\\b", "é", "\\t", "[]{}"]
    seen = set()
    for d in samples:
        for v in values:
            for n in ("12", "1", "123", "1a"):
                answer_text = f'{{"d": "{d}", "v": "{v}", "n": "{n}"}}'
                result = accepts(rewritten, answer_text)
                assert result == accepts(original, answer_text), answer_text
                seen.add(result)
    assert seen == {True, False}


def test_task_stream_reports_each_task_once_complete_even_with_braces_in_values():
    from powersampling.planner.streaming import TaskStream

    tok = smol_tokenizer()
    lookup = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
    spec = TaskListSpec(min_tasks=1, max_tasks=3, tools=(lookup,), ask_atomic=False, count_first=True)
    constraint = JsonSchemaConstraint(
        tok, task_list_schema(spec), vocab_size=len(tok), stop_token_ids=[tok.eos_token_id]
    )
    text = plan_text(
        {"tool": "lookup", "arguments": {"q": "a}b{c ]["}},
        {"tool": "lookup", "arguments": {"q": "{}"}},
        deps=((), (1,)),
    )
    seen = []
    stream = TaskStream(constraint, tok.decode, lambda k, task: seen.append((k, task, len(state.tokens))))
    state = stream.start([])
    ids = tok.encode(text)
    for token in ids:
        state.advance(token)
    assert [(k, task["call"]["arguments"]["q"]) for k, task, _ in seen] == [(1, "a}b{c ]["), (2, "{}")]
    assert seen[0][2] < len(ids)  # task 1 was reported before the answer was complete
    assert state.is_finished() is False and constraint.accepts(ids)
