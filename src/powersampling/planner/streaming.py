"""Tasks as they are decoded: a constraint wrapper that watches the answer grow and hands over each task object
the moment its closing brace is accepted.

Only single-pass routes can stream (the baseline route: one sample, tokens accepted in order, never taken back).
Metropolis-Hastings and SMC resample suffixes, so a task seen early may not be in the final answer; the planner
streams nothing there and the caller gets the tasks with the finished plan.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any


class TaskStream:
    """Wraps a ``JsonSchemaConstraint``: every state it starts reports, through ``on_task(position, task_json)``,
    each object of the answer's ``"tasks"`` array once complete (positions from 1). ``decode`` turns token ids into
    text (the model's tokenizer)."""

    def __init__(self, constraint: Any, decode: Callable[[Sequence[int]], str], on_task: Callable[[int, Any], None]):
        self.constraint = constraint
        self.decode = decode
        self.on_task = on_task

    def start(self, generated: Sequence[int]) -> _WatchedState:
        return _WatchedState(self, self.constraint.start(generated), list(generated))

    def __getattr__(self, name: str) -> Any:  # everything else (accepts, compiled, ...) is the constraint's
        return getattr(self.constraint, name)


class _WatchedState:
    def __init__(self, stream: TaskStream, state: Any, generated: list[int]) -> None:
        self.stream, self.state, self.tokens = stream, state, generated
        self.reported = 0
        self._scan_from = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._task_start: int | None = None
        self._text = ""
        self._scan()

    def allowed_tokens(self):
        return self.state.allowed_tokens()

    def is_finished(self) -> bool:
        return self.state.is_finished()

    def advance(self, token_id: int) -> None:
        self.state.advance(token_id)
        self.tokens.append(int(token_id))
        self._scan()

    def _scan(self) -> None:
        """Walk the new text: at depth 2 inside the answer (``{"tasks": [ {...} ]}``) an object is one task."""
        # decoding the whole prefix keeps multi-byte characters whole; an answer is a few hundred tokens
        self._text = self.stream.decode(self.tokens)
        text = self._text
        for i in range(self._scan_from, len(text)):
            ch = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                continue
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
                if ch == "{" and self._depth == 3:
                    self._task_start = i
            elif ch in "}]":
                if ch == "}" and self._depth == 3 and self._task_start is not None:
                    self.reported += 1
                    self.stream.on_task(self.reported, json.loads(text[self._task_start : i + 1]))
                    self._task_start = None
                self._depth -= 1
        self._scan_from = len(text)
