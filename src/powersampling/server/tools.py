"""OpenAI function calling on /v1/chat/completions: the request's ``tools`` and ``tool_choice`` become a JSON-schema
grammar (the planner's ``tool_turn_schema``, compiled by xgrammar like ``response_format``), so every method samples
its target restricted to well-formed calls; the answer is read back into OpenAI ``tool_calls``.

One assistant turn is ``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}``; under ``tool_choice: auto`` the
grammar also admits ``{"content": "..."}``, a text answer, returned as the message's content. Earlier turns with
``tool_calls`` are rendered in that same form, so the model sees its own format in the history.
"""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import LanguageModel
from ..backends.constraints import JsonSchemaConstraint
from ..errors import PowerSamplingError
from ..planner.schema import openai_tool_call
from ..planner.tools import ToolsFileError, tool_spec
from ..planner.turns import ToolTurn, parse_turn
from .errors import APIError
from .schemas import MAX_PARALLEL_CALLS, ChatCompletionRequest, ChatMessage, NamedToolChoice


def tool_turn(body: ChatCompletionRequest) -> ToolTurn | None:
    """The request's tool turn, or None when the reply is plain text (no tools, or ``tool_choice: none``); a 400
    names the field that is wrong."""
    if body.tools is None:
        for name in ("tool_choice", "parallel_tool_calls"):
            if getattr(body, name) is not None:
                raise APIError(400, f"{name} needs tools", param=name, code="invalid_value")
        return None
    # one by one, not parse_tools: a name given twice is two definitions, and a call of it may take the arguments of
    # either (the grammar has a branch per definition)
    specs_list = []
    for i, tool in enumerate(body.tools):
        try:
            specs_list.append(tool_spec(tool.model_dump(exclude_none=True)))
        except ToolsFileError as exc:
            raise APIError(400, f"tools: tool {i + 1}: {exc}", param=f"tools.{i}", code="invalid_value") from None
    specs = tuple(specs_list)
    choice = body.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.name
        if choice not in {t.name for t in specs}:
            raise APIError(
                400, f"tool_choice names {choice!r}, which is not in tools", param="tool_choice", code="invalid_value"
            )
    if choice == "none":
        return None
    if body.response_format is not None and body.response_format.type != "text":
        raise APIError(
            400,
            "response_format applies to text answers; with tools it needs tool_choice: none",
            param="response_format",
            code="invalid_value",
        )
    turn = ToolTurn(specs, choice, 1 if body.parallel_tool_calls is False else MAX_PARALLEL_CALLS)
    try:
        turn.instructions()
        turn.schema()
    except (ToolsFileError, TypeError, ValueError, KeyError, AttributeError) as exc:  # a shape the planner cannot read
        message = f"tools: cannot read a parameters schema: {exc}"
        raise APIError(400, message, param="tools", code="invalid_value") from None
    return turn


def tool_grammar(turn: ToolTurn, model: LanguageModel) -> JsonSchemaConstraint:
    try:
        return JsonSchemaConstraint.for_model(model, turn.schema())
    except (PowerSamplingError, ValueError) as exc:
        raise APIError(400, str(exc), param="tools", code="invalid_value") from None


def chat_messages(body: ChatCompletionRequest, turn: ToolTurn | None) -> list[dict[str, str]]:
    """The messages as the chat template reads them: assistant tool calls as the JSON the tools grammar produces,
    tool results under the ``tool`` role, and the tools described in the system message when the reply may call
    them. A tool message is rendered under the tool role whatever call it names (its ``tool_call_id`` is the client's
    bookkeeping; a chat template shows no ids), and arguments that are not JSON are shown as the string sent."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(body.messages):
        problem = _misplaced(message)
        if problem:
            raise APIError(400, problem[1], param=f"messages.{i}.{problem[0]}", code="invalid_value")
        text = message.text()
        if message.tool_calls:
            calls = []
            for call in message.tool_calls:
                try:
                    arguments = json.loads(call.function.arguments)
                except json.JSONDecodeError:
                    arguments = call.function.arguments  # shown to the model as the client sent it
                calls.append({"name": call.function.name, "arguments": arguments})
            text = (text + "\n" if text else "") + json.dumps({"tool_calls": calls}, ensure_ascii=False)
        out.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    if turn is not None:
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + turn.instructions()}
        else:
            out.insert(0, {"role": "system", "content": turn.instructions()})
    return out


def _misplaced(message: ChatMessage) -> tuple[str, str] | None:
    if message.tool_calls is not None and message.role != "assistant":
        return "tool_calls", "tool_calls belong to assistant messages"
    if (message.role == "tool") != (message.tool_call_id is not None):
        return "tool_call_id", "a tool message needs tool_call_id, and only tool messages have one"
    if message.content is None and not message.tool_calls:
        return "content", "content is required (an assistant message may have tool_calls instead)"
    return None


def read_turn(text: str, id_prefix: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) of a reply sampled under the tools grammar, the calls in OpenAI's form; (None, None)
    when it is not a complete turn (cut by max_tokens or a stop string)."""
    content, calls = parse_turn(text)
    if calls is None:
        return content, None
    return None, [openai_tool_call(f"{id_prefix}{i}", c["name"], c["arguments"]) for i, c in enumerate(calls, 1)]
