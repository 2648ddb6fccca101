"""The JSON schema the model answers in, and a hard bound on how many tokens an answer can take.

The schema does more than shape the JSON: task k can only depend on tasks 1..k-1 (``prefixItems``, one entry per
position, each with its own ``dependencies`` enum), so every answer the grammar admits is already acyclic with no
dangling reference. Closed vocabularies (task types, tools, agents) become enums.

With a tool vocabulary every task carries a ``call``: ``{"tool": <a listed name>, "arguments": {...}}`` with exactly
that tool's parameters, each a value of its declared type. The call is one ``$defs`` entry (a union over the tools)
that every task refers to, so the grammar stays small (40 tools compile in under a second; the same union inlined
into every task position took ten times as long and masked twenty times slower).

Strings are printable ASCII from a small set and every field is bounded, so the longest admissible answer has a
known length in bytes; every token covers at least one byte, so ``max_output_tokens`` tokens always suffice to
finish. That is what makes "valid JSON every time" a property of the decoder instead of luck.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tools import ToolSpec, as_tool_specs

DESCRIPTION_CHARS = "A-Za-z0-9 ,.;:()'/&+-"
TASK_TYPE_PATTERN = "^[a-z][a-z_]{1,19}$"
_TASK_TYPE_MAX_CHARS = 20
# argument strings: printable ASCII except the quote and the backslash (no escapes, so one byte per character)
VALUE_CHARS = " !#-\\[\\]-~"
VALUE_MAX_CHARS = 80
ARRAY_MAX_ITEMS = 8
NUMBER_BOUND = 10**12
# a user's own pattern or format is kept as written; its length is not bounded by the grammar, so the token
# budget counts this many bytes for it
_UNBOUNDED_STRING_BYTES = 256
_DATE_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
REFERENCE_KEY = "from_task"


@dataclass(frozen=True)
class TaskListSpec:
    """What one model call may answer: between ``min_tasks`` and ``max_tasks`` tasks."""

    min_tasks: int = 2
    max_tasks: int = 6
    max_dependencies: int = 4
    description_min_chars: int = 8
    description_max_chars: int = 80
    task_types: tuple[str, ...] | None = None
    tools: tuple[ToolSpec, ...] | None = None
    agents: tuple[str, ...] | None = None
    ask_atomic: bool = True
    count_first: bool = False  # the answer states how many tasks it lists before listing them
    references: bool = False  # task k's arguments may take the output of task 1..k-1 ({"from_task": j})

    def __post_init__(self) -> None:
        if not 1 <= self.min_tasks <= self.max_tasks:
            raise ValueError(f"need 1 <= min_tasks <= max_tasks, got {self.min_tasks} and {self.max_tasks}")
        if not 1 <= self.description_min_chars <= self.description_max_chars:
            raise ValueError("need 1 <= description_min_chars <= description_max_chars")
        if self.tools is not None:  # names or tools.json entries become specs
            object.__setattr__(self, "tools", as_tool_specs(tuple(self.tools)))
        for name in ("task_types", "agents"):
            values = getattr(self, name)
            if values is not None and (not values or any(not isinstance(v, str) or not v for v in values)):
                raise ValueError(f"{name} must be a non-empty list of non-empty strings")


def task_list_schema(spec: TaskListSpec) -> dict[str, Any]:
    items = [_task_schema(spec, k) for k in range(1, spec.max_tasks + 1)]
    defs: dict[str, Any] = {}
    if spec.tools:
        defs["call"] = {"anyOf": [_call_schema(tool) for tool in spec.tools]}
        if spec.references:  # one union per position: which tasks a reference may name differs by position
            for k in range(2, spec.max_tasks + 1):
                defs[f"call_{k}"] = {"anyOf": [_call_schema(tool, k - 1) for tool in spec.tools]}
    if not spec.count_first:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "tasks": {
                    "type": "array",
                    "prefixItems": items,
                    "items": False,
                    "minItems": spec.min_tasks,
                    "maxItems": spec.max_tasks,
                },
            },
            "required": ["tasks"],
            "additionalProperties": False,
        }
    else:  # one variant per count, the tasks of each position shared between variants
        defs.update({f"task_{k}": item for k, item in enumerate(items, start=1)})
        schema = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "count": {"const": n},
                        "tasks": {
                            "type": "array",
                            "prefixItems": [{"$ref": f"#/$defs/task_{k}"} for k in range(1, n + 1)],
                            "items": False,
                            "minItems": n,
                            "maxItems": n,
                        },
                    },
                    "required": ["count", "tasks"],
                    "additionalProperties": False,
                }
                for n in range(spec.min_tasks, spec.max_tasks + 1)
            ]
        }
    if defs:
        schema["$defs"] = defs
    return schema


def _call_schema(tool: ToolSpec, earlier: int = 0) -> dict[str, Any]:
    """The call of ``tool``; with ``earlier`` > 0 every argument may instead be ``{"from_task": j}``, the output of
    task j in 1..earlier."""
    return {
        "type": "object",
        "properties": {"tool": {"const": tool.name}, "arguments": arguments_schema(tool, earlier)},
        "required": ["tool", "arguments"],
        "additionalProperties": False,
    }


def arguments_schema(tool: ToolSpec, earlier: int = 0) -> dict[str, Any]:
    """The grammar's schema of ``tool``'s arguments: every value it admits is valid under the tool's JSON Schema,
    with bounds added where the schema leaves a length open (see ``value_schema``)."""
    out = value_schema(tool.parameters)
    if earlier:
        ref = reference_schema(earlier)
        out["properties"] = {k: {"anyOf": [v, ref]} for k, v in out["properties"].items()}
    return out


def reference_schema(earlier: int) -> dict[str, Any]:
    """An argument that takes the output of an earlier task: ``{"from_task": j}``, j in 1..earlier."""
    return {
        "type": "object",
        "properties": {REFERENCE_KEY: {"enum": list(range(1, earlier + 1))}},
        "required": [REFERENCE_KEY],
        "additionalProperties": False,
    }


def value_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The bounded grammar schema of a (normalized) JSON Schema: the same values, except that

    * a string without enum, const, pattern or format is printable ASCII without quote or backslash, 1 to
      ``VALUE_MAX_CHARS`` characters unless minLength/maxLength say otherwise (so one byte per character);
    * format ``date`` is ``YYYY-MM-DD``;
    * an integer or number without bounds lies within +-``NUMBER_BOUND`` (xgrammar then bounds its digits);
    * an array has at most ``ARRAY_MAX_ITEMS`` items unless maxItems says fewer;
    * an object admits only its declared properties.
    """
    schema = dict(schema)
    schema.pop("default", None)
    schema.pop("description", None)
    if "anyOf" in schema:
        branches = [value_schema({**{k: v for k, v in schema.items() if k != "anyOf"}, **b}) for b in schema["anyOf"]]
        return {"anyOf": branches}
    if "enum" in schema or "const" in schema:
        return {k: v for k, v in schema.items() if k in ("enum", "const")}
    kind = schema.get("type")
    if kind is None:  # any value: the scalars, bounded
        return {"anyOf": [value_schema({"type": t}) for t in ("string", "number", "boolean", "null")]}
    if kind == "string":
        if schema.get("format") == "date":
            return {"type": "string", "pattern": _DATE_PATTERN}
        if "pattern" in schema or "format" in schema:
            return {k: v for k, v in schema.items() if k in ("type", "pattern", "format", "minLength", "maxLength")}
        low = max(int(schema.get("minLength", 1)), 0)
        high = min(int(schema.get("maxLength", VALUE_MAX_CHARS)), max(VALUE_MAX_CHARS, low))
        return {"type": "string", "pattern": f"^[{VALUE_CHARS}]{{{low},{high}}}$"}
    if kind in ("integer", "number"):
        out = {
            k: v
            for k, v in schema.items()
            if k in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
        }
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -NUMBER_BOUND
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = NUMBER_BOUND
        return out
    if kind == "array":
        out = {"type": "array", "items": value_schema(schema.get("items", {}))}
        out["maxItems"] = min(int(schema.get("maxItems", ARRAY_MAX_ITEMS)), ARRAY_MAX_ITEMS)
        if "minItems" in schema:
            out["minItems"] = int(schema["minItems"])
        return out
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            "type": "object",
            "properties": {k: value_schema(v) for k, v in properties.items()},
            "required": list(schema.get("required", [])),
            "additionalProperties": False,
        }
    return {"type": kind}


def longest_value_bytes(schema: Mapping[str, Any]) -> int:
    """Bytes of the longest JSON text (compact separators) a ``value_schema`` admits."""
    if "anyOf" in schema:
        return max(longest_value_bytes(s) for s in schema["anyOf"])
    if "enum" in schema:
        return max(len(json.dumps(v, separators=(", ", ": ")).encode()) for v in schema["enum"])
    if "const" in schema:
        return len(json.dumps(schema["const"], separators=(", ", ": ")).encode())
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema and schema["pattern"].startswith(f"^[{VALUE_CHARS}]{{"):
            return 2 + int(schema["pattern"].rsplit(",", 1)[1].split("}")[0])
        if schema.get("pattern") == _DATE_PATTERN:
            return 12
        # a user's pattern or format: maxLength characters of up to 6 bytes (an escape) when bounded
        return 2 + 6 * int(schema["maxLength"]) if "maxLength" in schema else _UNBOUNDED_STRING_BYTES
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -NUMBER_BOUND))
        high = schema.get("maximum", schema.get("exclusiveMaximum", NUMBER_BOUND))
        digits = max(len(str(int(abs(low)))), len(str(int(abs(high))))) + 1  # the sign
        return digits if kind == "integer" else digits + 7  # a point and xgrammar's six fraction digits
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    if kind == "array":
        item = longest_value_bytes(schema["items"])
        return 2 + schema["maxItems"] * (item + 2)
    if kind == "object":
        return 2 + sum(len(json.dumps(k)) + 2 + longest_value_bytes(v) + 2 for k, v in schema["properties"].items())
    raise ValueError(f"no length bound for {schema!r}")


def longest_call_bytes(tool: ToolSpec, earlier: int = 0) -> int:
    """Bytes of the longest ``{"tool": ..., "arguments": {...}}`` the grammar admits for ``tool``."""
    arguments = longest_value_bytes(arguments_schema(tool, earlier))
    return (
        len(json.dumps({"tool": tool.name, "arguments": {}}, separators=(", ", ": "), ensure_ascii=True))
        + arguments
        - 2
    )


def _task_schema(spec: TaskListSpec, k: int) -> dict[str, Any]:
    props: dict[str, Any] = {
        "id": {"const": k},
        # starts with a letter or digit, so a description is never blank
        "description": {
            "type": "string",
            "pattern": f"^[A-Za-z0-9][{DESCRIPTION_CHARS}]{{{spec.description_min_chars - 1},"
            f"{spec.description_max_chars - 1}}}$",
        },
    }
    if spec.tools:
        call = f"call_{k}" if spec.references and k > 1 else "call"
        props["call"] = {"$ref": f"#/$defs/{call}"}  # a tool call says what the task does: no separate type
    elif spec.task_types:
        props["task_type"] = {"enum": list(spec.task_types)}
    else:
        props["task_type"] = {"type": "string", "pattern": TASK_TYPE_PATTERN}
    if spec.agents:
        props["agent"] = {"enum": list(spec.agents)}
    if k == 1 or spec.max_dependencies == 0:
        props["dependencies"] = {"type": "array", "maxItems": 0}
    else:
        props["dependencies"] = {
            "type": "array",
            "items": {"enum": list(range(1, k))},
            "maxItems": min(k - 1, spec.max_dependencies),
        }
    if spec.ask_atomic:
        props["atomic"] = {"type": "boolean"}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def max_output_tokens(spec: TaskListSpec) -> int:
    """Tokens that always suffice for a complete answer plus the stop token: the byte length of the longest
    admissible answer (compact separators) + 1."""
    longest_tasks = []
    for k in range(1, spec.max_tasks + 1):
        task: dict[str, Any] = {"id": k, "description": "x" * spec.description_max_chars}
        if spec.tools:  # a placeholder string of the longest call's length in bytes
            earlier = k - 1 if spec.references else 0
            task["call"] = "x" * (max(longest_call_bytes(t, earlier) for t in spec.tools) - 2)
        else:
            task["task_type"] = _longest(spec.task_types) if spec.task_types else "x" * _TASK_TYPE_MAX_CHARS
        if spec.agents:
            task["agent"] = _longest(spec.agents)
        n_deps = 0 if k == 1 else min(k - 1, spec.max_dependencies)
        task["dependencies"] = [k - 1] * n_deps
        if spec.ask_atomic:
            task["atomic"] = False
        longest_tasks.append(task)
    # \u escapes are never shorter than UTF-8, so the ASCII-escaped length bounds either spelling
    answer: dict[str, Any] = {"count": spec.max_tasks} if spec.count_first else {}
    text = json.dumps({**answer, "tasks": longest_tasks}, ensure_ascii=True, separators=(", ", ": "))
    return len(text.encode("utf-8")) + 1


def _longest(values: Sequence[str]) -> str:
    return max(values, key=lambda v: len(json.dumps(v, ensure_ascii=True)))


def parse_task_list(text: str, spec: TaskListSpec) -> list[dict[str, Any]]:
    """The tasks of a model answer, checked against the spec (the grammar already guarantees this; the check
    catches a backend that ignored the constraint). Raises ``ValueError`` with the reason."""
    data = json.loads(text)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, list) or not spec.min_tasks <= len(tasks) <= spec.max_tasks:
        raise ValueError(f"expected {spec.min_tasks}-{spec.max_tasks} tasks")
    return [parse_task(task, k, spec) for k, task in enumerate(tasks, start=1)]


def parse_task(task: Any, k: int, spec: TaskListSpec) -> dict[str, Any]:
    """Task ``k`` (1-based position) of an answer, checked against the spec; ``ValueError`` with the reason."""
    if not isinstance(task, dict) or task.get("id") != k or not isinstance(task.get("description"), str):
        raise ValueError(f"task {k} is malformed")
    deps = task.get("dependencies") or []
    if any(not isinstance(d, int) or not 1 <= d < k for d in deps):
        raise ValueError(f"task {k} depends on a task that is not earlier in the list")
    # a repeated dependency is the same edge; keep the first occurrence
    item = {**task, "dependencies": list(dict.fromkeys(deps))}
    tools = {t.name: t for t in spec.tools or ()}
    if tools:
        call = item.pop("call", None)
        tool = tools.get(call.get("tool")) if isinstance(call, dict) else None
        arguments = call.get("arguments") if tool is not None else None
        if (
            tool is None
            or not isinstance(arguments, dict)
            or not set(tool.required) <= set(arguments) <= set(tool.properties)
        ):
            raise ValueError(f"task {k} does not call a listed tool with its parameters")
        referenced = [r for r in map(reference_of, arguments.values()) if r is not None]
        if any(not isinstance(r, int) or not 1 <= r < k for r in referenced):
            raise ValueError(f"task {k} takes the output of a task that is not earlier in the list")
        # a task that takes another's output waits for it
        item.update(tool=tool.name, arguments=arguments, dependencies=list(dict.fromkeys(deps + referenced)))
    return item


def reference_of(value: Any) -> Any:
    """The task a ``{"from_task": j}`` argument names, or None for any other value."""
    if isinstance(value, dict) and set(value) == {REFERENCE_KEY}:
        return value[REFERENCE_KEY]
    return None


def tool_turn_schema(tools: Sequence[ToolSpec], *, min_calls: int = 1, max_calls: int = 4) -> dict[str, Any]:
    """The JSON schema of one assistant turn of tool calls: ``{"tool_calls": [{"name": ..., "arguments": {...}},
    ...]}`` with ``min_calls`` to ``max_calls`` calls, each naming a listed tool with arguments its JSON Schema
    admits (bounded as in ``value_schema``). ``min_calls=0`` lets the turn call nothing; ``max_calls=1`` forbids
    parallel calls. ``tool_turn_max_tokens`` bounds its length, ``tool_calls_from_turn`` turns an answer into
    OpenAI ``tool_calls``. Compile it with ``JsonSchemaConstraint`` (``any_whitespace=False``) like any schema."""
    tools = as_tool_specs(tuple(tools))
    if not 0 <= min_calls <= max_calls or max_calls < 1:
        raise ValueError(f"need 0 <= min_calls <= max_calls and max_calls >= 1, got {min_calls} and {max_calls}")
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments_schema(tool)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for tool in tools
        ]
    }
    return {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "items": {"$ref": "#/$defs/call"},
                "minItems": min_calls,
                "maxItems": max_calls,
            }
        },
        "required": ["tool_calls"],
        "additionalProperties": False,
        "$defs": {"call": call},
    }


def tool_turn_max_tokens(tools: Sequence[ToolSpec], *, max_calls: int = 4) -> int:
    """Tokens that always suffice for a ``tool_turn_schema`` answer plus the stop token."""
    tools = as_tool_specs(tuple(tools))
    longest = max(
        len(json.dumps({"name": t.name, "arguments": {}}, ensure_ascii=True, separators=(", ", ": ")))
        - 2
        + longest_value_bytes(arguments_schema(t))
        for t in tools
    )
    return len('{"tool_calls": []}') + max_calls * (longest + 2) + 1


def tool_calls_from_turn(data: Mapping[str, Any] | str, *, id_prefix: str = "call_") -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` (arguments as a JSON string) from a ``tool_turn_schema`` answer."""
    if isinstance(data, str):
        data = json.loads(data)
    return [
        openai_tool_call(f"{id_prefix}{i}", call["name"], call["arguments"])
        for i, call in enumerate(data["tool_calls"], start=1)
    ]


def openai_tool_call(call_id: str, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
