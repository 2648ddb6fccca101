"""First plan of a fresh process against a plain sample of the same length, per token.

Each measurement is a new Python process that loads the model and then does one thing, timed from after the load:
a baseline plan (``Planner.decompose``, what ``powersampling plan`` runs: grammar engine import, tokenizer tables,
schema compile, then the decode), or a plain ``sample`` of the plan's token count (EOS ignored, what ``powersampling
generate --method sample`` runs). ``--old-build`` also measures plans with xgrammar compiling the schema's patterns
itself (the build before ``backends.grammar_build``). Runs alternate, so load on the machine hits all alike.
Writes JSON under benchmarks/results/.

    python benchmarks/first_plan.py [--repeats 3] [--tools-module mytools.py] [--old-build] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REQUEST = "Check the weather in Paris for tomorrow and email the forecast to ann@example.com."

_CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from powersampling import load_model
lm = load_model(None, backend="transformers", threads=args["threads"])
if args["kind"] == "sample":
    import numpy as np
    from powersampling.backends.base import ContinuationRequest
    from powersampling.samplers import prompt_ids
    lm.stop_token_ids = frozenset()  # exactly the plan's token count
    ids = prompt_ids(lm, args["request"])
    started = time.perf_counter()
    lm.sample([ContinuationRequest(ids, args["tokens"], generated_start=len(ids))], 1.0, np.random.default_rng(0))
    print(json.dumps({"seconds": time.perf_counter() - started, "tokens": args["tokens"]}))
    sys.exit(0)
if args["kind"] == "old_plan":
    import powersampling.backends.constraints as constraints
    constraints.json_schema_grammar = lambda text, any_whitespace: ("json_schema", text)
from powersampling.planner import Planner, PlannerConfig, RouteSettings, RoutingConfig
tools = None
if args["tools_module"]:
    from powersampling.agents import load_tools_module
    tools = load_tools_module(args["tools_module"])
config = PlannerConfig(max_depth=1, route="baseline", tools=tools, settings=RouteSettings(seed=args["seed"]))
started = time.perf_counter()
dag = Planner(lm, config, routing=RoutingConfig()).decompose(args["request"])
print(json.dumps({"seconds": time.perf_counter() - started, "tokens": int(dag.metadata["tokens_generated"])}))
"""


def child(kind: str, args, **extra) -> dict:
    payload = {
        "kind": kind,
        "request": args.request,
        "threads": args.threads,
        "seed": args.seed,
        "tools_module": args.tools_module,
        **extra,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(payload)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--request", default=REQUEST)
    parser.add_argument("--tools-module", default=None, help="plan tool calls with these functions' tools")
    parser.add_argument("--old-build", action="store_true", help="also measure xgrammar's own build of the schema")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "first_plan.json")
    args = parser.parse_args(argv)
    rows = []
    for repeat in range(args.repeats):
        plan = child("plan", args)
        row = {"plan_s": plan["seconds"], "tokens": plan["tokens"]}
        sample = child("sample", args, tokens=plan["tokens"])
        row["sample_s"] = sample["seconds"]
        row["plan_vs_sample_per_token"] = plan["seconds"] / sample["seconds"]
        if args.old_build:
            old = child("old_plan", args)
            row.update(old_plan_s=old["seconds"], old_tokens=old["tokens"])
            row["old_plan_vs_sample_per_token"] = (old["seconds"] / old["tokens"]) / (
                sample["seconds"] / plan["tokens"]
            )
        rows.append(row)
        print(f"run {repeat + 1}: {json.dumps({k: round(v, 3) for k, v in row.items()})}", file=sys.stderr)
    summary = {
        "median_plan_vs_sample_per_token": statistics.median(r["plan_vs_sample_per_token"] for r in rows),
        "median_tokens": statistics.median(r["tokens"] for r in rows),
    }
    if args.old_build:
        summary["median_old_plan_vs_sample_per_token"] = statistics.median(
            r["old_plan_vs_sample_per_token"] for r in rows
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows, **summary}, indent=2)
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
