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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .tools import ToolSpec, as_tool_specs

DESCRIPTION_CHARS = "A-Za-z0-9 ,.;:()'/&+-"
TASK_TYPE_PATTERN = "^[a-z][a-z_]{1,19}$"
_TASK_TYPE_MAX_CHARS = 20
# argument values: printable ASCII except the quote and the backslash (no escapes, so one byte per character)
VALUE_CHARS = " !#-\\[\\]-~"
VALUE_MAX_CHARS = 80
_VALUE_SCHEMAS: dict[str, dict[str, Any]] = {
    "string": {"type": "string", "pattern": f"^[{VALUE_CHARS}]{{1,{VALUE_MAX_CHARS}}}$"},
    "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
    "integer": {"type": "integer", "minimum": -(10**12), "maximum": 10**12},
    "number": {"type": "string", "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,6})?$"},
    "boolean": {"type": "boolean"},
}
_LONGEST_VALUE = {
    "string": "x" * VALUE_MAX_CHARS,
    "date": "2000-01-01",
    "integer": -(10**12),
    "number": "-" + "9" * 12 + "." + "9" * 6,
    "boolean": False,
}


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


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    arguments = {p.name: _VALUE_SCHEMAS[p.type] for p in tool.parameters}
    return {
        "type": "object",
        "properties": {
            "tool": {"const": tool.name},
            "arguments": {
                "type": "object",
                "properties": arguments,
                "required": list(arguments),
                "additionalProperties": False,
            },
        },
        "required": ["tool", "arguments"],
        "additionalProperties": False,
    }


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
        props["call"] = {"$ref": "#/$defs/call"}  # a tool call says what the task does: no separate type
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
        if spec.tools:
            task["call"] = max((_longest_call(t) for t in spec.tools), key=lambda c: len(json.dumps(c)))
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


def _longest_call(tool: ToolSpec) -> dict[str, Any]:
    return {"tool": tool.name, "arguments": {p.name: _LONGEST_VALUE[p.type] for p in tool.parameters}}


def parse_task_list(text: str, spec: TaskListSpec) -> list[dict[str, Any]]:
    """The tasks of a model answer, checked against the spec (the grammar already guarantees this; the check
    catches a backend that ignored the constraint). Raises ``ValueError`` with the reason."""
    data = json.loads(text)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, list) or not spec.min_tasks <= len(tasks) <= spec.max_tasks:
        raise ValueError(f"expected {spec.min_tasks}-{spec.max_tasks} tasks")
    tools = {t.name: t for t in spec.tools or ()}
    out = []
    for k, task in enumerate(tasks, start=1):
        if not isinstance(task, dict) or task.get("id") != k or not isinstance(task.get("description"), str):
            raise ValueError(f"task {k} is malformed")
        deps = task.get("dependencies") or []
        if any(not isinstance(d, int) or not 1 <= d < k for d in deps):
            raise ValueError(f"task {k} depends on a task that is not earlier in the list")
        # a repeated dependency is the same edge; keep the first occurrence
        item = {**task, "dependencies": list(dict.fromkeys(deps))}
        if tools:
            call = item.pop("call", None)
            tool = tools.get(call.get("tool")) if isinstance(call, dict) else None
            arguments = call.get("arguments") if tool is not None else None
            if tool is None or not isinstance(arguments, dict) or set(arguments) != {p.name for p in tool.parameters}:
                raise ValueError(f"task {k} does not call a listed tool with its parameters")
            item.update(tool=tool.name, arguments=arguments)
        out.append(item)
    return out
