"""Input safety: size limits, and prompt-injection screening that flags instead of rewriting.

A request or context that looks like it tries to steer the model ("ignore previous instructions", chat control
tokens, ...) is planned as usual; the findings go into the plan's metadata (``safety_flags``) and a warning log
line, so whoever acts on the plan can decide. The one change made is to the prompt text only: chat control tokens
such as ``<|im_end|>`` are broken up so that they stay text instead of closing the chat turn; the request stored in
the plan is the original.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PowerSamplingError

log = logging.getLogger("powersampling.planner")


class PlanInputError(PowerSamplingError, ValueError):
    """The request or context cannot be planned (empty, too large, wrong type)."""


@dataclass(frozen=True)
class InputLimits:
    max_request_chars: int = 4000
    max_context_chars: int = 8000


_INJECTION_PATTERNS: dict[str, re.Pattern[str]] = {
    "override_instructions": re.compile(
        r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(instructions?|prompts?|rules|guidelines|above|previous)",
        re.I,
    ),
    "role_reassignment": re.compile(
        r"\byou are (now|no longer)\b|\bact as (an? )?(unrestricted|jailbroken)|"
        r"\bdeveloper mode\b|\bjailbreak",
        re.I,
    ),
    "prompt_exfiltration": re.compile(
        r"\b(reveal|print|show|repeat|leak)\b[^.\n]{0,30}\b(system prompt|hidden "
        r"instructions|your instructions|your prompt)",
        re.I,
    ),
    "fake_system_turn": re.compile(r"(^|\n|[\"'])\s*(system|assistant)\s*:|\[/?(system|inst)\]|###\s*system", re.I),
    "chat_control_tokens": re.compile(r"<\|[a-z_]{2,20}\|>|<(/)?s>|<start_of_turn>|<end_of_turn>", re.I),
    "output_hijack": re.compile(r"\b(respond|reply|answer|output)\b[^.\n]{0,20}\bonly\b[^.\n]{0,20}\bwith\b", re.I),
}


@dataclass
class ScreenedInput:
    request: str
    context_text: str
    flags: list[str]

    @property
    def prompt_request(self) -> str:
        return neutralize_control_tokens(self.request)

    @property
    def prompt_context(self) -> str:
        return neutralize_control_tokens(self.context_text)


def neutralize_control_tokens(text: str) -> str:
    """``<|im_end|>`` -> ``< |im_end| >``: the same words, no longer one special token to the tokenizer."""
    return _INJECTION_PATTERNS["chat_control_tokens"].sub(lambda m: "< " + m.group(0)[1:-1] + " >", text)


def context_to_text(context: Any) -> str:
    if context is None:
        return ""
    if isinstance(context, str):
        return context
    try:
        return json.dumps(context, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:
        raise PlanInputError(f"context must be a string or JSON-serializable, got {type(context).__name__}") from exc


def injection_flags(text: str) -> list[str]:
    return [name for name, pattern in _INJECTION_PATTERNS.items() if pattern.search(text)]


def screen_input(request: Any, context: Any = None, limits: InputLimits | None = None) -> ScreenedInput:
    """Check sizes (raising ``PlanInputError``), then flag injection patterns in request and context."""
    limits = limits or InputLimits()
    if not isinstance(request, str):
        raise PlanInputError(f"the request must be text, got {type(request).__name__}")
    if not request.strip():
        raise PlanInputError("the request is empty")
    if len(request) > limits.max_request_chars:
        raise PlanInputError(
            f"the request has {len(request)} characters, more than the limit of {limits.max_request_chars}"
        )
    context_text = context_to_text(context)
    if len(context_text) > limits.max_context_chars:
        raise PlanInputError(
            f"the context has {len(context_text)} characters, more than the limit of {limits.max_context_chars}"
        )
    flags = [f"request:{f}" for f in injection_flags(request)] + [f"context:{f}" for f in injection_flags(context_text)]
    if flags:
        log.warning("possible prompt injection in planner input: %s", ", ".join(flags))
    return ScreenedInput(request, context_text, flags)


def screen_mapping_values(values: Mapping[str, str]) -> list[str]:
    """Flags for several named texts (feedback notes, ...)."""
    return [f"{name}:{flag}" for name, text in values.items() for flag in injection_flags(text)]
