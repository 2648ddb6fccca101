"""Latency of the power samplers against a plain sample of the same length, on the same model, in one run.

    python benchmarks/samplers_latency.py [--prompts 3] [--smc 8:4 8:16] [--methods smc mh_batched mh_sequential]

For each prompt (seed = --seed + prompt index, the same for every method): a plain sample (temperature 1), then
Power-SMC, batched MH (proposal_batch = n_mcmc) and sequential MH (proposal_batch = 1), then the plain sample again;
settings alpha=4, n_mcmc=10, block 16, 96 new tokens. EOS is ignored (default) so every completion has exactly
96 tokens and the ratios compare equal lengths. Each method's wall time is divided by the mean of the two plain
runs around it on the same prompt, which cancels most of the drift of a shared machine; CPU time (all threads of
this process) is reported too, as it is less sensitive to other processes. Writes JSON under benchmarks/results/.
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
from powersampling.samplers import (
    PowerSampler,
    PowerSamplingConfig,
    SamplingConfig,
    SMCConfig,
    SMCSampler,
    TemperatureSampler,
    prompt_ids,
)

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
    "did Natalia sell altogether in April and May? Think step by step.",
    "Write a short Python function that returns the n-th Fibonacci number, then explain how it works.",
    "Explain why the sky is blue to a ten-year-old, in a few sentences.",
    "A train travels 60 miles per hour for 2.5 hours. How far does it go? Show your reasoning.",
]


def build(method: str, lm, args, seed: int):
    if method == "plain":
        return TemperatureSampler(lm, SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=seed))
    if method.startswith("smc"):
        particles, resample_every = smc_variant(method, args)
        return SMCSampler(
            lm,
            SMCConfig(
                alpha=args.alpha,
                n_particles=particles,
                resample_every=resample_every,
                max_new_tokens=args.max_new_tokens,
                seed=seed,
            ),
        )
    batch = {"mh_batched": args.n_mcmc, "mh_sequential": 1}[method]
    return PowerSampler(
        lm,
        PowerSamplingConfig(
            alpha=args.alpha,
            n_mcmc=args.n_mcmc,
            block_size=args.block_size,
            max_new_tokens=args.max_new_tokens,
            seed=seed,
            proposal_batch=batch,
        ),
    )


def smc_variant(method: str, args) -> tuple[int, int]:
    """'smc' is the first --smc variant; 'smc_8x4' is 8 particles resampling-checked every 4 tokens."""
    spec = method.partition("_")[2] or args.smc[0].replace(":", "x")
    particles, _, every = spec.partition("x")
    return int(particles), int(every)


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
    for key in ("acceptance_rate", "resample_count", "final_ess", "unique_particles", "log_marginal_estimate"):
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
    ap.add_argument("--smc", nargs="+", default=["8:4", "8:16"], help="SMC variants as particles:resample_every")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["smc", "mh_batched", "mh_sequential"],
        help="smc (all --smc variants), mh_batched, mh_sequential",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-eos", action="store_true", help="let samples stop at EOS (lengths then differ)")
    ap.add_argument("--out", default="benchmarks/results/samplers_latency.json")
    args = ap.parse_args()

    methods = []
    for m in args.methods:
        methods += [f"smc_{v.replace(':', 'x')}" for v in args.smc] if m == "smc" else [m]
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
        "target": "SMC within 3x the wall time of a plain sample (Power-SMC reports 1.4-3.3x on GPU)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return summary


if __name__ == "__main__":
    main()
