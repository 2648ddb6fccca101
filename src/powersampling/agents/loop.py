"""An agent loop: the model answers with tool calls, the executor runs them, their results go back to the model,
until it answers without calls or the step bound is reached.

Each step samples one assistant turn under the tools grammar of ``planner.turns.ToolTurn`` (``tool_choice`` auto:
calls, or a text answer that ends the loop) with any method of the sampler registry. The calls run one after the
other through ``Executor`` (tools that share state, such as BFCL's environments, need their order). The history is
rendered as the server renders it: the assistant's calls as the JSON the grammar produces, each result as a
``tool`` message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..planner.dag import Task, TaskDAG
from ..planner.turns import ToolTurn, parse_turn
from ..samplers.registry import ZERO_TEMPERATURE_METHOD
from .executor import CallResult, Executor


@dataclass
class AgentStep:
    text: str  # the reply as sampled
    calls: list[dict[str, Any]]  # {"name", "arguments"}; empty for a text answer or an incomplete reply
    results: list[CallResult] = field(default_factory=list)
    tokens_decoded: int = 0
    wall_s: float = 0.0
    complete: bool = True  # the reply was a whole turn (not cut by the token cap)


def run_calls(executor: Executor, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[CallResult]:
    """The calls one after the other (tools may share state, so order matters), each a one-call plan for the
    executor: its timeout, captured errors, span and metrics apply."""
    results = []
    for i, (name, arguments) in enumerate(calls, start=1):
        dag = TaskDAG("", [Task(f"t{i}", f"call {name}", tool=name, arguments=dict(arguments))])
        results.extend(asyncio.run(executor.run(dag)).calls)
    return results


def result_text(result: CallResult) -> str:
    """A call's result as the model reads it: strings as they are, other values as JSON, errors as BFCL words
    them."""
    if result.status != "ok":
        return f"Error during execution: {result.error}"
    output = result.output
    if isinstance(output, str):
        return output
    try:
        return json.dumps(output)
    except (TypeError, ValueError):
        return str(output)


class AgentLoop:
    """Runs user turns against ``executor``'s tools with ``model`` sampling by ``method`` (``params`` for the
    sampler: temperature, alpha, seed, ...). ``max_steps`` bounds the model calls of one user turn, ``max_calls``
    the calls of one step, ``max_new_tokens`` one step's reply; ``choice`` is the turn's ``tool_choice`` (auto: calls
    or a text answer; required: calls, so the loop ends only at ``max_steps``)."""

    def __init__(
        self,
        model,
        executor: Executor,
        *,
        method: str = ZERO_TEMPERATURE_METHOD,
        params: dict[str, Any] | None = None,
        max_steps: int = 5,
        max_calls: int = 4,
        max_new_tokens: int = 256,
        system: str | None = None,
        choice: str = "auto",
    ) -> None:
        self.model = model
        self.executor = executor
        self.method = method
        self.params = dict(params or {})
        self.max_steps = max_steps
        self.max_new_tokens = max_new_tokens
        self.turn = ToolTurn(tuple(executor.tools.values()), choice, max_calls)
        instructions = self.turn.instructions()
        self.messages: list[dict[str, str]] = [
            {"role": "system", "content": f"{system}\n\n{instructions}" if system else instructions}
        ]
        self._constraint = None

    def constraint(self):
        from ..backends.constraints import JsonSchemaConstraint

        if self._constraint is None:
            self._constraint = JsonSchemaConstraint.for_model(self.model, self.turn.schema())
        return self._constraint

    def user_turn(self, content: str | Sequence[dict[str, str]], *, seed: int = 0) -> list[AgentStep]:
        """Add the user's message(s) and run steps until the model answers without calls (or ``max_steps``)."""
        from ..samplers import build_sampler

        if isinstance(content, str):
            content = [{"role": "user", "content": content}]
        self.messages += [{"role": m["role"], "content": m["content"]} for m in content]
        steps: list[AgentStep] = []
        for index in range(self.max_steps):
            ids = list(self.model.tokenizer.chat_prompt(self.messages))
            sampler = build_sampler(
                self.method,
                self.model,
                **{"max_new_tokens": self.max_new_tokens, **self.params, "seed": seed * 1000 + index},
            )
            start = time.perf_counter()
            result = sampler.sample(ids, constraint=self.constraint())
            wall = time.perf_counter() - start
            text, calls = parse_turn(result.text)
            step = AgentStep(
                result.text,
                calls or [],
                tokens_decoded=int(result.metadata.get("tokens_generated", len(result.token_ids))),
                wall_s=wall,
                complete=text is not None or calls is not None,
            )
            steps.append(step)
            if not calls:
                self.messages.append({"role": "assistant", "content": result.text})
                break
            step.results = run_calls(self.executor, [(c["name"], c["arguments"]) for c in calls])
            self.messages.append({"role": "assistant", "content": json.dumps({"tool_calls": calls})})
            self.messages += [{"role": "tool", "content": result_text(r)} for r in step.results]
        return steps
