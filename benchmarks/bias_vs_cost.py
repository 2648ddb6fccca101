"""Bias against cost on a model small enough to enumerate: for MH (random and sorted scan), Power-SMC and scalable
power sampling, the total variation between N independent samples and the exact p^alpha, against the tokens each
sample decoded, at several budgets; and the noise an exact sampler shows with the same N (its 99% quantile).

Usage: python benchmarks/bias_vs_cost.py [--samples 4000] [--out benchmarks/results]
Writes bias_vs_cost.json and bias_vs_cost.png. The model is ``exactness.random_table_model(vocab=4, max_len=6,
scale=0.6)`` with prompt [1] and 5 new tokens (364 completions); per-token low temperature is 0.146 away from
p^2 there, so a sampler's distance to the target is visible against the exact-sampler noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from powersampling.exactness import (
    enumerate_completions,
    power_distribution,
    random_table_model,
    sampler_tv,
    tokenwise_tempered_distribution,
    total_variation,
)

BUDGETS = {
    "MH, random scan": ("power", [dict(n_mcmc=k, block_size=5) for k in (1, 2, 4, 8, 16, 32)]),
    "MH, sorted scan": ("power", [dict(n_mcmc=k, block_size=5, scan="sorted") for k in (1, 2, 4, 8, 16, 32)]),
    "Power-SMC": ("smc", [dict(n_particles=k, resample_every=1) for k in (2, 4, 8, 16, 32)]),
    "scalable power": (
        "scalable-power",
        [
            dict(top_k=4, rollouts=1, horizon=1),
            dict(top_k=4, rollouts=1, horizon=2),
            dict(top_k=4, rollouts=2, horizon=3),
            dict(top_k=4, rollouts=1, horizon=None),
            dict(top_k=4, rollouts=4, horizon=None),
        ],
    ),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    model = random_table_model(vocab=4, max_len=6, scale=0.6)
    prompt, max_new = [1], 5
    target = power_distribution(enumerate_completions(model, prompt, max_new), args.alpha)
    low_temp = total_variation(tokenwise_tempered_distribution(model, prompt, max_new, args.alpha), target)
    rows = []
    for label, (method, grid) in BUDGETS.items():
        for params in grid:
            started = time.perf_counter()
            row = sampler_tv(method, model, prompt, max_new, args.alpha, args.samples, seed=args.seed, **params)
            row.update(label=label, wall_s=time.perf_counter() - started)
            rows.append(row)
            print(
                f"{label:16s} {json.dumps(params):55s} TV {row['tv']:.4f} (exact noise q99 "
                f"{row['exact_noise_q99']:.4f}), {row['tokens_per_sample']:.1f} tokens/sample",
                file=sys.stderr,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "random_table_model(vocab=4, max_len=6, scale=0.6)",
        "prompt": prompt,
        "max_new_tokens": max_new,
        "alpha": args.alpha,
        "samples": args.samples,
        "seed": args.seed,
        "completions": len(target),
        "low_temperature_tv": low_temp,
    }
    (args.out / "bias_vs_cost.json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=2))
    _plot(rows, meta, args.out / "bias_vs_cost.png")
    return 0


def _plot(rows, meta, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    for label in BUDGETS:
        points = [(r["tokens_per_sample"], r["tv"]) for r in rows if r["label"] == label]
        ax.plot(*zip(*points), marker="o", label=label)
    noise = max(r["exact_noise_q99"] for r in rows)
    ax.axhline(
        noise, color="grey", linestyle="--", label=f"exact sampler, 99% of runs below ({meta['samples']} samples)"
    )
    ax.axhline(meta["low_temperature_tv"], color="grey", linestyle=":", label="per-token low temperature")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("decoded tokens per sample (log scale)")
    ax.set_ylabel(f"total variation to exact p^{meta['alpha']:g}")
    ax.set_title(f"bias against cost: {meta['completions']} completions, {meta['samples']} samples", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
