"""Evaluation harness: benchmarks as classes (``eval/benchmarks/``), graders, a resumable runner and a statistical
report."""

from .benchmarks import (
    Benchmark,
    BenchmarkPrompt,
    ExecLimits,
    benchmark_names,
    get_benchmark,
    load_problems,
    register_benchmark,
)
from .datasets import Problem
from .grading import Grade, grade_gsm8k, grade_math
from .report import summarize, write_report
from .runner import run_eval
from .stats import mcnemar_exact, paired_bootstrap, wilson_interval

__all__ = [
    "Benchmark",
    "BenchmarkPrompt",
    "ExecLimits",
    "Grade",
    "Problem",
    "benchmark_names",
    "get_benchmark",
    "grade_gsm8k",
    "grade_math",
    "load_problems",
    "mcnemar_exact",
    "paired_bootstrap",
    "register_benchmark",
    "run_eval",
    "summarize",
    "wilson_interval",
    "write_report",
]
