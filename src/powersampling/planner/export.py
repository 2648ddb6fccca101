"""TaskDAG <-> JSON (versioned schema), and Mermaid, Graphviz DOT and text-tree renderings.

JSON is the lossless format: ``dag_from_json(dag_to_json(d)) == d``. Mermaid and DOT are for people; every piece
of task text in them is escaped, so a description cannot break out of its label.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

from .dag import DAGLimits, DAGValidationError, Task, TaskDAG

SCHEMA_VERSION = "1.0"

_TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "description", "task_type", "parent", "dependencies"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "task_type": {"type": "string"},
        "parent": {"type": ["string", "null"], "description": "hierarchy: the task this one refines"},
        "dependencies": {
            "type": "array",
            "items": {"type": "string"},
            "uniqueItems": True,
            "description": "precedence: ids of tasks that must finish before this one starts",
        },
        "status": {"enum": ["pending", "in_progress", "done", "failed", "skipped"]},
        "agent": {"type": ["string", "null"]},
        "tool": {"type": ["string", "null"]},
        "arguments": {"type": ["object", "null"], "description": "the tool's parameters and their values"},
        "effort": {"type": ["number", "null"], "minimum": 0, "description": "estimated hours"},
        "atomic": {"type": "boolean"},
        "metadata": {"type": "object"},
    },
}

DAG_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://powersampling.dev/schemas/task-dag-1.0.json",
    "title": "powersampling hierarchical task DAG",
    "type": "object",
    "required": ["schema_version", "request", "tasks", "metadata"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "request": {"type": "string"},
        "tasks": {"type": "array", "minItems": 1, "items": _TASK_SCHEMA},
        "metadata": {
            "type": "object",
            "required": ["route", "fallback"],
            "properties": {
                "route": {"type": "string", "description": "the route that produced the plan"},
                "fallback": {"type": "boolean", "description": "true when the requested route failed"},
                "fallback_reason": {"type": ["string", "null"]},
                "requested_route": {"type": "string"},
                "quality_score": {"type": ["number", "null"]},
                "latency_ms": {"type": "number"},
                "model_calls": {"type": "integer"},
            },
        },
        "limits": {
            "type": "object",
            "properties": {k: {"type": "integer", "minimum": 1} for k in ("max_tasks", "max_depth", "max_children")},
        },
    },
}


def dag_to_dict(dag: TaskDAG) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "request": dag.request,
        "tasks": [t.to_dict() for t in dag.tasks],
        "metadata": copy.deepcopy(dag.metadata),
        "limits": {
            "max_tasks": dag.limits.max_tasks,
            "max_depth": dag.limits.max_depth,
            "max_children": dag.limits.max_children,
        },
    }


def dag_to_json(dag: TaskDAG, *, indent: int | None = 2) -> str:
    return json.dumps(dag_to_dict(dag), indent=indent, ensure_ascii=False)


def dag_from_dict(data: Mapping[str, Any]) -> TaskDAG:
    if not isinstance(data, Mapping):
        raise DAGValidationError("a plan must be a JSON object")
    version = data.get("schema_version")
    if version is None:
        raise DAGValidationError("missing schema_version")
    if str(version).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise DAGValidationError(f"unsupported schema_version {version!r}; this version reads {SCHEMA_VERSION}")
    if not isinstance(data.get("request"), str):
        raise DAGValidationError("request must be a string")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list):
        raise DAGValidationError("tasks must be a list")
    limits = DAGLimits(**data["limits"]) if isinstance(data.get("limits"), Mapping) else None
    return TaskDAG(data["request"], [Task.from_dict(t) for t in raw_tasks], data.get("metadata") or {}, limits)


def dag_from_json(text: str) -> TaskDAG:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DAGValidationError(f"not valid JSON: {exc}") from None
    return dag_from_dict(data)


# Mermaid

_MERMAID_ESCAPES = {
    '"': "#quot;",
    "<": "#lt;",
    ">": "#gt;",
    "&": "#amp;",
    "#": "#35;",
    "`": "#96;",
    "|": "#124;",
    "[": "#91;",
    "]": "#93;",
    "{": "#123;",
    "}": "#125;",
    "(": "#40;",
    ")": "#41;",
}


def _mermaid_text(text: str) -> str:
    text = " ".join(text.split())  # a newline would end the statement
    return "".join(_MERMAID_ESCAPES.get(ch, ch) for ch in text)


def _node_names(dag: TaskDAG) -> dict[str, str]:
    """Task ids can hold any character; diagrams get safe generated names."""
    return {t.id: f"n{i}" for i, t in enumerate(dag.tasks)}


def to_mermaid(dag: TaskDAG) -> str:
    """A Mermaid flowchart: composite tasks as subgraphs, dependencies as arrows."""
    names = _node_names(dag)
    lines = ["flowchart TD"]

    def emit(parent: str | None, indent: str) -> None:
        for task in dag.children(parent):
            label = _mermaid_text(f"{task.id}: {task.description}")
            if dag.is_leaf(task.id):
                lines.append(f'{indent}{names[task.id]}["{label}"]')
            else:
                lines.append(f'{indent}subgraph {names[task.id]}["{label}"]')
                emit(task.id, indent + "  ")
                lines.append(f"{indent}end")

    emit(None, "  ")
    for task in dag.tasks:
        for dep in task.dependencies:
            lines.append(f"  {names[dep]} --> {names[task.id]}")
    return "\n".join(lines) + "\n"


# Graphviz DOT


def _dot_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"\r\n|\r|\n", r"\\n", escaped)
    return f'"{escaped}"'


def to_dot(dag: TaskDAG) -> str:
    """A DOT digraph: composite tasks as clusters, dependencies as solid edges. Edges into or out of a cluster are
    drawn to its label node."""
    names = _node_names(dag)
    lines = ["digraph plan {", "  rankdir=TB;", "  node [shape=box];", f"  label={_dot_string(dag.request)};"]

    def emit(parent: str | None, indent: str) -> None:
        for task in dag.children(parent):
            label = _dot_string(f"{task.id}: {task.description}")
            if dag.is_leaf(task.id):
                lines.append(f"{indent}{names[task.id]} [label={label}];")
            else:
                lines.append(f"{indent}subgraph cluster_{names[task.id]} {{")
                lines.append(f"{indent}  label={label};")
                lines.append(f"{indent}  {names[task.id]} [label={label}, shape=folder];")
                emit(task.id, indent + "  ")
                lines.append(f"{indent}}}")

    emit(None, "  ")
    for task in dag.tasks:
        for dep in task.dependencies:
            lines.append(f"  {names[dep]} -> {names[task.id]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# readable tree


def call_text(task) -> str:
    """``tool(name=value, ...)`` for a task that names a tool."""
    if not task.arguments:
        return str(task.tool)
    return f"{task.tool}(" + ", ".join(f"{k}={json.dumps(v, default=repr)}" for k, v in task.arguments.items()) + ")"


def to_tree(dag: TaskDAG) -> str:
    """An indented outline: id, description, type/tool, and what each task waits for; then the parallel waves."""
    lines = [f"Plan: {' '.join(dag.request.split())}"]

    def emit(parent: str | None, prefix: str) -> None:
        kids = dag.children(parent)
        for i, task in enumerate(kids):
            last = i == len(kids) - 1
            branch = "└── " if last else "├── "
            tags = (
                [task.task_type]
                + ([f"tool={call_text(task)}"] if task.tool else [])
                + ([f"agent={task.agent}"] if task.agent else [])
            )
            after = f"  (after {', '.join(task.dependencies)})" if task.dependencies else ""
            text = " ".join(task.description.split())
            lines.append(f"{prefix}{branch}{task.id}: {text} [{', '.join(tags)}]{after}")
            emit(task.id, prefix + ("    " if last else "│   "))

    emit(None, "")
    waves = dag.parallel_waves()
    lines.append("Waves: " + " | ".join(", ".join(w) for w in waves))
    return "\n".join(lines) + "\n"


def to_tool_calls(dag: TaskDAG) -> list[dict[str, Any]]:
    """The plan's calls as OpenAI ``tool_calls`` (``{"id", "type": "function", "function": {"name", "arguments"}}``,
    arguments as a JSON string), every call after the calls it waits for. The id is ``call_<task id>``; an argument
    that takes an earlier call's output stays ``{"from_task": "<task id>"}`` (OpenAI has no such reference: an agent
    loop resolves it, as ``powersampling.agents`` does)."""
    from .schema import openai_tool_call

    return [
        openai_tool_call(f"call_{task.id}", task.tool, task.arguments or {})
        for task in (dag[tid] for tid in dag.topological_order())
        if task.tool is not None and dag.is_leaf(task.id)
    ]
