"""The default plan quality evaluator: a score in [0, 1] with a per-criterion breakdown.

Criteria (weights in ``DEFAULT_WEIGHTS``):

* structure: the output parses into tasks with the required fields; every sibling group has 2-10 tasks; the
  descriptions are meaningful (at least three words, letters, not just an id);
* dependencies: no dangling reference and no cycle (otherwise 0), minus penalties for redundant transitive edges
  and for a sibling group of three or more forced into one chain (independent work serialized);
* coverage: share of the request's content words that some task description mentions (crude stemming);
* duplication: share of tasks that are not near-duplicates of another (word-set Jaccard >= 0.8).

These are heuristics for ranking candidate plans and for monitoring, not a measure of truth: a plan can score well
and still be wrong. Any callable ``text -> float`` can replace the evaluator.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import networkx as nx

from .dag import TaskDAG

DEFAULT_WEIGHTS: dict[str, float] = {"structure": 0.3, "dependencies": 0.25, "coverage": 0.25, "duplication": 0.2}
MIN_TASKS_PER_LEVEL, MAX_TASKS_PER_LEVEL = 2, 10

_STOPWORDS = frozenset("""a an the and or but if then else of to in on at by for with from into onto over under about
as is are was were be been being it its this that these those there their them they we our us you your i me my he she
his her not no do does did done can could should would will shall may might must have has had so such than too very
just also all any each every some more most other own same only both few many much how what when where which who whom
why please make need needs want let get use using via per up out off""".split())


@dataclass
class QualityReport:
    score: float
    breakdown: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "breakdown": dict(self.breakdown), "details": dict(self.details)}


def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ letters minus stopwords, cut to a 5-letter stem so 'planning' meets 'plans'."""
    return {w[:5] for w in re.findall(r"[a-z][a-z0-9]{2,}", text.lower()) if w not in _STOPWORDS}


class PlanQualityEvaluator:
    """Scores plans. ``evaluator(text)`` scores a model output ``{"tasks": [...]}`` against the bound request
    (``for_request``); ``evaluate_dag`` and ``evaluate_tasks`` return the full report."""

    def __init__(self, request: str = "", weights: Mapping[str, float] | None = None) -> None:
        self.request = request
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative, sum > 0, keys among {sorted(DEFAULT_WEIGHTS)}")

    def for_request(self, request: str) -> "PlanQualityEvaluator":
        return PlanQualityEvaluator(request, self.weights)

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
        required_ok = [isinstance(t, dict) and "id" in t and isinstance(t.get("description"), str)
                       and t["description"].strip() != "" for t in tasks]
        if not all(required_ok):
            return self._zero(f"{required_ok.count(False)} task(s) miss an id or a description")
        tasks = [dict(t, id=str(t["id"]), dependencies=[str(d) for d in t.get("dependencies") or []],
                      parent=None if t.get("parent") is None else str(t["parent"])) for t in tasks]
        details: dict[str, Any] = {}
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
        return len(words) >= 3 and len(text) >= 12 and text.lower() != str(task["id"]).lower()

    def _dependencies(self, tasks: list[dict], details: dict) -> float:
        ids = [t["id"] for t in tasks]
        known = set(ids)
        dangling = sorted({d for t in tasks for d in t["dependencies"] if d not in known})
        graph = nx.DiGraph()
        graph.add_nodes_from(ids)
        graph.add_edges_from((d, t["id"]) for t in tasks for d in t["dependencies"] if d in known)
        if dangling or len(set(ids)) != len(ids) or not nx.is_directed_acyclic_graph(graph):
            details["dependency_problem"] = ("dangling: " + ", ".join(dangling)) if dangling else (
                "duplicate ids" if len(set(ids)) != len(ids) else "cycle")
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

    def _zero(self, reason: str) -> QualityReport:
        return QualityReport(0.0, {k: 0.0 for k in DEFAULT_WEIGHTS}, {"invalid": reason})
