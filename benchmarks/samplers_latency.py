"""Latency of the power samplers against a plain sample of the same length, on the same model, in one run.

    python benchmarks/samplers_latency.py [--backend transformers|llama.cpp] [--prompts 3] [--methods mh smc_8x4 ...]

For each prompt (seed = --seed + prompt index, the same for every method): a plain sample (temperature 1), then
the method, then the plain sample again. Methods (all built through the one sampler registry, with the library's
defaults unless named here): ``mh`` (exact MH as shipped: sorted scan, all proposals of a step in one batch),
``mh_random`` (random scan), ``mh_sequential`` (one proposal per backend call), ``smc_PxR`` (P particles, resampling
checked every R tokens), ``scalable`` (scalable power sampling: top-4 candidates, 2 rollouts of 8 tokens, rollouts
only where the next-token entropy exceeds 1 nat). Settings alpha=4, n_mcmc=10, block 16, 96 new tokens. EOS is
ignored (default) so every completion has exactly 96 tokens and the ratios compare equal lengths. Each method's
wall time is divided by the mean of the two plain runs around it on the same prompt, which cancels most of the
drift of a shared machine; CPU time (all threads of this process) is reported too, as it is less sensitive to
other processes. Writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from powersampling import load_model
from powersampling.samplers import build_sampler, prompt_ids

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
    "did Natalia sell altogether in April and May? Think step by step.",
    "Write a short Python function that returns the n-th Fibonacci number, then explain how it works.",
    "Explain why the sky is blue to a ten-year-old, in a few sentences.",
    "A train travels 60 miles per hour for 2.5 hours. How far does it go? Show your reasoning.",
]


VARIANTS = {  # benchmark name -> (registry method, parameters beyond the shared ones)
    "plain": ("sample", {"temperature": 1.0}),
    "mh": ("power", {}),
    "mh_random": ("power", {"scan": "random"}),
    "mh_sequential": ("power", {"proposal_batch": 1}),
    "scalable": ("scalable-power", {"top_k": 4, "rollouts": 2, "horizon": 8, "entropy_threshold": 1.0}),
}


def build(method: str, lm, args, seed: int):
    shared = dict(alpha=args.alpha, n_mcmc=args.n_mcmc, block_size=args.block_size, seed=seed)
    shared["max_new_tokens"] = args.max_new_tokens
    if method.startswith("smc_"):  # smc_8x4: 8 particles, resampling checked every 4 tokens
        particles, _, every = method.removeprefix("smc_").partition("x")
        return build_sampler("smc", lm, **shared, n_particles=int(particles), resample_every=int(every))
    name, params = VARIANTS[method]
    return build_sampler(name, lm, **shared, **params)


def timed(sampler, lm, ids) -> dict:
    getattr(lm, "clear_cache", lambda: None)()
    passes = getattr(lm, "forward_passes", 0)
    wall, cpu = time.perf_counter(), time.process_time()
    result = sampler.sample(ids)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    md = result.metadata
    row = {
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens_decoded": md["tokens_generated"],
        "final_tokens": len(result.token_ids),
        "backend_calls": md.get("backend_calls", 1),
        "forward_passes": getattr(lm, "forward_passes", 0) - passes,
    }
    keys = ("acceptance_rate", "resample_count", "final_ess", "unique_particles", "log_marginal_estimate")
    for key in (*keys, "rollouts_total", "positions_with_rollouts"):
        if key in md:
            row[key] = md[key]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="transformers")
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--n-mcmc", type=int, default=10)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=3, help=f"how many of the {len(PROMPTS)} built-in prompts")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["mh", "mh_random", "smc_8x4", "smc_8x16", "scalable"],
        help=f"any of {', '.join(m for m in VARIANTS if m != 'plain')}, smc_PxR",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-eos", action="store_true", help="let samples stop at EOS (lengths then differ)")
    ap.add_argument("--out", default="benchmarks/results/samplers_latency.json")
    args = ap.parse_args()

    methods = list(args.methods)
    for m in methods:
        if m not in VARIANTS and not m.startswith("smc_"):
            ap.error(f"unknown method {m!r}")
    lm = load_model(args.model, backend=args.backend)
    if not args.keep_eos:
        lm.stop_token_ids = frozenset()
    prompts = PROMPTS[: args.prompts]
    timed(build("plain", lm, args, args.seed), lm, prompt_ids(lm, prompts[0]))  # warm-up

    per_prompt = []
    for index, prompt in enumerate(prompts):
        ids, seed = prompt_ids(lm, prompt), args.seed + index
        entry = {"prompt": prompt, "prompt_tokens": len(ids), "seed": seed, "runs": {}}
        for method in methods:
            before = timed(build("plain", lm, args, seed), lm, ids)
            run = timed(build(method, lm, args, seed), lm, ids)
            after = timed(build("plain", lm, args, seed), lm, ids)
            plain_wall = (before["wall_s"] + after["wall_s"]) / 2
            plain_cpu = (before["cpu_s"] + after["cpu_s"]) / 2
            run.update(
                plain_wall_s=plain_wall,
                wall_ratio=run["wall_s"] / plain_wall,
                cpu_ratio=run["cpu_s"] / plain_cpu,
                token_ratio=run["tokens_decoded"] / after["final_tokens"],
            )
            entry["runs"][method] = run
            print(
                f"prompt {index}: {method:<15} {run['wall_s']:7.1f} s  {run['wall_ratio']:5.2f}x plain "
                f"(plain {plain_wall:.1f} s)  cpu {run['cpu_ratio']:5.2f}x  tokens {run['token_ratio']:5.2f}x",
                flush=True,
            )
        per_prompt.append(entry)
        write_report(args, lm, methods, per_prompt)  # a long run that gets cut short keeps what it measured

    summary = write_report(args, lm, methods, per_prompt)
    print(
        f"\n{'method':<15} {'wall s':>8} {'plain s':>8} {'wall/plain':>11} {'max':>6} {'cpu/plain':>10} "
        f"{'tokens/plain':>13} {'calls':>6} {'passes':>7}"
    )
    for method, s in summary.items():
        print(
            f"{method:<15} {s['wall_s_mean']:8.1f} {s['plain_wall_s_mean']:8.1f} {s['wall_ratio_mean']:10.2f}x "
            f"{s['wall_ratio_max']:5.2f}x {s['cpu_ratio_mean']:9.2f}x {s['token_ratio_mean']:12.2f}x "
            f"{s['backend_calls_mean']:6.0f} {s['forward_passes_mean']:7.0f}"
        )
    print(f"\nwrote {args.out}")


def write_report(args, lm, methods: list[str], per_prompt: list[dict]) -> dict:
    summary = {}
    for method in methods:
        runs = [p["runs"][method] for p in per_prompt]
        summary[method] = {
            "wall_ratio_mean": float(np.mean([r["wall_ratio"] for r in runs])),
            "wall_ratio_max": float(np.max([r["wall_ratio"] for r in runs])),
            "cpu_ratio_mean": float(np.mean([r["cpu_ratio"] for r in runs])),
            "token_ratio_mean": float(np.mean([r["token_ratio"] for r in runs])),
            "wall_s_mean": float(np.mean([r["wall_s"] for r in runs])),
            "plain_wall_s_mean": float(np.mean([r["plain_wall_s"] for r in runs])),
            "backend_calls_mean": float(np.mean([r["backend_calls"] for r in runs])),
            "forward_passes_mean": float(np.mean([r["forward_passes"] for r in runs])),
        }
    report = {
        "model": lm.name,
        "backend": args.backend,
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "settings": vars(args),
        "prompts_done": len(per_prompt),
        "summary": summary,
        "prompts": per_prompt,
        "targets": {
            "mh": "at most 4x plain on transformers, 5x on llama.cpp (issue 16)",
            "smc": "at most 1.5x plain on transformers, 2.5x on llama.cpp (issue 16)",
            "scalable": "at most half of MH's wall time (issue 13)",
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return summary


if __name__ == "__main__":
    main()
