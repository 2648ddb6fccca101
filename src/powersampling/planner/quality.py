"""The default plan quality evaluator: a score in [0, 1] with a per-criterion breakdown.

Criteria (weights in ``DEFAULT_WEIGHTS``):

* structure: the output parses into tasks with the required fields; every sibling group has 2-10 tasks; the
  descriptions are meaningful (at least three words, not just an id, and at least 80% of their tokens read as
  words: 'shop/black.com/createPlum:Jav5' does not);
* dependencies: no dangling reference and no cycle (otherwise 0), minus penalties for redundant transitive edges
  and for a sibling group of three or more forced into one chain (independent work serialized);
* coverage: share of the request's content words that some task description mentions (crude stemming);
* duplication: share of tasks that are not near-duplicates of another (word-set Jaccard >= 0.8).

With a tool vocabulary (``tools=``) the criteria are those of a tool plan (weights in ``TOOL_WEIGHTS``):

* tool_relevance: share of calls whose tool's name or description shares a content word with the request;
* argument_grounding: mean share of each argument value's words and numbers that the request contains;
* coverage: share of the request's content words accounted for by the calls (tools and argument values);
* description_grounding: share of the task descriptions' words that come from the request, the tool or its
  arguments, times the share of their tokens that read as words (gibberish scores low on both);
* duplication: share of calls that do not repeat an earlier call with the same arguments.

These are heuristics for ranking candidate plans and for monitoring; how far they track the truth is measured on
TaskBench's gold plans (docs/evaluation.md). Any callable ``text -> float`` can replace the evaluator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .dag import TaskDAG
from .tools import ToolSpec

DEFAULT_WEIGHTS: dict[str, float] = {"structure": 0.3, "dependencies": 0.25, "coverage": 0.25, "duplication": 0.2}
# tool plans: whether each call is asked for and grounded in the request replaces the free-text criteria
TOOL_WEIGHTS: dict[str, float] = {
    "tool_relevance": 0.35,
    "argument_grounding": 0.25,
    "coverage": 0.2,
    "description_grounding": 0.1,
    "duplication": 0.1,
}
MIN_TASKS_PER_LEVEL, MAX_TASKS_PER_LEVEL = 2, 10

_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "then",
        "else",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "their",
        "them",
        "they",
        "we",
        "our",
        "us",
        "you",
        "your",
        "i",
        "me",
        "my",
        "he",
        "she",
        "his",
        "her",
        "not",
        "no",
        "do",
        "does",
        "did",
        "done",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "have",
        "has",
        "had",
        "so",
        "such",
        "than",
        "too",
        "very",
        "just",
        "also",
        "all",
        "any",
        "each",
        "every",
        "some",
        "more",
        "most",
        "other",
        "own",
        "same",
        "only",
        "both",
        "few",
        "many",
        "much",
        "how",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "please",
        "make",
        "need",
        "needs",
        "want",
        "let",
        "get",
        "use",
        "using",
        "via",
        "per",
        "up",
        "out",
        "off",
    ]
)


@dataclass
class QualityReport:
    score: float
    breakdown: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "breakdown": dict(self.breakdown), "details": dict(self.details)}


_WORDLIKE = re.compile(
    r"^[(\"']?(?:[A-Za-z][a-z]*(?:[-'][A-Za-z][a-z]*)*|[A-Z]{2,}s?|[0-9][0-9:./,-]*(?:am|pm|AM|PM)?)"
    r"[)\"'.,;:!?]*$"
)


def wordlike_share(text: str) -> float:
    """Share of the whitespace-separated tokens that read as words or numbers: 'Book the flight to Rome' is 1.0,
    'shop/black.com/createPlum:Jav5' (slashes, dots and case changes inside a token, letters fused with digits)
    is 0.0."""
    tokens = text.split()
    return sum(bool(_WORDLIKE.match(t)) for t in tokens) / len(tokens) if tokens else 0.0


def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ letters minus stopwords, cut to a 5-letter stem so 'planning' meets 'plans'."""
    return {w[:5] for w in re.findall(r"[a-z][a-z0-9]{2,}", text.lower()) if w not in _STOPWORDS}


class PlanQualityEvaluator:
    """Scores plans. ``evaluator(text)`` scores a model output ``{"tasks": [...]}`` against the bound request
    (``for_request``); ``evaluate_dag`` and ``evaluate_tasks`` return the full report."""

    def __init__(
        self, request: str = "", weights: Mapping[str, float] | None = None, *, tools: Sequence[ToolSpec] | None = None
    ) -> None:
        self.request = request
        self.tools = {t.name: t for t in tools} if tools else None
        criteria = TOOL_WEIGHTS if self.tools else DEFAULT_WEIGHTS
        self.weights = dict(weights or criteria)
        unknown = set(self.weights) - set(criteria)
        if unknown or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative, sum > 0, keys among {sorted(criteria)}")

    def for_request(self, request: str) -> PlanQualityEvaluator:
        return PlanQualityEvaluator(request, self.weights, tools=list(self.tools.values()) if self.tools else None)

    def __call__(self, text: str) -> float:
        return self.evaluate_text(text).score

    def evaluate_text(self, text: str) -> QualityReport:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            return self._zero("output is not valid JSON")
        tasks = data.get("tasks") if isinstance(data, dict) else None
        if not isinstance(tasks, list) or not tasks:
            return self._zero("output has no non-empty 'tasks' list")
        return self.evaluate_tasks(tasks)

    def evaluate_dag(self, dag: TaskDAG) -> QualityReport:
        return self.for_request(dag.request).evaluate_tasks([t.to_dict() for t in dag.tasks])

    def evaluate_tasks(self, tasks: Sequence[Any]) -> QualityReport:
        required_ok = [
            isinstance(t, dict)
            and "id" in t
            and isinstance(t.get("description"), str)
            and t["description"].strip() != ""
            for t in tasks
        ]
        if not all(required_ok):
            return self._zero(f"{required_ok.count(False)} task(s) miss an id or a description")
        tasks = [
            dict(
                t,
                id=str(t["id"]),
                dependencies=[str(d) for d in t.get("dependencies") or []],
                parent=None if t.get("parent") is None else str(t["parent"]),
            )
            for t in tasks
        ]
        details: dict[str, Any] = {}
        if self.tools:
            return self._tool_plan(tasks, details)
        breakdown = {
            "structure": self._structure(tasks, details),
            "dependencies": self._dependencies(tasks, details),
            "coverage": self._coverage(tasks, details),
            "duplication": self._duplication(tasks, details),
        }
        total = sum(self.weights.values())
        score = sum(self.weights[k] * v for k, v in breakdown.items() if k in self.weights) / total
        return QualityReport(round(score, 6), breakdown, details)

    # criteria

    def _structure(self, tasks: list[dict], details: dict) -> float:
        groups: dict[str | None, int] = {}
        for t in tasks:
            groups[t["parent"]] = groups.get(t["parent"], 0) + 1
        sized = [MIN_TASKS_PER_LEVEL <= n <= MAX_TASKS_PER_LEVEL for n in groups.values()]
        meaningful = [self._meaningful(t) for t in tasks]
        details["sibling_group_sizes"] = list(groups.values())
        details["vague_descriptions"] = [t["id"] for t, ok in zip(tasks, meaningful) if not ok]
        return (sum(sized) / len(sized) + sum(meaningful) / len(meaningful)) / 2

    @staticmethod
    def _meaningful(task: dict) -> bool:
        text = task["description"].strip()
        words = re.findall(r"[A-Za-z]{2,}", text)
        return (
            len(words) >= 3
            and len(text) >= 12
            and text.lower() != str(task["id"]).lower()
            and wordlike_share(text) >= 0.8
        )

    def _dependencies(self, tasks: list[dict], details: dict) -> float:
        ids = [t["id"] for t in tasks]
        known = set(ids)
        dangling = sorted({d for t in tasks for d in t["dependencies"] if d not in known})
        graph = nx.DiGraph()
        graph.add_nodes_from(ids)
        graph.add_edges_from((d, t["id"]) for t in tasks for d in t["dependencies"] if d in known)
        if dangling or len(set(ids)) != len(ids) or not nx.is_directed_acyclic_graph(graph):
            details["dependency_problem"] = (
                ("dangling: " + ", ".join(dangling))
                if dangling
                else ("duplicate ids" if len(set(ids)) != len(ids) else "cycle")
            )
            return 0.0
        edges = graph.number_of_edges()
        redundant = edges - nx.transitive_reduction(graph).number_of_edges() if edges else 0
        chained_groups = 0
        by_parent: dict[str | None, list[str]] = {}
        for t in tasks:
            by_parent.setdefault(t["parent"], []).append(t["id"])
        for siblings in by_parent.values():
            if len(siblings) >= 3:
                sub = graph.subgraph(siblings)
                if nx.dag_longest_path_length(sub) == len(siblings) - 1:
                    chained_groups += 1
        details["redundant_edges"] = redundant
        details["fully_chained_groups"] = chained_groups
        score = 1.0 - 0.5 * (redundant / edges if edges else 0.0) - 0.3 * (chained_groups / len(by_parent))
        return max(0.0, score)

    def _coverage(self, tasks: list[dict], details: dict) -> float:
        wanted = content_words(self.request)
        if not wanted:
            return 1.0
        said = set().union(*(content_words(t["description"]) for t in tasks))
        missing = sorted(wanted - said)
        details["uncovered_request_words"] = missing
        return 1.0 - len(missing) / len(wanted)

    def _duplication(self, tasks: list[dict], details: dict) -> float:
        words = [content_words(t["description"]) or {t["description"].strip().lower()} for t in tasks]
        duplicated = set()
        for i in range(len(tasks)):
            for j in range(i + 1, len(tasks)):
                union = words[i] | words[j]
                if union and len(words[i] & words[j]) / len(union) >= 0.8:
                    duplicated.update((tasks[i]["id"], tasks[j]["id"]))
        details["near_duplicates"] = sorted(duplicated)
        return 1.0 - len(duplicated) / len(tasks)

    # tool plans

    def _tool_plan(self, tasks: list[dict], details: dict) -> QualityReport:
        calls = []
        for t in tasks:
            call = t.get("call") if isinstance(t.get("call"), dict) else t
            tool = self.tools.get(call.get("tool")) if self.tools else None
            if tool is None:
                return self._zero(f"task {t['id']} does not call a listed tool")
            arguments = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}
            calls.append((tool, {k: str(v) for k, v in arguments.items()}))
        request = content_words(self.request)
        breakdown = {
            "tool_relevance": self._tool_relevance(calls, request, details),
            "argument_grounding": self._argument_grounding(calls, request, details),
            "coverage": self._call_coverage(calls, request, details),
            "description_grounding": self._description_grounding(tasks, calls, request, details),
            "duplication": 1.0 - self._repeated_calls(calls, details) / len(calls),
        }
        total = sum(self.weights.values())
        score = sum(self.weights[k] * v for k, v in breakdown.items() if k in self.weights) / total
        return QualityReport(round(score, 6), breakdown, details)

    @staticmethod
    def _tool_words(tool: ToolSpec) -> set[str]:
        return content_words(tool.name.replace("_", " ") + " " + tool.description)

    def _tool_relevance(self, calls, request: set[str], details: dict) -> float:
        """Share of calls whose tool (name or description) shares a content word with the request."""
        unasked = [tool.name for tool, _ in calls if not self._tool_words(tool) & request]
        details["tools_not_in_request"] = unasked
        return 1.0 - len(unasked) / len(calls)

    def _argument_grounding(self, calls, request: set[str], details: dict) -> float:
        """Mean share of each argument value's words and numbers found in the request."""
        known = request | set(re.findall(r"[0-9]+", self.request))
        shares, ungrounded = [], []
        for tool, arguments in calls:
            for name, value in arguments.items():
                words = content_words(value) | set(re.findall(r"[0-9]+", value))
                if not words:
                    continue
                shares.append(len(words & known) / len(words))
                if shares[-1] < 0.5:
                    ungrounded.append(f"{tool.name}.{name}")
        details["ungrounded_arguments"] = ungrounded
        return float(sum(shares) / len(shares)) if shares else 1.0

    def _call_coverage(self, calls, request: set[str], details: dict) -> float:
        """Share of the request's content words that the calls account for (their tools and argument values)."""
        if not request:
            return 1.0
        said = set().union(*(self._tool_words(tool) | content_words(" ".join(args.values())) for tool, args in calls))
        missing = sorted(request - said)
        details["uncovered_request_words"] = missing
        return 1.0 - len(missing) / len(request)

    def _description_grounding(self, tasks, calls, request: set[str], details: dict) -> float:
        """Share of description words that come from the request, the task's tool or its arguments: a description
        made of words from nowhere (gibberish) scores low."""
        shares = []
        for task, (tool, arguments) in zip(tasks, calls):
            description = task.get("description", "")
            words = content_words(description)
            known = request | self._tool_words(tool) | content_words(" ".join(arguments.values()))
            shares.append(wordlike_share(description) * (len(words & known) / len(words) if words else 0.0))
        details["description_grounding"] = shares
        return float(sum(shares) / len(shares)) if shares else 0.0

    @staticmethod
    def _repeated_calls(calls, details: dict) -> int:
        seen, repeated = set(), 0
        for tool, arguments in calls:
            key = (tool.name, tuple(sorted(arguments.items())))
            repeated += key in seen
            seen.add(key)
        details["repeated_calls"] = repeated
        return repeated

    def _zero(self, reason: str) -> QualityReport:
        return QualityReport(0.0, {k: 0.0 for k in self.weights}, {"invalid": reason})
