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

Empty counts: where neither the gold nor the plans hold any item (a single-tool record has no links), F1 is 1.0,
as the indel ratio of two empty sequences is: nothing to find and nothing claimed is a perfect answer. The same
rule holds for a record, a breakdown group and a whole method (scikit-learn's F1, which TaskBench's script calls,
would give 0 with a warning in that last case).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ...planner.generation import RouteSettings
from ...planner.schema import TaskListSpec, parse_task_list
from ...planner.tools import ToolsFileError, ToolSpec, load_tools
from ..datasets import Problem
from ..grading import Grade
from ..tables import fmt, format_p, method_label
from . import register_benchmark
from .base import Benchmark, BenchmarkPrompt, ExecLimits, chat_prompt, text_prompt

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
    """F1 of [tp, fp, fn]; 1.0 for all-zero counts (see the module's note on empty counts)."""
    tp, fp, fn = counts
    if not (tp or fp or fn):
        return 1.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# each F1 metric and the per-record counts ([tp, fp, fn]) it pools; node and edge F1 are the graph metrics that also
# get bootstrap intervals, paired differences, breakdowns and the quality score's rank agreement
COUNT_METRICS = {
    "node_f1": "node_counts",
    "edge_f1": "edge_counts",
    "arg_name_f1": "arg_name_counts",
    "arg_value_f1": "arg_value_counts",
}
GRAPH_METRICS = ("node_f1", "edge_f1")
METRICS = (*COUNT_METRICS, "edit_distance")


def pooled_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """TaskBench's metrics over ``rows`` (counts summed, then F1; edit distance 1 - mean ratio)."""
    out = {}
    for metric, key in COUNT_METRICS.items():
        out[metric] = f1(np.sum([r[key] for r in rows], axis=0)) if rows else 0.0
    out["edit_distance"] = 1.0 - float(np.mean([r["edit_ratio"] for r in rows])) if rows else 1.0
    return out


def bootstrap_metric_ci(rows: Sequence[dict], *, n_boot: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of node and edge F1, resampling records."""
    if not rows:
        return {}
    rng = np.random.default_rng(seed)
    counts = {m: np.asarray([r[COUNT_METRICS[m]] for r in rows]) for m in GRAPH_METRICS}
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
    for metric in GRAPH_METRICS:
        key = COUNT_METRICS[metric]
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


# the benchmark


@register_benchmark
class TaskBench(Benchmark):
    name = "taskbench"
    summary = "tool plans scored against gold tool graphs (give --data DIR)"
    reads_data_folder = True
    default_block_size = RouteSettings.block_size  # the planner's block: plans are short next to their bound
    plot_axis_label = "node F1 (95% bootstrap interval)"

    def load(self, data: Path | None) -> list[Problem]:
        loaded = load_data(data)
        return [
            Problem(
                task=self.name,
                problem_id=record["id"],
                index=i,
                question=record["request"],
                reference="",
                fields={"record": record, "data": loaded},
            )
            for i, record in enumerate(loaded.records)
        ]

    def data_fingerprint(self, problems: Sequence[Problem]) -> str | None:
        return problems[0].fields["data"].fingerprint

    def max_new_tokens(self, problems: Sequence[Problem]) -> int:
        """The plan grammar's bound: every admissible plan fits."""
        from ...planner.schema import max_output_tokens

        return max_output_tokens(problems[0].fields["data"].spec)

    def prompt(self, problem: Problem, model, style: str, shots: int | None) -> BenchmarkPrompt:
        from ...backends.constraints import JsonSchemaConstraint
        from ...planner.prompts import system_prompt, task_prompt
        from ...planner.schema import task_list_schema

        data = problem.fields["data"]
        system = system_prompt(data.spec)
        user = task_prompt(problem.question, data.spec, tools=data.tools)
        constraint = JsonSchemaConstraint.for_model(model, task_list_schema(data.spec))
        if style == "chat":
            prompt = chat_prompt(model, [{"role": "system", "content": system}, {"role": "user", "content": user}])
        else:
            prompt = text_prompt(model, f"{system}\n\n{user}\nJSON:", ())
        return BenchmarkPrompt(prompt.ids, (), prompt.style, prompt.text, constraint)

    def grade(self, problem: Problem, text: str, prompt: BenchmarkPrompt, limits: ExecLimits) -> Grade:
        """The plan's nodes and links, TaskBench's per-record counts, and the plan's quality score (the planner's
        default evaluator, which sees only the request, the tools and the plan)."""
        from ...planner.quality import PlanQualityEvaluator

        data, record = problem.fields["data"], problem.fields["record"]
        try:
            nodes, links = parse_plan(text, data.spec)
            valid, detail = True, f"{len(nodes)} tool calls, {len(links)} links"
        except ValueError as exc:  # json.JSONDecodeError is a ValueError: an answer cut off by the token cap
            nodes, links, valid, detail = [], [], False, f"no valid plan: {exc}"
        scores = record_scores(record["task_nodes"], record["task_links"], nodes, links, [t.name for t in data.tools])
        quality = PlanQualityEvaluator(problem.question, tools=data.tools).evaluate_text(text).score if valid else 0.0
        fields = {
            "valid": valid,
            "pred_nodes": nodes,
            "pred_links": links,
            "quality_score": quality,
            "type": record.get("type"),
            "gold_nodes": len(record["task_nodes"]),
            **scores,
        }
        return Grade(scores["exact_match"], None, detail, fields)

    def regrade(self, row: dict, problems: dict[str, Problem]) -> Grade:
        """Parsed and scored again against the record of the data given (the folder the run used)."""
        problem = problems.get(row.get("problem_id"))
        if problem is None:
            raise ConfigError(
                f"TaskBench row {row.get('problem_id')} has no record in the data given"
                + ("" if problems else " (regrading TaskBench rows needs --data, the folder they were run on)")
            )
        return self.grade(problem, row["text"], None, ExecLimits())

    def answer_extractor(self, problem: Problem):
        """A plan's tool calls and links, in a canonical order."""
        spec = problem.fields["data"].spec

        def plan_answer(text: str) -> str | None:
            try:
                nodes, links = parse_plan(text, spec)
            except ValueError:
                return None
            calls = sorted(f"{n['task']}({sorted((a['name'], a['value']) for a in n['arguments'])})" for n in nodes)
            return " ; ".join(calls) + " | " + " ; ".join(sorted(f"{x['source']}>{x['target']}" for x in links))

        return plan_answer

    def quality_evaluator(self, problem: Problem):
        """The planner's default tool-plan evaluator: it sees the request, the tools and the plan, never the gold
        graph."""
        from ...planner.quality import PlanQualityEvaluator

        return PlanQualityEvaluator(problem.question, tools=problem.fields["data"].tools)

    def add_metrics(self, summary: dict, by_method: dict[str, dict[str, dict]], *, n_boot: int) -> None:
        add_plan_metrics(summary, by_method, n_boot=min(n_boot, 2000))

    def method_table(self, summary: dict) -> list[str]:
        return plan_tables(summary)

    def notes(self, summary: dict) -> list[str]:
        return []

    def comparison_tables(self, summary: dict, n_boot: int) -> list[str]:
        lines = [
            "",
            "(acc: exact graph match, the node set and the link set both equal to the gold ones)",
            "",
            "| A | B | node F1 B - A (95% CI, p) | edge F1 B - A (95% CI, p) |",
            "|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            cells = []
            for metric in GRAPH_METRICS:
                d = c[f"{metric}_difference_b_minus_a"]
                lo, hi = d["ci95"]
                cells.append(f"{d['difference']:+.3f} ({lo:+.3f} .. {hi:+.3f}, p {format_p(d['p'], n_boot)})")
            lines.append(f"| {c['a']} | {c['b']} | " + " | ".join(cells) + " |")
        return lines

    def plot_point(self, entry: dict) -> tuple[float, float, float]:
        y = entry["node_f1"]
        low, high = entry["ci95_f1"].get("node_f1", (y, y))
        return y, low, high

    curve_metric_name = "node F1"

    def curve_metric(self, graded: Sequence[dict]) -> tuple[float, float, float]:
        if not graded:
            return 0.0, 0.0, 1.0
        low, high = bootstrap_metric_ci(graded)["node_f1"]
        return f1(np.sum([g[COUNT_METRICS["node_f1"]] for g in graded], axis=0)), low, high

    def curve_difference(self, reference: Sequence[dict], graded: Sequence[dict]) -> dict:
        return paired_metric_difference(reference, graded)["node_f1"]


# report


def add_plan_metrics(summary: dict, by_method: dict[str, dict[str, dict]], *, n_boot: int) -> None:
    """TaskBench's graph metrics per method (with breakdowns by record type and gold plan size), paired
    differences of node and edge F1, and how the plans' quality score ranks against their node and edge F1."""
    from scipy.stats import spearmanr

    for method, rows_by_id in by_method.items():
        rows = list(rows_by_id.values())
        entry = summary["methods"][method]
        entry.update(pooled_metrics(rows))
        entry["ci95_f1"] = bootstrap_metric_ci(rows, n_boot=n_boot)
        entry["valid_rate"] = float(np.mean([bool(r["valid"]) for r in rows])) if rows else None
        entry["mean_quality_score"] = float(np.mean([r["quality_score"] for r in rows])) if rows else None
        for key, group in (
            ("by_type", lambda r: str(r.get("type"))),
            ("by_gold_nodes", lambda r: str(r.get("gold_nodes"))),
        ):
            groups: dict[str, list[dict]] = {}
            for r in rows:
                groups.setdefault(group(r), []).append(r)
            entry[key] = {name: _group_f1(g) for name, g in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))}
    for comparison in summary["comparisons"]:
        a, b = by_method[comparison["a"]], by_method[comparison["b"]]
        common = sorted(set(a) & set(b))
        comparison.update(
            {
                f"{metric}_difference_b_minus_a": value
                for metric, value in paired_metric_difference(
                    [a[p] for p in common], [b[p] for p in common], n_boot=n_boot
                ).items()
            }
        )
    plans = [r for rows_by_id in by_method.values() for r in rows_by_id.values() if r.get("valid")]

    if len(plans) >= 3:
        quality = [r["quality_score"] for r in plans]

        def rho(key: str) -> float | None:  # undefined (None) when either side is constant
            truth = [f1(r[key]) for r in plans]
            if len(set(quality)) < 2 or len(set(truth)) < 2:
                return None
            return float(spearmanr(quality, truth).statistic)

        summary["quality_score_spearman"] = {"plans": len(plans)} | {
            metric: rho(COUNT_METRICS[metric]) for metric in GRAPH_METRICS
        }
        summary["quality_score_within_record"] = _within_record_agreement(plans)


def _within_record_agreement(plans: list[dict]) -> dict:
    """What selecting by the quality score relies on: among two plans for the same record that differ in both
    quality score and F1, how often the higher-scored one has the higher F1 (0.5 is chance)."""
    by_record: dict[str, list[dict]] = {}
    for r in plans:
        by_record.setdefault(r["problem_id"], []).append(r)
    out = {}
    for metric in GRAPH_METRICS:
        key = COUNT_METRICS[metric]
        agree = pairs = 0
        for rows in by_record.values():
            for i, a in enumerate(rows):
                for b in rows[i + 1 :]:
                    dq, df = a["quality_score"] - b["quality_score"], f1(a[key]) - f1(b[key])
                    if dq and df:
                        pairs += 1
                        agree += (dq > 0) == (df > 0)
        out[metric] = {"pairs": pairs, "agreement": agree / pairs if pairs else None}
    return out


def _group_f1(rows: list[dict]) -> dict:
    """Node and edge F1 of one breakdown group."""
    out: dict = {"records": len(rows)}
    for metric in GRAPH_METRICS:
        counts = np.sum([r[COUNT_METRICS[metric]] for r in rows], axis=0)
        out[metric] = f1(counts)
    return out


def plan_tables(summary: dict) -> list[str]:
    """TaskBench's graph metrics per method, the breakdowns, and the quality score against the truth."""

    def ci(entry: dict, metric: str) -> str:
        low, high = entry.get("ci95_f1", {}).get(metric, (None, None))
        return f"{entry[metric]:.3f} ({low:.2f}-{high:.2f})" if low is not None else f"{entry[metric]:.3f}"

    lines = [
        "| method | records | valid | node F1 (95% CI) | edge F1 (95% CI) | t-F1 | v-F1 | edit distance | exact graph "
        "match | quality score | decoded tokens / record | token cost x sample | wall s / record | time x sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, e in summary["methods"].items():
        name = method_label(m, e)
        lines.append(
            f"| {name} | {e['problems']} | {fmt(e.get('valid_rate'), '.0%')} | {ci(e, 'node_f1')} | "
            f"{ci(e, 'edge_f1')} | {e['arg_name_f1']:.3f} | {e['arg_value_f1']:.3f} | {e['edit_distance']:.3f} | "
            f"{e['correct']}/{e['problems']} | {fmt(e.get('mean_quality_score'), '.2f')} | "
            f"{fmt(e['mean_tokens_decoded'])} | {fmt(e.get('token_cost_vs_sample'), '.2f')} | "
            f"{fmt(e['mean_wall_s'], '.2f')} | {fmt(e.get('time_cost_vs_sample'), '.2f')} |"
        )
    for key, title in (("by_type", "record type"), ("by_gold_nodes", "gold plan size (nodes)")):
        groups = list(dict.fromkeys(g for e in summary["methods"].values() for g in e.get(key, {})))
        lines += [
            "",
            f"Node F1 / edge F1 by {title} (records; 1.00 where the group has no gold and no predicted links):",
            "",
            "| method | " + " | ".join(groups) + " |",
            "|---|" + "---|" * len(groups),
        ]
        for m, e in summary["methods"].items():
            cells = []
            for g in groups:
                v = e.get(key, {}).get(g)
                cells.append(
                    f"{fmt(v['node_f1'], '.2f', 'n/a')} / {fmt(v['edge_f1'], '.2f', 'n/a')} ({v['records']})"
                    if v
                    else "-"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    rho = summary.get("quality_score_spearman")
    if rho:
        lines += [
            "",
            f"Quality score against the truth, over {rho['plans']} valid plans: Spearman rho "
            f"{fmt(rho['node_f1'], '+.2f', 'n/a')} with the plan's node F1, "
            f"{fmt(rho['edge_f1'], '+.2f', 'n/a')} with its edge F1.",
        ]
    within = summary.get("quality_score_within_record")
    if within:
        cells = [
            f"{name} F1 {fmt(within[m]['agreement'], '.0%')} of {within[m]['pairs']} pairs"
            for m, name in (("node_f1", "node"), ("edge_f1", "edge"))
        ]
        lines += [
            "",
            "Two plans for the same record that differ in quality score and in F1: the higher-scored plan has the "
            f"higher {' and '.join(cells)} (50% is chance).",
        ]
    return lines
