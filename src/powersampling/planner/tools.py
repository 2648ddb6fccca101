"""Tools a plan may call: names, descriptions and typed parameters.

A closed tool vocabulary turns a plan into something an agent can execute: every task names one listed tool and
gives that tool's parameters, each a value of its declared type. The grammar built from these specs
(``schema.task_list_schema``) admits nothing else.

``load_tools`` reads the TaskBench format (``{"nodes": [{"id", "desc", "parameters": [{"name", "type",
"desc"}]}]}``), a list of such objects (``name``/``description`` are accepted for ``id``/``desc``), or a list of bare
names (tools without parameters).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

PARAMETER_TYPES = ("string", "date", "integer", "number", "boolean")
_NAME = re.compile(r'^[^\x00-\x1f"\\]{1,64}$')  # what a JSON string holds without escapes (TaskBench names have spaces)


class ToolsFileError(ConfigError):
    """A tools file or tools list is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class ToolParameter:
    name: str
    type: str = "string"
    description: str = ""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: tuple[ToolParameter, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "desc": self.description,
            "parameters": [{"name": p.name, "type": p.type, "desc": p.description} for p in self.parameters],
        }


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
    """Tool specs from already parsed JSON (see the module docstring for the accepted shapes)."""
    items = data.get("nodes", data.get("tools")) if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ToolsFileError(f'{source}: expected a non-empty list of tools (or {{"nodes": [...]}})')
    tools: list[ToolSpec] = []
    for index, item in enumerate(items):
        where = f"{source}: tool {index + 1}"
        if isinstance(item, str):
            item = {"id": item}
        if not isinstance(item, dict):
            raise ToolsFileError(f"{where} is neither a name nor an object")
        name = item.get("id", item.get("name"))
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolsFileError(
                f"{where}: the name {name!r} is not 1-64 characters without quotes, backslashes or control characters"
            )
        description = item.get("desc", item.get("description", ""))
        if not isinstance(description, str):
            raise ToolsFileError(f"{where} ({name}): the description is not text")
        tools.append(
            ToolSpec(
                name, " ".join(description.split()), _parameters(item.get("parameters") or [], f"{where} ({name})")
            )
        )
    names = [t.name for t in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ToolsFileError(f"{source}: tool names repeat: {', '.join(repeated)}")
    return tuple(tools)


def _parameters(items: Any, where: str) -> tuple[ToolParameter, ...]:
    if not isinstance(items, list):
        raise ToolsFileError(f"{where}: parameters must be a list")
    out = []
    for item in items:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not _NAME.match(item["name"]):
            raise ToolsFileError(f"{where}: a parameter has no valid name ({item!r})")
        kind = str(item.get("type") or "string").lower()
        if kind not in PARAMETER_TYPES:
            kind = "string"  # an undeclared or exotic type still takes a value, as text
        out.append(
            ToolParameter(item["name"], kind, " ".join(str(item.get("desc", item.get("description", ""))).split()))
        )
    if len({p.name for p in out}) != len(out):
        raise ToolsFileError(f"{where}: parameter names repeat")
    return tuple(out)


def as_tool_specs(tools: Sequence[Any]) -> tuple[ToolSpec, ...]:
    """Tool specs from specs, names or dicts (what PlannerConfig and the server accept)."""
    if tools and all(isinstance(t, ToolSpec) for t in tools):
        return tuple(tools)
    return parse_tools([t.to_dict() if isinstance(t, ToolSpec) else t for t in tools])


def tool_catalog(tools: Sequence[ToolSpec], *, with_descriptions: bool = True) -> str:
    """The tools as compact prompt lines: ``name(param: type, ...) - description``."""
    lines = []
    for tool in tools:
        params = ", ".join(p.name if p.type == "string" else f"{p.name}: {p.type}" for p in tool.parameters)
        line = f"- {tool.name}({params})"
        if with_descriptions and tool.description:
            line += f": {tool.description}"
        lines.append(line)
    return "\n".join(lines)
