"""What a benchmark is to the harness: a class that loads its problems, writes their prompts, grades completions,
and says how its rows are voted on, scored for quality and reported.

Everything the runner, the report and ``powersampling eval`` know about a benchmark comes through ``Benchmark``;
they never compare a benchmark's name. A subclass must set ``name`` and implement ``load``, ``prompt`` and
``grade``; every other method has a default that fits a benchmark graded right or wrong with an accuracy table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError
from ..datasets import FewShotExample, Problem
from ..grading import Grade, truncate_at_stops
from ..tables import accuracy_table, oracle_note

STYLES = ("auto", "chat", "fewshot")


@dataclass(frozen=True)
class BenchmarkPrompt:
    """A problem's prompt as the sampler gets it: token ids, and how a completion ends."""

    ids: list[int]
    stops: tuple[str, ...]
    style: str  # "chat" or "fewshot"
    text: str  # the prompt as text (for the results file)
    constraint: Any = None  # a token constraint of its own (TaskBench's plan grammar) instead of stop strings


@dataclass(frozen=True)
class ExecLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    unsafe_exec: bool = False  # run generated code without OS isolation when none works (--unsafe-exec)


def resolve_style(style: str, model) -> str:
    if style not in STYLES:
        raise ConfigError(f"unknown prompt style {style!r}; choose one of: {', '.join(STYLES)}")
    if style != "auto":
        return style
    return "chat" if getattr(model.tokenizer, "has_chat_template", False) else "fewshot"


BLOCKS_PER_COMPLETION = 16  # the paper's K: MH blocks over the token cap, so the block grows with the cap


class Benchmark:
    """One benchmark. Instances hold no state: the problems carry what grading them needs in ``Problem.fields``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for ``--help``
    default_max_new_tokens: ClassVar[int] = 256
    default_block_size: ClassVar[int | None] = None  # None: BLOCKS_PER_COMPLETION blocks over the token cap
    reads_data_folder: ClassVar[bool] = False  # its problems come from ``--data DIR`` rather than a package
    runs_programs: ClassVar[bool] = False  # grading executes generated code (needs the sandbox)
    plot_axis_label: ClassVar[str] = "accuracy (95% Wilson interval)"
    # the categories ``--categories`` selects from; a benchmark that has them takes ``load(data, categories)``
    categories: ClassVar[tuple[str, ...]] = ()

    # loading

    def load(self, data: Path | None) -> list[Problem]:
        """Every problem, in the dataset's order. Bad or missing data is a one-line ``ConfigError`` naming the
        file (and line) at fault."""
        raise NotImplementedError

    def check_data_argument(self, data: Path | None) -> None:
        if data is not None and not self.reads_data_folder:
            raise ConfigError(f"--data is for benchmarks that read a data folder; {self.name} reads its own")

    def data_fingerprint(self, problems: Sequence[Problem]) -> str | None:
        """What identifies the data the problems came from (stored in ``run.json``); None for packaged data."""
        return None

    def max_new_tokens(self, problems: Sequence[Problem]) -> int:
        return self.default_max_new_tokens

    def block_size(self, max_new_tokens: int) -> int:
        """MH block size when ``--block-size`` is not given: the benchmark's own, else the token cap split into
        ``BLOCKS_PER_COMPLETION`` blocks (rounded up)."""
        return self.default_block_size or max(1, math.ceil(max_new_tokens / BLOCKS_PER_COMPLETION))

    # prompting and grading

    def prompt(self, problem: Problem, model, style: str, shots: int | None) -> BenchmarkPrompt:
        """The prompt in ``style`` ('chat' or 'fewshot', resolved); ``shots`` None is the benchmark's default."""
        raise NotImplementedError

    def grade(self, problem: Problem, text: str, prompt: BenchmarkPrompt, limits: ExecLimits) -> Grade:
        """The verdict on ``text``, already cut at the prompt's stop strings."""
        raise NotImplementedError

    def row_reference(self, problem: Problem) -> str | None:
        """The reference stored in each row, for benchmarks whose rows can be graded again from it alone."""
        return None

    def problem_for(self, row: dict, problems: dict[str, Problem]) -> Problem | None:
        """The problem a row was run on, from ``problems`` (by id), or None where it is not there."""
        return problems.get(row.get("problem_id"))

    def regrade(self, row: dict, problems: dict[str, Problem]) -> Grade:
        """Grade a stored row again from its text (``problems``: those of the data given, by id)."""
        raise ConfigError(
            f"{self.name} rows cannot be graded again from their text ({row.get('problem_id')} is one); "
            "rerun them instead"
        )

    # selections over several outputs

    def answer_extractor(self, problem: Problem) -> Callable[[str], str | None] | None:
        """What a majority vote compares (text -> answer, None for no answer); None: the benchmark has no
        answers to vote on."""
        return None

    def answer_parts(self, problem: Problem) -> Callable[[str], Sequence[str] | None] | None:
        """What a coverage choice compares (text -> the parts of its answer, each a canonical string; [] for an
        answer with none, None for no answer); None: the benchmark's answers have no parts."""
        return None

    def quality_evaluator(self, problem: Problem) -> Callable[[str], float] | None:
        """The benchmark's own quality score (text -> [0, 1], never seeing the gold answer); None: it has none."""
        return None

    # report

    def add_metrics(self, summary: dict, by_method: dict[str, dict[str, dict]], *, n_boot: int) -> None:
        """Metrics of its own added to ``summary`` (per method under ``summary["methods"]``)."""

    def method_table(self, summary: dict) -> list[str]:
        return accuracy_table(summary)

    def notes(self, summary: dict) -> list[str]:
        return oracle_note(summary)

    def comparison_tables(self, summary: dict, n_boot: int) -> list[str]:
        return []

    def plot_point(self, entry: dict) -> tuple[float, float, float]:
        """(value, low, high) of a method's point in the accuracy-against-cost plot."""
        low, high = entry["ci95"]
        return entry["accuracy"], low, high

    curve_metric_name = "accuracy"

    def curve_metric(self, graded: Sequence[dict]) -> tuple[float, float, float]:
        """(value, low, high) of the headline metric over graded outputs (dicts with ``correct`` and the grade's
        fields, one per problem): accuracy with its Wilson 95% interval."""
        from ..stats import wilson_interval

        correct = sum(bool(g["correct"]) for g in graded)
        return (correct / len(graded), *wilson_interval(correct, len(graded))) if graded else (0.0, 0.0, 1.0)

    def curve_difference(self, reference: Sequence[dict], graded: Sequence[dict]) -> dict:
        """The headline metric of ``graded`` minus ``reference``'s on the same problems (paired, in order), with a
        paired bootstrap 95% interval; for accuracy also McNemar's exact p."""
        from ..stats import mcnemar_exact, paired_bootstrap

        a, b = [bool(g["correct"]) for g in reference], [bool(g["correct"]) for g in graded]
        boot, mc = paired_bootstrap(a, b), mcnemar_exact(a, b)
        return {"difference": boot.difference, "ci95": [boot.ci_low, boot.ci_high], "p": mc.p_value}


def chat_prompt(model, messages: list[dict[str, str]]) -> BenchmarkPrompt:
    try:
        ids = list(model.tokenizer.chat_prompt(messages))
    except ValueError as exc:
        raise ConfigError(f"model {model.name!r} cannot format a chat prompt ({exc}); use --style fewshot") from None
    return BenchmarkPrompt(ids, (), "chat", model.tokenizer.decode(ids))


def text_prompt(model, text: str, stops: Sequence[str]) -> BenchmarkPrompt:
    return BenchmarkPrompt(list(model.tokenizer.encode(text)), tuple(stops), "fewshot", text)


def take_shots(examples: Sequence[FewShotExample], shots: int | None, default: int) -> Sequence[FewShotExample]:
    k = default if shots is None else shots
    if k < 0:
        raise ConfigError(f"shots must be >= 0 (got {k})")
    return examples[:k]


class AnswerBenchmark(Benchmark):
    """A benchmark with one short answer per problem (a number, an expression): graded and voted on by that
    answer, and graded again from a stored row's reference. Few-shot prompts are worked examples separated by
    ``fewshot_stops``, chat prompts the question with ``instruction``."""

    instruction: ClassVar[str] = ""
    fewshot_stops: ClassVar[tuple[str, ...]] = ()
    fewshot_default_shots: ClassVar[int] = 0

    def grade_answer(self, reference: str, text: str) -> Grade:
        raise NotImplementedError

    def vote_answer(self, text: str) -> str | None:
        raise NotImplementedError

    def examples(self, problem: Problem) -> list[FewShotExample]:
        raise NotImplementedError

    def chat_turn(self, question: str) -> str:
        raise NotImplementedError

    def fewshot_text(self, examples: Sequence[FewShotExample], question: str) -> str:
        raise NotImplementedError

    def prompt(self, problem: Problem, model, style: str, shots: int | None) -> BenchmarkPrompt:
        examples = self.examples(problem)
        if style == "chat":
            messages = []
            for ex in take_shots(examples, shots, 0):
                messages += [
                    {"role": "user", "content": self.chat_turn(ex.question)},
                    {"role": "assistant", "content": ex.answer},
                ]
            messages.append({"role": "user", "content": self.chat_turn(problem.question)})
            return chat_prompt(model, messages)
        text = self.fewshot_text(take_shots(examples, shots, self.fewshot_default_shots), problem.question)
        return text_prompt(model, text, self.fewshot_stops)

    def grade(self, problem: Problem, text: str, prompt: BenchmarkPrompt, limits: ExecLimits) -> Grade:
        return self.grade_answer(problem.reference, text)

    def row_reference(self, problem: Problem) -> str | None:
        return problem.reference

    def regrade(self, row: dict, problems: dict[str, Problem]) -> Grade:
        if row.get("reference") is None:
            return super().regrade(row, problems)
        stops = self.fewshot_stops if row.get("style") == "fewshot" else ()
        return self.grade_answer(row["reference"], truncate_at_stops(row["text"], stops))

    def answer_extractor(self, problem: Problem) -> Callable[[str], str | None]:
        return self.vote_answer
