"""Prove the executor on BFCL's multi-turn environments: fed the gold calls, it must reproduce every ground-truth
state.

For each entry of ``multi_turn_base``, fresh environment instances are built from the entry's initial
configuration; each turn's gold calls are parsed into tool calls and run by ``powersampling.agents.Executor``
(one after the other: they share the environment's state) against the instances' bound methods, with the
arguments as given (BFCL's environments check their own arguments; a gold call may pass a string id to an integer
parameter, and BFCL runs it as Python would). After every turn
the instances are compared, with BFCL's own ``state_checker``, against the instances BFCL's own execution of the
same gold calls produces; and the calls as executed are scored by BFCL's ``multi_turn_checker`` (under an isolated
model name per entry). An entry passes when every turn's state matches and the checker accepts.

    python benchmarks/bfcl_multi_turn_gold.py [--limit N] [--out benchmarks/results/bfcl_multi_turn_gold.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def replay(item) -> dict:
    from powersampling.agents import Executor
    from powersampling.agents.bfcl import (
        Environment,
        call_text,
        check_multi_turn,
        compare_states,
        ground_truth_instances,
        parse_call,
    )
    from powersampling.agents.loop import run_calls

    env = Environment(item)
    executor = Executor(env.tools(), max_concurrency=1, timeout_s=30, validate_arguments=False)
    decoded, mismatches, failed_calls = [], [], 0
    for turn, gold in enumerate(item.ground_truth, start=1):
        calls = [parse_call(text, env.methods) for text in gold]
        results = run_calls(executor, calls)
        failed_calls += sum(r.status != "ok" for r in results)
        decoded.append([[call_text(name, arguments) for name, arguments in calls]] if calls else [])
        state = compare_states(env.instances, ground_truth_instances(item, turn))
        if not state["valid"]:
            mismatches.append({"turn": turn, "error": state.get("error_message")})
    verdict = check_multi_turn(item, decoded)
    return {
        "id": item.id,
        "turns": len(item.ground_truth),
        "calls": sum(len(t) for t in item.ground_truth),
        "calls_raising": failed_calls,
        "state_mismatches": mismatches,
        "checker_valid": bool(verdict["valid"]),
        "checker_error": None if verdict["valid"] else verdict.get("error_message"),
        "reproduced": bool(verdict["valid"]) and not mismatches,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N entries (default: all 200)")
    parser.add_argument("--out", type=Path, default=None, help="write the per-entry results here (JSON)")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    from powersampling.agents.bfcl import load_multi_turn

    items = load_multi_turn("multi_turn_base")[: args.limit]
    start = time.perf_counter()
    rows = [replay(item) for item in items]
    elapsed = time.perf_counter() - start
    reproduced = sum(r["reproduced"] for r in rows)
    summary = {
        "bfcl_eval": version("bfcl-eval"),
        "category": "multi_turn_base",
        "entries": len(rows),
        "reproduced": reproduced,
        "turns": sum(r["turns"] for r in rows),
        "calls": sum(r["calls"] for r in rows),
        "calls_raising": sum(r["calls_raising"] for r in rows),
        "elapsed_s": round(elapsed, 2),
        "failures": [r for r in rows if not r["reproduced"]],
    }
    print(
        f"{reproduced}/{len(rows)} entries reproduced ({summary['turns']} turns, {summary['calls']} gold calls, "
        f"{summary['calls_raising']} of them raising inside the environment) in {elapsed:.1f} s"
    )
    for failure in summary["failures"][:10]:
        print(f"  {failure['id']}: {failure['state_mismatches'] or failure['checker_error']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary | {"entries_detail": rows}, indent=1) + "\n")
    return 0 if reproduced == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
