"""Planning benchmark on TaskBench-format data: node F1 over tool names and edge F1 over dependency links, per route.

Data (TaskBench, arXiv 2311.18760, e.g. its daily-life APIs split): a folder with
  * records as JSON lines (``data.jsonl``, ``data.json`` or any ``*.jsonl``): ``{"id", "instruction"
    (or "user_request"), "task_nodes": [{"task": tool, "arguments": [...]}], "task_links": [{"source": tool,
    "target": tool}]}``;
  * the tool list (``tool_desc.json`` as ``{"nodes": [{"id": name, "desc": ...}]}``, or ``tools.json`` as a list of
    names or of ``{"id"|"name": ...}``).

Each instruction is planned with ``max_depth=1`` and the tools as a closed vocabulary (a grammar enum), so every
task names one tool. Predicted nodes are the tasks' tools; predicted links are (dependency's tool, task's tool).

Metrics follow TaskBench's evaluate.py: per record, the gold and predicted name sets are compared (union-flattened),
true/false positives and negatives are summed over all records, and F1 is the micro average (nodes) / binary F1
(links) of those sums. Names have ``_`` replaced by spaces on both sides, as TaskBench does.

Usage:
  python benchmarks/taskbench_planning.py --data ../shared/data/taskbench --routes baseline,power --limit 20
Writes ``taskbench_planning.json`` and ``taskbench_planning.md`` to ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "taskbench"


@dataclass
class Record:
    id: str
    instruction: str
    nodes: list[str]
    links: list[tuple[str, str]]


def _norm(name: str) -> str:
    return name.replace("_", " ").strip()


def load_tools(folder: Path) -> list[str]:
    for name in ("tool_desc.json", "tools.json", "tool_list.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            items = data.get("nodes", data.get("tools")) if isinstance(data, dict) else data
            names = [item if isinstance(item, str) else item.get("id") or item.get("name") for item in items]
            return [n for n in names if n]
    raise FileNotFoundError(f"no tool list (tool_desc.json or tools.json) in {folder}")


def load_records(folder: Path) -> list[Record]:
    candidates = [folder / "data.jsonl", folder / "data.json"] + sorted(folder.glob("*.jsonl"))
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no records (data.jsonl, data.json or *.jsonl) in {folder}")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        raw = json.loads(line)
        instruction = raw.get("instruction") or raw.get("user_request")
        if not instruction:
            raise ValueError(f"{path}:{line_no}: record without instruction")
        nodes = [_norm(n["task"]) for n in raw.get("task_nodes", [])]
        links = [(_norm(link["source"]), _norm(link["target"])) for link in raw.get("task_links", [])]
        records.append(Record(str(raw.get("id", line_no)), instruction, nodes, links))
    return records


def prf(counts: dict[str, int]) -> dict[str, float]:
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def add_counts(counts: dict[str, int], gold: Iterable, predicted: Iterable) -> None:
    gold, predicted = set(gold), set(predicted)
    counts["tp"] += len(gold & predicted)
    counts["fp"] += len(predicted - gold)
    counts["fn"] += len(gold - predicted)


def plan_graph(dag) -> tuple[list[str], list[tuple[str, str]]]:
    """Tool names and (source tool, target tool) links of a depth-1 plan."""
    by_id = {t.id: t for t in dag.tasks}
    nodes = [_norm(t.tool or t.description) for t in dag.tasks]
    links = [(_norm(by_id[d].tool or by_id[d].description), _norm(t.tool or t.description))
             for t in dag.tasks for d in t.dependencies]
    return nodes, links


def evaluate_route(model, route: str, records: Sequence[Record], tools: Sequence[str], *, settings=None,
                   max_tasks: int = 6, progress=None) -> dict[str, Any]:
    from powersampling.errors import PowerSamplingError
    from powersampling.planner import Planner, PlannerConfig, RoutingConfig

    config = PlannerConfig(max_depth=1, route=route, tools=tuple(tools), min_children=1, max_children=max_tasks,
                           max_tasks=max_tasks, description_max_chars=48, settings=settings)
    planner = Planner(model, config, routing=RoutingConfig())
    nodes_c = {"tp": 0, "fp": 0, "fn": 0}
    links_c = {"tp": 0, "fp": 0, "fn": 0}
    rows, latencies, failures, fallbacks, quality = [], [], 0, 0, []
    for i, record in enumerate(records):
        started = time.monotonic()
        try:
            dag = planner.decompose(record.instruction)
        except PowerSamplingError as exc:
            failures += 1
            rows.append({"id": record.id, "error": str(exc)})
            add_counts(nodes_c, record.nodes, [])
            add_counts(links_c, record.links, [])
            continue
        latencies.append(time.monotonic() - started)
        nodes, links = plan_graph(dag)
        add_counts(nodes_c, record.nodes, nodes)
        add_counts(links_c, record.links, links)
        fallbacks += bool(dag.metadata["fallback"])
        quality.append(dag.metadata["quality_score"])
        rows.append({"id": record.id, "gold_nodes": record.nodes, "pred_nodes": nodes,
                     "gold_links": record.links, "pred_links": links, "route": dag.metadata["route"],
                     "fallback": dag.metadata["fallback"], "latency_s": latencies[-1],
                     "tokens_generated": dag.metadata["tokens_generated"]})
        if progress:
            progress(f"{route}: {i + 1}/{len(records)} done ({latencies[-1]:.1f} s)")
    node, link = prf(nodes_c), prf(links_c)
    return {
        "route": route, "records": len(records), "failures": failures, "fallbacks": fallbacks,
        "node_f1": node["f1"], "node_precision": node["precision"], "node_recall": node["recall"],
        "link_f1": link["f1"], "link_precision": link["precision"], "link_recall": link["recall"],
        "node_counts": nodes_c, "link_counts": links_c,
        "mean_latency_s": sum(latencies) / len(latencies) if latencies else None,
        "mean_quality": sum(quality) / len(quality) if quality else None, "rows": rows,
    }


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| route | records | node F1 | link F1 | node P / R | link P / R | fallbacks | failures | mean s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        latency = f"{r['mean_latency_s']:.1f}" if r["mean_latency_s"] is not None else "-"
        lines.append(f"| {r['route']} | {r['records']} | {r['node_f1']:.3f} | {r['link_f1']:.3f} | "
                     f"{r['node_precision']:.2f} / {r['node_recall']:.2f} | {r['link_precision']:.2f} / "
                     f"{r['link_recall']:.2f} | {r['fallbacks']} | {r['failures']} | {latency} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--routes", default="baseline,power")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: embedded)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--n-mcmc", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tasks", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    from powersampling import load_model
    from powersampling.planner import RouteSettings

    if not args.data.is_dir():
        print(f"error: no TaskBench data at {args.data}", file=sys.stderr)
        return 2
    tools = load_tools(args.data)
    records = load_records(args.data)[: args.limit]
    model = load_model(args.model, backend="transformers", device=args.device)
    settings = RouteSettings(alpha=args.alpha, n_mcmc=args.n_mcmc, block_size=args.block_size,
                             temperature=args.temperature, seed=args.seed)
    results = []
    for route in [r.strip() for r in args.routes.split(",") if r.strip()]:
        results.append(evaluate_route(model, route, records, tools, settings=settings, max_tasks=args.max_tasks,
                                      progress=lambda msg: print(msg, file=sys.stderr)))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(args.data), "tools": len(tools), "model": getattr(model, "name", None),
            "device": args.device, "alpha": args.alpha, "n_mcmc": args.n_mcmc, "block_size": args.block_size,
            "temperature": args.temperature, "seed": args.seed, "limit": args.limit}
    (args.out / "taskbench_planning.json").write_text(json.dumps({"config": meta, "results": results}, indent=2))
    table = markdown_table(results)
    (args.out / "taskbench_planning.md").write_text(
        f"# TaskBench planning ({len(records)} records, {meta['model']}, {args.device})\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
