"""The Berkeley Function Calling Leaderboard (BFCL) as a task of the evaluation harness: single-turn tool calls
scored by BFCL's own AST checker.

Data and checker come from ``bfcl-eval==2026.3.23`` (Apache-2.0), installed with ``--no-deps``: its full install
pulls every provider SDK, torch and faiss, none of which scoring needs. Entries are read from
``bfcl_eval/data/BFCL_v4_<category>.json`` (JSON lines) and their gold calls from ``data/possible_answer/``.

Categories (``--categories``, default all five): ``simple_python``, ``multiple``, ``parallel``,
``parallel_multiple`` (graded by ``ast_checker``) and ``irrelevance`` (none of the offered functions fits: correct
when the answer is a whole turn that calls nothing; a reply cut by the token cap is wrong in every category, where
BFCL would count an undecodable reply as "no call"). Problems of several categories are interleaved, one of each
in turn, so ``--limit N`` takes about N / k of each of k categories.

Calls are produced as the server's ``tools`` parameter produces them (``planner.turns.ToolTurn``): the entry's
functions, their BFCL types mapped to JSON Schema by BFCL's own ``GORILLA_TO_OPENAPI`` table, are described in the
system message (with each parameter's description), and the grammar admits exactly ``{"tool_calls": [{"name": <a
listed function>, "arguments": <valid under its schema>}, ...]}`` or, with ``tool_choice`` auto as in BFCL's
function-calling mode, a text answer ``{"content": ...}`` that calls nothing. Every category gets the same turn, so
the prompt never tells an irrelevance entry from another. Up to ``MAX_CALLS`` calls per turn (the most any gold
answer has).

BFCL's checker reads one value from its model registry ``bfcl_eval.constants.model_config``: whether the model
under test writes dotted function names with underscores (``underscore_to_dot``). That module imports every
provider SDK to name each model's handler class, so unless it is already imported, ``_ast_checker`` registers the
model under test (``CHECKER_MODEL``, which keeps dots: the grammar offers the names as BFCL writes them) in a
registry module of its own under that name before importing the checker. Every verdict is the checker's.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...agents.bfcl import tool_specs
from ...errors import ConfigError
from ...planner.tools import ToolsFileError, ToolSpec
from ..datasets import Problem, package_dir
from ..grading import Grade
from ..tables import accuracy_table
from . import register_benchmark
from .base import Benchmark, BenchmarkPrompt, ExecLimits, chat_prompt, text_prompt

BFCL_HINT = "pip install --no-deps bfcl-eval==2026.3.23"
AST_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
CATEGORIES = (*AST_CATEGORIES, "irrelevance")
MAX_CALLS = 8  # the largest gold answer (parallel) has 8 calls
CHECKER_MODEL = "powersampling"
NO_CALL = "no call"  # the vote's answer for a turn that calls nothing

_checker_lock = threading.Lock()


def data_dir() -> Path:
    return package_dir("bfcl_eval", BFCL_HINT) / "data"


def read_json_lines(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"BFCL data file {path} is missing; reinstall: {BFCL_HINT}")
    out = []
    for line_no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if raw.strip():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {line_no}: not a valid JSON line ({exc.msg})") from None
    return out


def parse_categories(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The categories asked for (comma-separated or a list; None: all), each known, none repeated."""
    if text is None:
        return CATEGORIES
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        raise ConfigError(
            f"unknown BFCL categories {', '.join(unknown) or '(none)'}; choose from {', '.join(CATEGORIES)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"BFCL categories repeat: {', '.join(names)}")
    return tuple(names)


def category_of(entry_id: str) -> str:
    """``simple_python_12`` -> ``simple_python``."""
    return entry_id.rsplit("_", 1)[0]


# the checker


@dataclass(frozen=True)
class _CheckerModel:
    """What BFCL's checker reads of a model's registry entry."""

    underscore_to_dot: bool


def _ast_checker() -> Any:
    """BFCL's ``ast_checker`` function, imported with ``CHECKER_MODEL`` in its model registry (see the module
    docstring)."""
    with _checker_lock:
        name = "bfcl_eval.constants.model_config"
        registry = sys.modules.get(name)
        if registry is None:
            package_dir("bfcl_eval", BFCL_HINT)
            registry = types.ModuleType(name, "The model under test, for BFCL's checker (powersampling's BFCL task).")
            registry.MODEL_CONFIG_MAPPING = {}
            sys.modules[name] = registry
        registry.MODEL_CONFIG_MAPPING.setdefault(CHECKER_MODEL, _CheckerModel(underscore_to_dot=False))
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

        return ast_checker


def check_calls(entry: dict, ground_truth: list, calls: list[dict] | None, complete: bool = True) -> dict:
    """BFCL's verdict on ``calls`` (``{"name", "arguments"}`` each; None: the answer called nothing) for an entry
    of its category: ``{"valid": bool, "error": [...], "error_type": ...}``. ``complete`` False: the reply was cut
    before it was a whole turn, which is wrong in every category (BFCL itself would count a reply it cannot decode
    as "no call", right for irrelevance; a reply cut by the token cap is not an answer that calls nothing)."""
    from bfcl_eval.constants.enums import Language

    category = category_of(entry["id"])
    if not complete:
        return {"valid": False, "error": ["the reply is not a whole turn"], "error_type": "incomplete_turn"}
    if category == "irrelevance":
        if calls:
            return {"valid": False, "error": ["called a function"], "error_type": "irrelevance_error:decoder_success"}
        return {"valid": True}
    if not calls:
        return {"valid": False, "error": ["no function call"], "error_type": "ast_decoder:no_call"}
    output = [{c["name"]: c["arguments"]} for c in calls]
    return _ast_checker()(entry["function"], output, ground_truth, Language.PYTHON, category, CHECKER_MODEL)


# data


@dataclass(frozen=True)
class BFCLEntry:
    entry: dict
    ground_truth: list | None  # None for irrelevance (no gold calls)
    tools: tuple[ToolSpec, ...]


_entries_cache: dict[str, list[BFCLEntry]] = {}
_entries_lock = threading.Lock()


def load_category(category: str) -> list[BFCLEntry]:
    """A category's entries, each with its gold calls and its functions as tool specs (read once per process)."""
    with _entries_lock:
        if category in _entries_cache:
            return _entries_cache[category]
        root = data_dir()
        entries = read_json_lines(root / f"BFCL_v4_{category}.json")
        gold = {}
        if category != "irrelevance":
            gold = {
                a["id"]: a["ground_truth"]
                for a in read_json_lines(root / "possible_answer" / f"BFCL_v4_{category}.json")
            }
        out = []
        for entry in entries:
            if len(entry["question"]) != 1:
                raise ConfigError(f"BFCL entry {entry['id']} has {len(entry['question'])} turns; expected one")
            if category != "irrelevance" and entry["id"] not in gold:
                raise ConfigError(f"BFCL entry {entry['id']} has no possible answer")
            try:
                tools = tool_specs(entry["function"])
            except ToolsFileError as exc:
                raise ConfigError(f"BFCL entry {entry['id']}: {exc}") from None
            out.append(BFCLEntry(entry, gold.get(entry["id"]), tools))
        _entries_cache[category] = out
        return out


def interleave(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """One item of each group in turn (a group that runs out drops out)."""
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def entry_problem(item: BFCLEntry, index: int) -> Problem:
    entry = item.entry
    user = [m["content"] for m in entry["question"][0] if m["role"] == "user"]
    return Problem(
        task=BFCL.name,
        problem_id=entry["id"],
        index=index,
        question=user[-1] if user else "",
        reference="",
        fields={"bfcl": item, "category": category_of(entry["id"])},
    )


def _canonical(calls: list[dict] | None) -> str:
    if not calls:
        return NO_CALL
    from ...planner.turns import canonical_calls

    return json.dumps(canonical_calls(calls), ensure_ascii=False)


# the benchmark


@register_benchmark
class BFCL(Benchmark):
    name = "bfcl"
    summary = "function calls scored by BFCL's AST checker (--categories; bfcl-eval installed with --no-deps)"
    default_max_new_tokens = 384
    default_block_size = 32
    categories = CATEGORIES

    def load(self, data: Path | None, categories: Sequence[str] | None = None) -> list[Problem]:
        groups = [load_category(c) for c in parse_categories(categories)]
        return [entry_problem(item, i) for i, item in enumerate(interleave(groups))]

    def data_fingerprint(self, problems: Sequence[Problem]) -> str | None:
        """The package version, the categories in the run and the instructions the prompt of every entry of those
        categories carries (all of them, not the run's slice, so that ``--offset`` parts of one run merge): a run
        resumed or merged with rows of other data, or of another prompt, is refused."""
        from importlib.metadata import version

        categories = list(dict.fromkeys(p.fields["category"] for p in problems))
        prompts = hashlib.sha256()
        for category in categories:
            for item in load_category(category):
                prompts.update(self.turn_for(item.tools).instructions().encode())
        text = f"bfcl-eval {version('bfcl-eval')} {','.join(categories)} {prompts.hexdigest()}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def turn(self, problem: Problem):
        return self.turn_for(problem.fields["bfcl"].tools)

    @staticmethod
    def turn_for(tools: Sequence[ToolSpec]):
        """The turn an entry offering ``tools`` is asked for: calls or a text answer, up to ``MAX_CALLS`` calls."""
        from ...planner.turns import ToolTurn

        return ToolTurn(tuple(tools), "auto", MAX_CALLS)

    def prompt(self, problem: Problem, model, style: str, shots: int | None) -> BenchmarkPrompt:
        from ...backends.constraints import JsonSchemaConstraint

        turn = self.turn(problem)
        messages = [{"role": m["role"], "content": m["content"]} for m in problem.fields["bfcl"].entry["question"][0]]
        instructions = turn.instructions()
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + instructions}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
        try:
            constraint = JsonSchemaConstraint.for_model(model, turn.schema())
        except ValueError as exc:
            raise ConfigError(f"BFCL entry {problem.problem_id}: no grammar for its functions ({exc})") from None
        if style == "chat":
            prompt = chat_prompt(model, messages)
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant (JSON):"
            prompt = text_prompt(model, text, ())
        return BenchmarkPrompt(prompt.ids, (), prompt.style, prompt.text, constraint)

    def grade(self, problem: Problem, text: str, prompt: BenchmarkPrompt, limits: ExecLimits) -> Grade:
        from ...planner.turns import parse_turn

        item = problem.fields["bfcl"]
        content, calls = parse_turn(text)
        complete = content is not None or calls is not None
        verdict = check_calls(item.entry, item.ground_truth, calls, complete)
        if verdict["valid"]:
            detail = "no call" if not calls else f"{len(calls)} call(s) accepted"
        else:
            errors = "; ".join(str(e) for e in verdict.get("error", []))[:300]
            detail = f"{verdict.get('error_type')}: {errors}"
        fields = {
            "category": problem.fields["category"],
            "calls": calls,
            "complete_turn": complete,
            "error_type": None if verdict["valid"] else verdict.get("error_type"),
        }
        return Grade(bool(verdict["valid"]), _canonical(calls) if complete else None, detail, fields)

    def regrade(self, row: dict, problems: dict[str, Problem]) -> Grade:
        """Graded again against the entry of the installed package (BFCL rows need no --data)."""
        return self.grade(self.problem_for(row, problems), row["text"], None, ExecLimits())

    def problem_for(self, row: dict, problems: dict[str, Problem]) -> Problem:
        """The row's entry, from ``problems`` or else from the installed package."""
        problem = problems.get(row.get("problem_id"))
        if problem is None:
            category = category_of(str(row.get("problem_id")))
            if category not in CATEGORIES:
                raise ConfigError(f"BFCL row {row.get('problem_id')} names no known category")
            found = [i for i in load_category(category) if i.entry["id"] == row["problem_id"]]
            if not found:
                raise ConfigError(f"BFCL row {row.get('problem_id')} has no entry in the installed data")
            problem = entry_problem(found[0], int(row.get("index", 0)))
        return problem

    def answer_extractor(self, problem: Problem) -> Callable[[str], str | None]:
        """The call set in a canonical form (each call's JSON with sorted keys, the calls sorted), ``"no call"``
        for a text answer, None for an incomplete turn."""
        from ...planner.turns import parse_turn

        def call_set(text: str) -> str | None:
            content, calls = parse_turn(text)
            if content is None and calls is None:
                return None
            return _canonical(calls)

        return call_set

    def answer_parts(self, problem: Problem) -> Callable[[str], list[str] | None]:
        """Each call in the canonical form of ``answer_extractor`` ([] for a text answer, None for an incomplete
        turn): the parts a coverage choice compares, as the server's coverage choice over tool calls reads them."""
        from ...planner.turns import call_parts

        return call_parts

    def add_metrics(self, summary: dict, by_method: dict[str, dict[str, dict]], *, n_boot: int) -> None:
        """Accuracy with a Wilson interval per category, for each method, and each method's paired difference from
        the zero-temperature baseline (greedy) per category, on the entries both have."""
        from ...samplers.registry import ZERO_TEMPERATURE_METHOD
        from ..stats import mcnemar_exact, paired_bootstrap, wilson_interval

        for method, rows_by_id in by_method.items():
            groups: dict[str, list[bool]] = {}
            for row in rows_by_id.values():
                groups.setdefault(row.get("category") or category_of(row["problem_id"]), []).append(
                    bool(row["correct"])
                )
            entry = summary["methods"][method]
            entry["by_category"] = {}
            for category in _in_category_order(groups):
                verdicts = groups[category]
                k, n = sum(verdicts), len(verdicts)
                entry["by_category"][category] = {
                    "problems": n,
                    "correct": k,
                    "accuracy": k / n,
                    "ci95": list(wilson_interval(k, n)),
                }
        baseline = by_method.get(ZERO_TEMPERATURE_METHOD)
        if baseline is None:
            return
        versus: dict[str, dict] = {}
        for method, rows_by_id in by_method.items():
            if method == ZERO_TEMPERATURE_METHOD:
                continue
            pairs: dict[str, tuple[list[bool], list[bool]]] = {}
            for pid in sorted(set(rows_by_id) & set(baseline)):
                row = rows_by_id[pid]
                base, this = pairs.setdefault(row.get("category") or category_of(pid), ([], []))
                base.append(bool(baseline[pid]["correct"]))
                this.append(bool(row["correct"]))
            versus[method] = {}
            for category in _in_category_order(pairs):
                base, this = pairs[category]
                boot = paired_bootstrap(base, this, n_boot=n_boot, seed=0)
                versus[method][category] = {
                    "problems": len(base),
                    "difference": boot.difference,
                    "ci95": [boot.ci_low, boot.ci_high],
                    "mcnemar_exact_p": mcnemar_exact(base, this).p_value,
                }
        summary["bfcl_versus_baseline"] = {"baseline": ZERO_TEMPERATURE_METHOD, "methods": versus}

    def method_table(self, summary: dict) -> list[str]:
        lines = accuracy_table(summary)
        categories = list(dict.fromkeys(c for e in summary["methods"].values() for c in e.get("by_category", {})))
        if not categories:
            return lines

        def accuracy(v: dict) -> str:
            return f"{v['accuracy']:.1%} ({v['correct']}/{v['problems']}, {v['ci95'][0]:.0%}-{v['ci95'][1]:.0%})"

        lines += _category_table(
            "Accuracy by BFCL category (correct / problems, 95% Wilson interval):",
            categories,
            {m: e.get("by_category", {}) for m, e in summary["methods"].items()},
            accuracy,
        )
        versus = summary.get("bfcl_versus_baseline")
        if versus and versus["methods"]:
            base = versus["baseline"]

            def difference(v: dict) -> str:
                low, high = (100 * x for x in v["ci95"])
                p, n = v["mcnemar_exact_p"], v["problems"]
                return f"{100 * v['difference']:+.1f} ({low:+.1f} .. {high:+.1f}; p {p:.2g}; n {n})"

            lines += _category_table(
                f"Paired difference from {base} by category (method - {base}, points, on the entries both ran; "
                "bootstrap 95% CI; exact McNemar p):",
                categories,
                versus["methods"],
                difference,
            )
        return lines


def _category_table(
    title: str, categories: list[str], cells: dict[str, dict], cell: Callable[[dict], str]
) -> list[str]:
    """A markdown table of one row per method and one column per category (``-`` where a method has none)."""
    lines = ["", title, "", "| method | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
    for method, by_category in cells.items():
        row = [cell(by_category[c]) if c in by_category else "-" for c in categories]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def _in_category_order(categories) -> list[str]:
    return sorted(categories, key=lambda c: CATEGORIES.index(c) if c in CATEGORIES else len(CATEGORIES))
