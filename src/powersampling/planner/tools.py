"""Tools a plan may call: one ``ToolSpec`` for every format agent code holds.

A closed tool vocabulary turns a plan into something an agent can execute: every task names one listed tool and
gives arguments that follow that tool's JSON Schema. The grammar built from these specs (``schema.task_list_schema``
for plans, ``schema.tool_turn_schema`` for one assistant turn of calls) admits nothing else.

Accepted shapes (``parse_tools``; ``load_tools`` reads them from a JSON file):

* OpenAI function tools: ``{"type": "function", "function": {"name", "description", "parameters": <JSON Schema>}}``
  (the Responses API's flat ``{"type": "function", "name", ...}`` and a bare function object too);
* MCP ``tools/list`` results: ``{"tools": [{"name", "description", "inputSchema"}]}``, the JSON-RPC response around
  it, or the list of tools;
* TaskBench's tools.json: ``{"nodes": [{"id", "desc", "parameters": [{"name", "type", "desc"}]}]}``;
* Python callables with type hints (``ToolSpec.from_callable``: the JSON Schema comes from the signature, through
  pydantic), and bare names (tools without parameters).

Parameters are JSON Schema (string, number, integer, boolean, null, enum, const, array, nested object, anyOf,
required and optional properties, defaults); ``$ref``s into ``$defs`` (what pydantic writes for enums and nested
models) are inlined. A keyword the grammar cannot honour (``not``, ``if``, ``patternProperties``, a recursive
``$ref``, ...) is refused with a one-line ``ToolsFileError`` instead of being silently ignored.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_NAME = re.compile(r'^[^\x00-\x1f"\\]{1,64}$')  # what a JSON string holds without escapes (TaskBench names have spaces)
# TaskBench's parameter types and the JSON Schema each one means
_TASKBENCH_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "date": {"type": "string", "format": "date"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
}
JSON_TYPES = ("string", "number", "integer", "boolean", "null", "array", "object")
# keywords kept as they are; annotations (title, examples, ...) are dropped, everything else is refused
_KEPT = {
    "type",
    "description",
    "default",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
}
_ANNOTATIONS = {"title", "examples", "deprecated", "readOnly", "writeOnly", "$schema", "$id", "$comment", "strict"}


class ToolsFileError(ConfigError):
    """A tools file or tools list is malformed; the message names the file and the entry."""


@dataclass(frozen=True, eq=False)
class ToolSpec:
    """One tool: its name, what it does, and its arguments as a JSON Schema object (``parameters``).

    ``function`` is the Python callable that runs it, when there is one (``from_callable``, or ``with_function``);
    a plan only needs the schema, the executor (``powersampling.agents``) needs the function.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    function: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ToolsFileError(
                f"the tool name {self.name!r} is not 1-64 characters without quotes, backslashes or control characters"
            )
        object.__setattr__(self, "description", " ".join(str(self.description or "").split()))
        object.__setattr__(self, "parameters", _object_schema(self.parameters, f"tool {self.name}"))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ToolSpec)
            and (self.name, self.description, self.function) == (other.name, other.description, other.function)
            and self.parameters == other.parameters
        )

    def __hash__(self) -> int:
        return hash((self.name, self.description, json.dumps(self.parameters, sort_keys=True)))

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.parameters.get("properties", {}))

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.parameters.get("required", ()))

    def with_function(self, function: Callable[..., Any]) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters, function)

    # formats

    @classmethod
    def from_openai(cls, item: Mapping[str, Any]) -> ToolSpec:
        """An OpenAI function tool (chat completions or Responses API shape) or a bare function object."""
        function = item.get("function") if isinstance(item.get("function"), Mapping) else item
        return cls(function.get("name"), function.get("description") or "", function.get("parameters") or _EMPTY_OBJECT)

    @classmethod
    def from_mcp(cls, item: Mapping[str, Any]) -> ToolSpec:
        """One entry of an MCP ``tools/list`` result."""
        return cls(item.get("name"), item.get("description") or "", item.get("inputSchema") or _EMPTY_OBJECT)

    @classmethod
    def from_taskbench(cls, item: Mapping[str, Any]) -> ToolSpec:
        """One node of TaskBench's tools.json (``id``/``desc``, or ``name``/``description``); parameters are a list of
        ``{"name", "type", "desc"}`` with types string, date, integer, number and boolean, all required (an
        undeclared or other type takes a string)."""
        name = item.get("id", item.get("name"))
        description = item.get("desc", item.get("description", ""))
        if not isinstance(description, str):
            raise ToolsFileError(f"tool {name!r}: the description is not text")
        items = item.get("parameters") or []
        if not isinstance(items, list):
            raise ToolsFileError(f"tool {name!r}: parameters must be a list")
        properties: dict[str, Any] = {}
        for param in items:
            if isinstance(param, str):
                param = {"name": param}
            if (
                not isinstance(param, Mapping)
                or not isinstance(param.get("name"), str)
                or not _NAME.match(param["name"])
            ):
                raise ToolsFileError(f"tool {name!r}: a parameter has no valid name ({param!r})")
            if param["name"] in properties:
                raise ToolsFileError(f"tool {name!r}: parameter names repeat")
            schema = dict(_TASKBENCH_TYPES.get(str(param.get("type") or "string").lower(), {"type": "string"}))
            text = " ".join(str(param.get("desc", param.get("description", ""))).split())
            if text:
                schema["description"] = text
            properties[param["name"]] = schema
        parameters = {"type": "object", "properties": properties, "required": list(properties)}
        return cls(name, description, parameters)

    @classmethod
    def from_callable(
        cls, function: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> ToolSpec:
        """A tool from a typed Python function: its name, the first paragraph of its docstring, and the JSON Schema
        pydantic gives its signature (``Annotated[int, Field(description=...)]`` describes a parameter; a parameter
        with a default is optional). ``*args``/``**kwargs`` are refused: a plan passes named arguments."""
        import pydantic

        tool_name = name or getattr(function, "__name__", None)
        try:
            signature = inspect.signature(function)
            hints = typing.get_type_hints(function, include_extras=True)
        except (TypeError, ValueError, NameError) as exc:
            raise ToolsFileError(f"tool {tool_name!r}: cannot read the signature ({exc})") from None
        fields: dict[str, Any] = {}
        for param in signature.parameters.values():
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise ToolsFileError(f"tool {tool_name!r}: *{param.name} cannot be given by name in a plan")
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise ToolsFileError(f"tool {tool_name!r}: {param.name} is positional-only; a plan passes names")
            annotation = hints.get(param.name, Any)
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (annotation, default)
        try:
            model = pydantic.create_model(f"{tool_name}_arguments", **fields)
            schema = model.model_json_schema()
        except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError, ValueError) as exc:
            raise ToolsFileError(f"tool {tool_name!r}: no JSON Schema for its signature ({exc})") from None
        doc = inspect.getdoc(function) or ""
        summary = doc.split("\n\n")[0] if description is None else description
        return cls(tool_name, summary, schema, function)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI chat-completions tool object."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.parameters),
            },
        }

    def to_mcp(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": copy.deepcopy(self.parameters)}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI form (what ``parse_tools`` reads back)."""
        return self.to_openai()


_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


def load_tools(path: str | Path) -> tuple[ToolSpec, ...]:
    """The tools of a JSON file; ``ToolsFileError`` (one line, naming the file) when it is missing or malformed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolsFileError(f"tools file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolsFileError(f"cannot read tools file {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolsFileError(f"{p} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    return parse_tools(data, source=str(p))


def parse_tools(data: Any, *, source: str = "tools") -> tuple[ToolSpec, ...]:
    """Tool specs from already parsed JSON, or from a list mixing specs, callables, names and dicts (see the module
    docstring for the accepted shapes)."""
    items = data
    if isinstance(data, Mapping):
        if isinstance(data.get("result"), Mapping):  # the JSON-RPC response of tools/list
            data = data["result"]
        items = data.get("nodes", data.get("tools"))
    if not isinstance(items, (list, tuple)) or not items:
        raise ToolsFileError(
            f'{source}: expected a non-empty list of tools (or {{"tools": [...]}}, {{"nodes": [...]}})'
        )
    tools: list[ToolSpec] = []
    for index, item in enumerate(items):
        try:
            tools.append(tool_spec(item))
        except ToolsFileError as exc:
            raise ToolsFileError(f"{source}: tool {index + 1}: {exc}") from None
    names = [t.name for t in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ToolsFileError(f"{source}: tool names repeat: {', '.join(repeated)}")
    return tuple(tools)


def tool_spec(item: Any) -> ToolSpec:
    """One tool in any accepted shape."""
    if isinstance(item, ToolSpec):
        return item
    if isinstance(item, str):
        return ToolSpec(item)
    if callable(item) and not isinstance(item, Mapping):
        return ToolSpec.from_callable(item)
    if not isinstance(item, Mapping):
        raise ToolsFileError(f"{type(item).__name__} is neither a name, a tool object nor a function")
    if item.get("type") == "function" or isinstance(item.get("function"), Mapping):
        return ToolSpec.from_openai(item)
    if "inputSchema" in item:
        return ToolSpec.from_mcp(item)
    if "id" in item or isinstance(item.get("parameters"), list) or "desc" in item:
        return ToolSpec.from_taskbench(item)
    if isinstance(item.get("parameters"), Mapping) or set(item) <= {"name", "description"}:
        return ToolSpec.from_openai(item)
    raise ToolsFileError(f"cannot tell the format of {sorted(item)!r} (OpenAI, MCP or TaskBench)")


def as_tool_specs(tools: Sequence[Any]) -> tuple[ToolSpec, ...]:
    """Tool specs from specs, callables, names or dicts (what PlannerConfig and the server accept)."""
    return parse_tools(list(tools))


def tools_from_module(module: Any) -> tuple[ToolSpec, ...]:
    """The tools a Python module offers: its ``TOOLS`` list when it has one, else every public function defined in
    it (imported names are not tools)."""
    listed = getattr(module, "TOOLS", None)
    if listed is not None:
        return parse_tools(list(listed), source=module.__name__)
    functions = [
        value
        for key, value in vars(module).items()
        if not key.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__
    ]
    if not functions:
        raise ToolsFileError(f"{module.__name__}: no public functions and no TOOLS list")
    return parse_tools(functions, source=module.__name__)


# JSON Schema normalization


def _object_schema(schema: Any, where: str) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        raise ToolsFileError(f"{where}: parameters must be a JSON Schema object, got {type(schema).__name__}")
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    out = _normalize(schema, defs, where, ())
    if out.get("type") != "object":
        raise ToolsFileError(f"{where}: parameters must be a JSON Schema of type object")
    out.setdefault("properties", {})
    return out


def _normalize(schema: Any, defs: Mapping[str, Any], where: str, seen: tuple[str, ...]) -> dict[str, Any]:
    """A self-contained copy of ``schema``: references inlined, annotations dropped, type lists as anyOf,
    allOf merged; unsupported keywords refused."""
    if schema is True or schema == {}:
        return {}
    if not isinstance(schema, Mapping):
        raise ToolsFileError(f"{where}: a schema must be an object, got {schema!r}")
    schema = dict(schema)
    ref = schema.pop("$ref", None)
    if ref is not None:
        name = str(ref).rsplit("/", 1)[-1]
        if not str(ref).startswith(("#/$defs/", "#/definitions/")) or name not in defs:
            raise ToolsFileError(f"{where}: unresolvable $ref {ref!r}")
        if name in seen:
            raise ToolsFileError(f"{where}: recursive $ref {ref!r} has no bounded grammar")
        target = _normalize(defs[name], defs, where, (*seen, name))
        schema = {**target, **{k: v for k, v in schema.items() if k in ("description", "default")}}
    unsupported = set(schema) - _KEPT - _ANNOTATIONS
    if unsupported:
        raise ToolsFileError(f"{where}: unsupported JSON Schema keyword(s): {', '.join(sorted(unsupported))}")
    out = {k: v for k, v in schema.items() if k in _KEPT and k not in ("$defs", "definitions")}
    if isinstance(out.get("type"), list):
        kinds = out.pop("type")
        if any(k not in JSON_TYPES for k in kinds) or not kinds:
            raise ToolsFileError(f"{where}: unknown type in {kinds!r}")
        rest = {k: v for k, v in out.items() if k not in ("description", "default")}
        branches = [_normalize({**rest, "type": k}, defs, where, seen) for k in kinds]
        out = {k: v for k, v in out.items() if k in ("description", "default")}
        out["anyOf"] = branches
        return out
    if "type" in out and out["type"] not in JSON_TYPES:
        raise ToolsFileError(f"{where}: unknown type {out['type']!r}")
    for key in ("anyOf", "oneOf", "allOf"):
        if key in out:
            if not isinstance(out[key], list) or not out[key]:
                raise ToolsFileError(f"{where}: {key} must be a non-empty list")
            out[key] = [_normalize(s, defs, where, seen) for s in out[key]]
    if "oneOf" in out:  # exclusivity is not a grammar property; the branches are what the value may be
        out["anyOf"] = out.pop("oneOf") + out.get("anyOf", [])
    if "allOf" in out:
        parts = out.pop("allOf")
        if len(parts) != 1:
            raise ToolsFileError(f"{where}: allOf with several schemas is not supported")
        out = {**parts[0], **out}
    if "properties" in out:
        props = out["properties"]
        if not isinstance(props, Mapping):
            raise ToolsFileError(f"{where}: properties must be an object")
        for key in props:
            if not _NAME.match(key):
                raise ToolsFileError(f"{where}: the property name {key!r} needs escapes")
        out["properties"] = {k: _normalize(v, defs, f"{where}.{k}", seen) for k, v in props.items()}
    required = out.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) and _NAME.match(r) for r in required):
        raise ToolsFileError(f"{where}: required must list property names")
    for name in required:  # required but not declared: any value (JSON Schema's meaning)
        out.setdefault("properties", {}).setdefault(name, {})
    if "items" in out:
        if isinstance(out["items"], list):
            raise ToolsFileError(f"{where}: tuple-form items are not supported")
        out["items"] = _normalize(out["items"], defs, f"{where}[]", seen)
    if isinstance(out.get("additionalProperties"), Mapping):
        raise ToolsFileError(f"{where}: additionalProperties with a schema has no bounded grammar; list the properties")
    return out


# prompt text


def type_label(schema: Mapping[str, Any]) -> str:
    """A short type for the prompt: '' for a plain string, else integer, number, boolean, date, a|b for enums,
    list of X, object."""
    if "enum" in schema:
        return "|".join(json.dumps(v) if not isinstance(v, str) else v for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "anyOf" in schema:
        labels = [type_label(s) or "string" for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(dict.fromkeys(labels))
    kind = schema.get("type")
    if kind == "string":
        return "date" if schema.get("format") == "date" else ""
    if kind == "array":
        return f"list of {type_label(schema.get('items', {})) or 'string'}"
    if kind == "object":
        if "properties" not in schema:
            return "object"
        inner = ", ".join(_param_text(k, v, k in schema.get("required", ())) for k, v in schema["properties"].items())
        return f"{{{inner}}}"
    return str(kind or "any")


def _param_text(name: str, schema: Mapping[str, Any], required: bool) -> str:
    label = type_label(schema)
    text = f"{name}: {label}" if label else name
    if not required:
        text += f" = {json.dumps(schema['default'])}" if "default" in schema else " (optional)"
    return text


def tool_catalog(
    tools: Sequence[ToolSpec], *, with_descriptions: bool = True, with_parameter_notes: bool = False
) -> str:
    """The tools as compact prompt lines: ``name(param, count: integer, unit: c|f = "c"): description``; with
    ``with_parameter_notes``, each described parameter follows on a line of its own (``  unit: the scale ...``),
    which is where function schemas say what an optional parameter defaults to and what a value must look like."""
    lines = []
    for tool in tools:
        required = set(tool.required)
        params = ", ".join(_param_text(k, v, k in required) for k, v in tool.properties.items())
        line = f"- {tool.name}({params})"
        if with_descriptions and tool.description:
            line += f": {tool.description}"
        lines.append(line)
        if with_parameter_notes:
            for name, schema in tool.properties.items():
                note = " ".join(str(schema.get("description", "")).split())
                if note:
                    lines.append(f"    {name}: {note}")
    return "\n".join(lines)
