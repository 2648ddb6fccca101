"""Test peers for the planner tests (no tests here).

``ScriptedLM`` is a real ``LanguageModel`` over the embedded SmolLM2 tokenizer: its next-token logits put a large
margin on the next token of a scripted answer chosen from the prompt text, so a plan's content is known in advance
while every sampler, the grammar mask and the planner run for real. Where the grammar forbids the scripted token,
the mask wins and the model follows the grammar with flat logits (so output stays valid, content goes off script).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from powersampling.backends.base import Continuation, ContinuationRequest
from powersampling.backends.decoding import temperature_logprobs

_TOKENIZER = None


def smol_tokenizer():
    """The embedded model's HF tokenizer (converted once into the powersampling cache)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import AutoTokenizer

        from powersampling.backends.embedded import embedded_model_dir

        try:
            _TOKENIZER = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
        except Exception as exc:  # pragma: no cover - environment without the embedded model
            pytest.skip(f"embedded tokenizer unavailable: {exc}")
    return _TOKENIZER


class ScriptedLM:
    STOP = 2  # <|im_end|>

    def __init__(
        self,
        answer_for: Callable[[str], str | None],
        *,
        margin: float = 30.0,
        fail_when: Callable[[float], bool] | None = None,
        vocab_size: int = 49152,
    ) -> None:
        from powersampling.backends.tokenizers import HFTokenizer

        self.hf_tokenizer = smol_tokenizer()
        self.tokenizer = HFTokenizer(self.hf_tokenizer)
        self.name = "scripted-smol"
        self.vocab_size = vocab_size
        self.stop_token_ids = frozenset({self.STOP})
        self.answer_for = answer_for
        self.margin = margin
        self.fail_when = fail_when
        self.sample_calls = 0
        self.prompts: list[str] = []
        self._targets: dict[tuple[int, ...], list[int]] = {}

    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        self.sample_calls += 1
        if self.fail_when is not None and self.fail_when(temperature):
            raise RuntimeError(f"backend failure injected at temperature {temperature}")
        return [self._one(r, temperature, rng) for r in requests]

    def _target(self, prompt: tuple[int, ...]) -> list[int]:
        if prompt not in self._targets:
            text = self.hf_tokenizer.decode(list(prompt))
            self.prompts.append(text)
            answer = self.answer_for(text)
            self._targets[prompt] = (
                [] if answer is None else self.hf_tokenizer.encode(answer, add_special_tokens=False) + [self.STOP]
            )
        return self._targets[prompt]

    def _one(self, req: ContinuationRequest, temperature: float, rng: np.random.Generator) -> Continuation:
        prompt = tuple(int(t) for t in req.prefix[: req.generated_start])
        target = self._target(prompt)
        generated = [int(t) for t in req.prefix[req.generated_start :]]
        state = req.constraint.start(generated) if req.constraint is not None else None
        tokens, logps, logqs, stopped = [], [], [], False
        while len(tokens) < req.max_new_tokens:
            pos = len(generated)
            logits = np.zeros(self.vocab_size)
            if pos < len(target) and generated == target[:pos]:
                logits[target[pos]] = self.margin
            if state is not None:
                logits = np.where(state.allowed_tokens(), logits, -np.inf)
            logp, logq = temperature_logprobs(logits, temperature)
            if temperature == 0:
                tok, lq = int(np.argmax(logp)), 0.0
            else:
                q = np.exp(logq)
                tok = int(rng.choice(self.vocab_size, p=q / q.sum()))
                lq = float(logq[tok])
            tokens.append(tok)
            logps.append(float(logp[tok]))
            logqs.append(lq)
            generated.append(tok)
            if state is not None:
                state.advance(tok)
            if tok in self.stop_token_ids:
                stopped = True
                break
        return Continuation(tokens, np.array(logps), np.array(logqs), stopped=stopped)


def answer(*tasks: tuple, atomic: bool | None = None, task_type: str = "work") -> str:
    """A model answer in the planner's format: tasks given as (description, [dependency numbers]) or
    (description, [deps], extra_fields) with extra fields task_type, tool (+ arguments), agent, atomic. Field order
    follows the planner's schema."""
    out = []
    for k, spec in enumerate(tasks, start=1):
        description, deps = spec[0], spec[1]
        extra = spec[2] if len(spec) > 2 else {}
        item = {"id": k, "description": description}
        if "tool" in extra:  # a tool plan: the call replaces the task type
            item["call"] = {"tool": extra["tool"], "arguments": extra.get("arguments", {})}
        else:
            item["task_type"] = extra.get("task_type", task_type)
        if "agent" in extra:
            item["agent"] = extra["agent"]
        item["dependencies"] = list(deps)
        if atomic is not None:
            item["atomic"] = extra.get("atomic", atomic)
        out.append(item)
    if any("call" in item for item in out):  # tool plans state their task count first
        return json.dumps({"count": len(out), "tasks": out})
    return json.dumps({"tasks": out})


def task_in_prompt(prompt: str) -> str | None:
    """The task id a planner expansion prompt asks about (None for the top level)."""
    match = re.search(r"Break task (\S+) \(", prompt)
    return match.group(1) if match else None
