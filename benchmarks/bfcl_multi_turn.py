"""A model as an agent on BFCL's ``multi_turn_base``: per user turn, the agent loop (model -> tool calls -> BFCL's
environment -> results back -> model) of ``powersampling.agents.loop``, scored by BFCL's own multi-turn checker.

Every entry starts from fresh environment instances; each user turn runs at most ``--max-steps`` model calls (BFCL
allows 20; small models mostly repeat themselves, so a low bound saves time and changes little). The calls each
step made are what the checker executes again (under an isolated model name) and compares, state and results,
with the gold calls after every turn.

    python benchmarks/bfcl_multi_turn.py --methods greedy,low-temp --limit 10 --threads 1 \\
        --out benchmarks/results/bfcl-multi-turn-smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def run_entry(model, item, method: str, params: dict, max_steps: int, max_new_tokens: int) -> dict:
    from powersampling.agents import Executor
    from powersampling.agents.bfcl import Environment, call_text, check_multi_turn
    from powersampling.agents.loop import AgentLoop

    env = Environment(item)
    executor = Executor(env.tools(), max_concurrency=1, validate_arguments=False, model_name=model.name)
    loop = AgentLoop(model, executor, method=method, params=params, max_steps=max_steps, max_new_tokens=max_new_tokens)
    decoded, steps, tokens, calls, incomplete = [], 0, 0, 0, 0
    start = time.perf_counter()
    for turn_index, messages in enumerate(item.entry["question"]):
        turn_steps = loop.user_turn(messages, seed=turn_index)
        steps += len(turn_steps)
        tokens += sum(s.tokens_decoded for s in turn_steps)
        incomplete += sum(not s.complete for s in turn_steps)
        executed = [[call_text(c["name"], c["arguments"]) for c in s.calls] for s in turn_steps if s.calls]
        calls += sum(len(s) for s in executed)
        decoded.append(executed)
    verdict = check_multi_turn(item, decoded)
    return {
        "id": item.id,
        "method": method,
        "valid": bool(verdict["valid"]),
        "error_type": None if verdict["valid"] else verdict.get("error_type"),
        "turns": len(decoded),
        "steps": steps,
        "calls": calls,
        "incomplete_replies": incomplete,
        "tokens_decoded": tokens,
        "wall_s": round(time.perf_counter() - start, 2),
        "decoded": decoded,
    }


def summary_table(rows: list[dict]) -> str:
    from powersampling.eval.stats import wilson_interval

    lines = [
        "| method | entries | correct | accuracy | 95% CI (Wilson) | steps / entry | calls / entry | decoded tokens / "
        "entry | wall s / entry |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        n, k = len(mine), sum(r["valid"] for r in mine)
        lo, hi = wilson_interval(k, n)

        def mean(key: str, rows_: list[dict] = mine) -> float:
            return sum(r[key] for r in rows_) / len(rows_)

        lines.append(
            f"| {method} | {n} | {k} | {k / n:.1%} | {lo:.1%} - {hi:.1%} | {mean('steps'):.1f} | {mean('calls'):.1f} "
            f"| {mean('tokens_decoded'):.0f} | {mean('wall_s'):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model path (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--methods", default="greedy,low-temp")
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=4.0, help="low-temp samples at T = 1/alpha; power's exponent")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from powersampling.agents.bfcl import load_multi_turn
    from powersampling.backends import load_model

    kwargs = {"threads": args.threads} if args.threads else {}
    model = load_model(args.model, backend=args.backend, **kwargs)
    items = load_multi_turn("multi_turn_base")[args.offset : args.offset + args.limit]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    params = {"alpha": args.alpha, "block_size": 32, "n_mcmc": 2}
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {}
    if results.is_file():
        done = {(r["id"], r["method"]): r for r in map(json.loads, results.read_text().splitlines())}
    rows = []
    for item in items:
        for method in methods:
            row = done.get((item.id, method))
            if row is None:
                row = run_entry(model, item, method, params, args.max_steps, args.max_new_tokens)
                with results.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            print(
                f"{row['id']} {method}: {'correct' if row['valid'] else row['error_type']}, {row['steps']} steps, "
                f"{row['calls']} calls, {row['wall_s']} s",
                flush=True,
            )
            rows.append(row)
    settings = {
        "model": model.name,
        "backend": type(model).__name__,
        "category": "multi_turn_base",
        "entries": [items[0].id, items[-1].id],
        "methods": methods,
        "alpha": args.alpha,
        "max_steps_per_turn": args.max_steps,
        "max_new_tokens_per_step": args.max_new_tokens,
        "command": "python benchmarks/bfcl_multi_turn.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    table = summary_table(rows)
    (args.out / "summary.json").write_text(json.dumps(settings, indent=1) + "\n")
    (args.out / "summary.md").write_text(
        f"# BFCL multi_turn_base, agent loop\n\n- model **{model.name}** ({settings['backend']}), entries "
        f"{settings['entries'][0]} .. {settings['entries'][1]}, at most {args.max_steps} model calls per user turn, "
        f"{args.max_new_tokens} tokens per call, alpha {args.alpha}\n- `{settings['command']}`\n\n{table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
