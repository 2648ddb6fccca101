"""One assistant turn of tool calls: what the model may answer when it is offered tools, as a JSON-schema grammar.

A turn is ``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}``; under ``choice`` "auto" the grammar also
admits ``{"content": "..."}``, a text answer that calls nothing. The server's ``tools`` parameter and the BFCL
benchmark build their grammar and their instructions here, so both sample from the same constrained target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .schema import tool_turn_max_tokens, tool_turn_schema
from .tools import ToolSpec, tool_catalog

_TEXT_ANSWER = {
    "type": "object",
    "properties": {"content": {"type": "string"}},
    "required": ["content"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ToolTurn:
    """What a reply offered ``tools`` may be: ``choice`` is auto (calls or a text answer), required (calls) or the
    one tool's name that must be called; ``max_calls`` bounds the calls of the turn (1: no parallel calls)."""

    tools: tuple[ToolSpec, ...]
    choice: str
    max_calls: int

    @property
    def allows_text(self) -> bool:
        return self.choice == "auto"

    def _called(self) -> list[ToolSpec]:
        named = self.choice not in ("auto", "required")
        return [t for t in self.tools if t.name == self.choice] if named else list(self.tools)

    def schema(self) -> dict[str, Any]:
        turn = tool_turn_schema(self._called(), min_calls=1, max_calls=self.max_calls)
        if not self.allows_text:
            return turn
        defs = turn.pop("$defs")
        return {"anyOf": [turn, _TEXT_ANSWER], "$defs": defs}

    def max_tokens(self) -> int:
        """Tokens that always suffice for a turn of calls (a text answer is unbounded; it stops at the cap)."""
        return tool_turn_max_tokens(self._called(), max_calls=self.max_calls)

    def instructions(self) -> str:
        # the list's ", ..." and "one call for each thing": with a one-element example a small model copied one call
        # where a request asked for several (Qwen2.5-Coder-0.5B on BFCL's parallel entries: docs/evaluation.md)
        calls = '{"tool_calls": [{"name": "<tool>", "arguments": {...}}]}'
        if self.max_calls > 1:
            calls = '{"tool_calls": [{"name": "<tool>", "arguments": {...}}, ...]}'
            calls += ", one call for each thing the request asks"
        lines = ["You can call these tools:", tool_catalog(self.tools, with_parameter_notes=True), ""]
        if self.choice == "auto":
            lines.append(f'To call tools, answer with {calls}; otherwise answer with {{"content": "<your answer>"}}.')
        elif self.choice == "required":
            lines.append(f"Answer with {calls}.")
        else:
            named = calls.replace("<tool>", self.choice)
            lines.append(f"Call {self.choice}: answer with {named}.")
        if self.max_calls == 1:
            lines.append("Make one call.")
        return "\n".join(lines)


def call_parts(text: str) -> list[str] | None:
    """A turn's calls as the parts a coverage choice compares: each call's JSON with sorted keys, the calls sorted
    (so the order of calls and of arguments does not matter); [] for a text answer, None for no complete turn."""
    content, calls = parse_turn(text)
    if content is None and calls is None:
        return None
    return canonical_calls(calls or [])


def canonical_calls(calls: list[dict[str, Any]]) -> list[str]:
    """Each call's JSON with sorted keys, the calls sorted: equal for the same calls in any order."""
    return sorted(json.dumps(c, sort_keys=True, ensure_ascii=False) for c in calls)


def parse_turn(text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, calls) of a reply sampled under a ``ToolTurn`` grammar, calls as ``{"name", "arguments"}``;
    (None, None) when it is not a complete turn (cut by the token cap or a stop string)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    if isinstance(data, dict) and isinstance(data.get("content"), str):
        return data["content"], None
    if isinstance(data, dict) and isinstance(data.get("tool_calls"), list):
        return None, [{"name": c["name"], "arguments": c["arguments"]} for c in data["tool_calls"]]
    return None, None
