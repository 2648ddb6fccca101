"""Plan latency: the planner's baseline and power routes against an unconstrained decode of the same token count,
on the same backend and model, in one run.

For each request: a baseline plan (one grammar-constrained call, tool plans when --tools-file is given), then a
plain sample with the same number of decoded tokens (EOS ignored, so the count is equal), then a power-route plan.
The first plan of a process also pays the grammar's one-time costs (tokenizer tables, compiling the schema); it is
reported apart and left out of the ratios. Writes JSON under benchmarks/results/.

    python benchmarks/plan_latency.py [--backends transformers llama.cpp] [--requests 3] [--tools-file tools.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REQUESTS = [
    "Organize a team offsite: pick a venue, book travel, plan the agenda and send the invitations.",
    "Check the weather in Paris for tomorrow and email the forecast to ann@example.com.",
    "Find a lasagna recipe, order the ingredients and set an alarm for 6 pm to start cooking.",
    "Plan a birthday party for my daughter: invitations, cake, decorations and games.",
]


def measure(backend: str, args) -> dict:
    from powersampling import load_model
    from powersampling.backends.base import ContinuationRequest
    from powersampling.planner import Planner, PlannerConfig, RouteSettings, RoutingConfig
    from powersampling.planner.tools import load_tools
    from powersampling.samplers import prompt_ids

    lm = load_model(args.model, backend=backend, threads=args.threads)
    tools = load_tools(args.tools_file) if args.tools_file else None
    settings = RouteSettings(alpha=args.alpha, n_mcmc=args.n_mcmc, block_size=args.block_size, seed=args.seed)

    def planner(route: str) -> Planner:
        config = PlannerConfig(max_depth=1, route=route, tools=tools, settings=settings, min_children=1)
        return Planner(lm, config, routing=RoutingConfig())

    started = time.perf_counter()
    planner("baseline").decompose(REQUESTS[-1])  # the grammar's one-time costs (and a warm prompt path)
    first_s = time.perf_counter() - started
    rows = []
    for request in REQUESTS[: args.requests]:
        started = time.perf_counter()
        dag = planner("baseline").decompose(request)
        plan_s = time.perf_counter() - started
        tokens = int(dag.metadata["tokens_generated"])
        stops = lm.stop_token_ids
        lm.stop_token_ids = frozenset()  # exactly `tokens` decoded
        ids = prompt_ids(lm, request)
        started = time.perf_counter()
        lm.sample([ContinuationRequest(ids, tokens, generated_start=len(ids))], 1.0, np.random.default_rng(0))
        plain_s = time.perf_counter() - started
        lm.stop_token_ids = stops
        started = time.perf_counter()
        power = planner("power").decompose(request)
        power_s = time.perf_counter() - started
        rows.append(
            {
                "request": request,
                "baseline_tokens": tokens,
                "baseline_s": plan_s,
                "unconstrained_same_tokens_s": plain_s,
                "baseline_vs_unconstrained": plan_s / plain_s,
                "power_tokens": int(power.metadata["tokens_generated"]),
                "power_s": power_s,
                "power_vs_baseline": power_s / plan_s,
                "power_route": power.metadata["route"],
            }
        )
        print(
            f"{backend}: baseline {tokens} tokens {plan_s:.1f} s = {plan_s / plain_s:.2f}x unconstrained "
            f"({plain_s:.1f} s); power {power_s:.1f} s ({power_s / plan_s:.1f}x baseline)",
            file=sys.stderr,
        )
    return {
        "backend": backend,
        "model": lm.name,
        "first_plan_s": first_s,
        "rows": rows,
        "median_baseline_vs_unconstrained": float(np.median([r["baseline_vs_unconstrained"] for r in rows])),
        "median_baseline_tokens": float(np.median([r["baseline_tokens"] for r in rows])),
        "median_power_vs_baseline": float(np.median([r["power_vs_baseline"] for r in rows])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["transformers", "llama.cpp"])
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--tools-file", default=None)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--n-mcmc", type=int, default=5)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "plan_latency.json")
    args = parser.parse_args(argv)
    results = [measure(backend, args) for backend in args.backends]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
    )
    for r in results:
        print(
            f"{r['backend']}: first plan {r['first_plan_s']:.1f} s; "
            f"baseline plans of ~{r['median_baseline_tokens']:.0f} tokens cost "
            f"{r['median_baseline_vs_unconstrained']:.2f}x an unconstrained decode of the same length "
            f"(median); power {r['median_power_vs_baseline']:.1f}x baseline"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
