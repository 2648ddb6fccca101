"""TaskBench (Shen et al., arXiv 2311.18760) as a task of the evaluation harness: the planner's tool plans scored
against gold tool graphs with TaskBench's own metrics.

Data folder (``--data DIR``): ``tools.json`` (TaskBench's tool_desc format), exactly one records file ``*.jsonl``
(fields ``id``, ``type``, ``instruction``, ``task_nodes``, ``task_links``) and optionally the matching
``*_user_requests.jsonl`` (``id``, ``user_request``). As in TaskBench's own inference, the model sees the
``user_request`` when there is one and the ``instruction`` otherwise.

Each record is planned in one grammar-constrained call in the planner's tool format (``planner.prompts``,
``planner.schema``): every task calls a listed tool with exactly that tool's parameters, and dependencies point to
earlier tasks only. Predicted nodes are the tasks' tools and arguments; predicted links are (dependency's tool,
task's tool).

Metrics, as TaskBench's ``evaluate.py`` defines them for this domain (links read from ``task_links``), pooled over
records: node F1 over per-record sets of tool names (names not in tools.json count on neither side; micro average),
edge F1 over per-record sets of (source, target) pairs, t-F1 over sets of ``tool-argname`` strings, v-F1 over sets
of ``tool-argname-value`` strings, and the normalized edit distance 1 - mean Levenshtein ratio of the tool-id
sequences (ratio = 2 * LCS / total length, the indel similarity ``Levenshtein.ratio`` computes; unknown names are
id 0). A record's ``correct`` is an exact match of its node set and link set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..planner.schema import TaskListSpec, parse_task_list
from ..planner.tools import ToolsFileError, ToolSpec, load_tools

MAX_TASKS = 8  # the longest gold plan in the Daily Life APIs data has 8 nodes


@dataclass(frozen=True)
class TaskBenchData:
    folder: Path
    tools: tuple[ToolSpec, ...]
    records: list[dict]  # each with "request" added
    fingerprint: str  # sha256 of the files read, so a resumed run is refused on other data

    @property
    def spec(self) -> TaskListSpec:
        return TaskListSpec(
            min_tasks=1,
            max_tasks=MAX_TASKS,
            max_dependencies=MAX_TASKS - 1,
            tools=self.tools,
            ask_atomic=False,
            count_first=True,
        )


def load_data(folder: str | Path | None) -> TaskBenchData:
    """Read and check a TaskBench folder; every problem is a one-line ``ConfigError`` naming the file and line."""
    if folder is None:
        raise ConfigError("the taskbench task needs --data DIR (a folder with tools.json and a records *.jsonl)")
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--data {root} is not a folder")
    try:
        tools = load_tools(root / "tools.json")
    except ToolsFileError as exc:
        raise ConfigError(str(exc)) from None
    records_files = sorted(p for p in root.glob("*.jsonl") if not p.name.endswith("_user_requests.jsonl"))
    if len(records_files) != 1:
        found = ", ".join(p.name for p in records_files) or "none"
        raise ConfigError(
            f"{root} must hold exactly one records file *.jsonl besides *_user_requests.jsonl (found: {found})"
        )
    records_path = records_files[0]
    requests_path = records_path.with_name(records_path.stem + "_user_requests.jsonl")
    digest = hashlib.sha256((root / "tools.json").read_bytes())
    records = [_check_record(r, records_path, line) for line, r in _read_jsonl(records_path, digest)]
    if not records:
        raise ConfigError(f"{records_path} holds no records")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{records_path}: record ids repeat")
    requests: dict[str, str] = {}
    if requests_path.is_file():
        for line, item in _read_jsonl(requests_path, digest):
            if not isinstance(item.get("id"), str) or not isinstance(item.get("user_request"), str):
                raise ConfigError(f'{requests_path} line {line}: expected {{"id": str, "user_request": str}}')
            requests[item["id"]] = item["user_request"]
    for record in records:
        record["request"] = requests.get(record["id"]) or record["instruction"]
    return TaskBenchData(root, tools, records, digest.hexdigest()[:16])


def _read_jsonl(path: Path, digest) -> Iterable[tuple[int, dict]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    digest.update(data)
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} line {line_no}: not a valid JSON line ({exc})") from None
        if not isinstance(item, dict):
            raise ConfigError(f"{path} line {line_no}: not a JSON object")
        yield line_no, item


def _check_record(record: dict, path: Path, line: int) -> dict:
    where = f"{path} line {line}"
    for key, kind in (("id", str), ("instruction", str), ("task_nodes", list), ("task_links", list)):
        if not isinstance(record.get(key), kind):
            raise ConfigError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    for node in record["task_nodes"]:
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("task"), str)
            or not isinstance(node.get("arguments", []), list)
        ):
            raise ConfigError(f'{where}: a task node is not {{"task": str, "arguments": [...]}}')
    for link in record["task_links"]:
        if (
            not isinstance(link, dict)
            or not isinstance(link.get("source"), str)
            or not isinstance(link.get("target"), str)
        ):
            raise ConfigError(f'{where}: a task link is not {{"source": str, "target": str}}')
    return dict(record)


# prediction


def parse_plan(text: str, spec: TaskListSpec) -> tuple[list[dict], list[dict]]:
    """TaskBench nodes (``task``, ``arguments`` as name/value pairs, and the description) and links from the
    planner's tool-plan JSON. ``ValueError`` when it does not parse or validate."""
    items = parse_task_list(text, spec)
    nodes = [
        {
            "task": item["tool"],
            "arguments": [{"name": k, "value": v} for k, v in item["arguments"].items()],
            "description": item["description"],
        }
        for item in items
    ]
    links = [{"source": items[d - 1]["tool"], "target": item["tool"]} for item in items for d in item["dependencies"]]
    return nodes, links


# metrics


def _argument_pairs(nodes: Sequence[dict]) -> tuple[set[str], set[str]]:
    names, values = set(), set()
    for node in nodes:
        for argument in node.get("arguments") or []:
            if isinstance(argument, dict) and "name" in argument:
                names.add(f"{node['task']}-{argument['name']}")
                values.add(f"{node['task']}-{argument['name']}-{argument.get('value')}")
    return names, values


def _counts(gold: set, predicted: set) -> list[int]:
    return [len(gold & predicted), len(predicted - gold), len(gold - predicted)]


def indel_ratio(a: Sequence[Any], b: Sequence[Any]) -> float:
    """2 * LCS(a, b) / (len(a) + len(b)); 1.0 for two empty sequences."""
    if not a and not b:
        return 1.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return 2.0 * previous[-1] / (len(a) + len(b))


def record_scores(
    gold_nodes: Sequence[dict],
    gold_links: Sequence[dict],
    nodes: Sequence[dict],
    links: Sequence[dict],
    tool_names: Sequence[str],
) -> dict[str, Any]:
    """One record's counts ([tp, fp, fn]) for nodes, links, argument names and values, its edit ratio, and whether
    the graph matches exactly."""
    known = {name: i + 1 for i, name in enumerate(tool_names)}
    gold_tools = {n["task"] for n in gold_nodes}
    tools = {n["task"] for n in nodes}
    gold_pairs = {(link["source"], link["target"]) for link in gold_links}
    pairs = {(link["source"], link["target"]) for link in links}
    gold_names, gold_values = _argument_pairs(gold_nodes)
    names, values = _argument_pairs(nodes)
    return {
        "node_counts": _counts(gold_tools & known.keys(), tools & known.keys()),
        "edge_counts": _counts(gold_pairs, pairs),
        "arg_name_counts": _counts(gold_names, names),
        "arg_value_counts": _counts(gold_values, values),
        "edit_ratio": indel_ratio(
            [known.get(n["task"], 0) for n in nodes], [known.get(n["task"], 0) for n in gold_nodes]
        ),
        "exact_match": tools == gold_tools and pairs == gold_pairs,
    }


def f1(counts: Sequence[int]) -> float:
    tp, fp, fn = counts
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


METRICS = ("node_f1", "edge_f1", "arg_name_f1", "arg_value_f1", "edit_distance")


def pooled_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """TaskBench's metrics over ``rows`` (counts summed, then F1; edit distance 1 - mean ratio)."""
    out = {}
    for metric, key in (
        ("node_f1", "node_counts"),
        ("edge_f1", "edge_counts"),
        ("arg_name_f1", "arg_name_counts"),
        ("arg_value_f1", "arg_value_counts"),
    ):
        out[metric] = f1(np.sum([r[key] for r in rows], axis=0)) if rows else 0.0
    out["edit_distance"] = 1.0 - float(np.mean([r["edit_ratio"] for r in rows])) if rows else 1.0
    return out


def bootstrap_metric_ci(rows: Sequence[dict], *, n_boot: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of node and edge F1, resampling records."""
    if not rows:
        return {}
    rng = np.random.default_rng(seed)
    counts = {m: np.asarray([r[k] for r in rows]) for m, k in (("node_f1", "node_counts"), ("edge_f1", "edge_counts"))}
    out = {}
    for metric, array in counts.items():
        idx = rng.integers(0, len(rows), size=(n_boot, len(rows)))
        sums = array[idx].sum(axis=1)
        values = [f1(s) for s in sums]
        out[metric] = [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]
    return out


def paired_metric_difference(
    rows_a: Sequence[dict], rows_b: Sequence[dict], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """B - A of node and edge F1 over the same records, with a paired bootstrap 95% interval and two-sided p."""
    out = {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows_a), size=(n_boot, len(rows_a)))
    for metric, key in (("node_f1", "node_counts"), ("edge_f1", "edge_counts")):
        a, b = np.asarray([r[key] for r in rows_a]), np.asarray([r[key] for r in rows_b])
        observed = f1(b.sum(axis=0)) - f1(a.sum(axis=0))
        boots = np.array([f1(sb) - f1(sa) for sa, sb in zip(a[idx].sum(axis=1), b[idx].sum(axis=1))])
        p = min(1.0, 2 * min(float(np.mean(boots <= 0)), float(np.mean(boots >= 0))))
        out[metric] = {
            "difference": observed,
            "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "p": p,
        }
    return out
