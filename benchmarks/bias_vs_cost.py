"""Bias against cost on models small enough to enumerate: for each method and budget, the total variation between N
independent samples and the exact p^alpha, against the tokens each sample decoded; and the noise an exact sampler
shows with the same N (its 99% quantile).

Two scenarios:

* ``ordinary``: ``exactness.random_table_model(vocab=4, max_len=6, scale=0.6)``, prompt [1], 5 new tokens, alpha 2
  (364 completions); per-token low temperature is 0.146 away from p^2. MH with the random, sorted, entropy and
  sorted-entropy scans, the adaptive MH budget (``stop_after_rejections``, not exact), the defensive mixture
  proposal, Power-SMC, scalable power sampling.
* ``mode_hiding``: ``exactness.mode_hiding_model(0)``, prompt [1], 4 new tokens, alpha 4: p^4's mode, an immediate
  EOS, holds 0.64 of the target and the low-temperature proposal draws it with probability 0.0056. MH (60 steps,
  the issue's reference budget, and others), SMC, low temperature, scalable power, and the defensive mixture.

For every method the script reports the decoded tokens per sample at the smallest budget from which the TV
stays within the exact sampler's noise (``tokens_to_noise``; None when no budget gets there).

Usage: python benchmarks/bias_vs_cost.py [--samples 4000] [--mode-hiding-samples 2000] [--out benchmarks/results]
Writes bias_vs_cost.json, bias_vs_cost.png and bias_vs_cost_mode_hiding.png. One core, a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from powersampling.exactness import (
    enumerate_completions,
    hidden_mode,
    mode_hiding_model,
    power_distribution,
    random_table_model,
    sampler_tv,
    tokenwise_tempered_distribution,
    total_variation,
)

STEPS = (1, 2, 4, 6, 8, 12, 16, 24, 32)

ORDINARY = {
    "MH, random scan": ("power", [dict(n_mcmc=k, block_size=5, scan="random") for k in STEPS]),
    "MH, sorted scan": ("power", [dict(n_mcmc=k, block_size=5, scan="sorted") for k in STEPS]),
    "MH, entropy scan": ("power", [dict(n_mcmc=k, block_size=5, scan="entropy") for k in STEPS]),
    "MH, sorted-entropy scan": ("power", [dict(n_mcmc=k, block_size=5, scan="sorted-entropy") for k in STEPS]),
    "MH, entropy scan, sequential proposals": (
        "power",
        [dict(n_mcmc=k, block_size=5, scan="entropy", proposal_batch=1) for k in STEPS],
    ),
    "MH, random scan, sequential proposals": (
        "power",
        [dict(n_mcmc=k, block_size=5, scan="random", proposal_batch=1) for k in STEPS],
    ),
    "MH adaptive budget (not exact): stop after k rejections in a row, up to 32 steps": (
        "power",
        [
            dict(n_mcmc=32, block_size=5, scan="random", proposal_batch=1, stop_after_rejections=k)
            for k in (1, 2, 3, 4, 6, 8)
        ],
    ),
    "MH, sorted scan, defensive mixture w=0.2": (
        "power",
        [dict(n_mcmc=k, block_size=5, scan="sorted", defensive_weight=0.2) for k in STEPS],
    ),
    "Power-SMC": ("smc", [dict(n_particles=k, resample_every=1) for k in (2, 4, 8, 16, 32)]),
    "Power-SMC, defensive mixture w=0.2": (
        "smc",
        [dict(n_particles=k, resample_every=1, defensive_weight=0.2) for k in (2, 4, 8, 16, 32)],
    ),
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

MODE_HIDING = {
    "MH, sorted scan": ("power", [dict(n_mcmc=k, block_size=4) for k in (15, 30, 60, 120, 240)]),
    "MH, entropy scan": ("power", [dict(n_mcmc=k, block_size=4, scan="entropy") for k in (15, 30, 60)]),
    "MH, sorted-entropy scan": ("power", [dict(n_mcmc=k, block_size=4, scan="sorted-entropy") for k in (30, 60, 120)]),
    "MH, sorted scan, defensive mixture w=0.5": (
        "power",
        [dict(n_mcmc=k, block_size=4, defensive_weight=0.5) for k in (8, 15, 30, 60, 120)],
    ),
    "MH, sorted scan, defensive mixture w=0.5 at T=2": (
        "power",
        [dict(n_mcmc=k, block_size=4, defensive_weight=0.5, defensive_temperature=2.0) for k in (8, 15, 30, 60)],
    ),
    "Power-SMC": ("smc", [dict(n_particles=k, resample_every=1) for k in (8, 32, 128)]),
    "Power-SMC, defensive mixture w=0.3": (
        "smc",
        [dict(n_particles=k, resample_every=1, defensive_weight=0.3) for k in (8, 16, 32, 64, 128)],
    ),
    "Power-SMC, defensive mixture w=0.5": (
        "smc",
        [dict(n_particles=k, resample_every=1, defensive_weight=0.5) for k in (8, 16, 32, 64, 128)],
    ),
    "low temperature": ("low-temp", [dict()]),
    "scalable power, whole futures": ("scalable-power", [dict(top_k=4, rollouts=4, horizon=None)]),
}


def run_grid(grid: dict, model, prompt, max_new: int, alpha: float, samples: int, seed: int, scenario: str):
    rows = []
    for label, (method, budgets) in grid.items():
        for params in budgets:
            started = time.perf_counter()
            row = sampler_tv(method, model, prompt, max_new, alpha, samples, seed=seed, **params)
            row.update(label=label, scenario=scenario, wall_s=time.perf_counter() - started)
            rows.append(row)
            print(
                f"{scenario:11s} {label[:44]:44s} {json.dumps(params)[:70]:70s} TV {row['tv']:.4f} (noise q99 "
                f"{row['exact_noise_q99']:.4f}), {row['tokens_per_sample']:.1f} tokens/sample",
                file=sys.stderr,
            )
    return rows


def tokens_to_noise(rows: list[dict]) -> dict[str, float | None]:
    """Per label: decoded tokens per sample at the smallest budget from which every larger budget's TV is within
    the exact sampler's 99% noise too (a single dip below the noise does not count)."""
    out: dict[str, float | None] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        points = sorted((r["tokens_per_sample"], r["tv"] <= r["exact_noise_q99"]) for r in rows if r["label"] == label)
        reached = None
        for tokens, within in reversed(points):
            if not within:
                break
            reached = tokens
        out[label] = reached
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--mode-hiding-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    model, prompt, max_new, alpha = random_table_model(vocab=4, max_len=6, scale=0.6), [1], 5, 2.0
    target = power_distribution(enumerate_completions(model, prompt, max_new), alpha)
    ordinary = {
        "model": "random_table_model(vocab=4, max_len=6, scale=0.6)",
        "prompt": prompt,
        "max_new_tokens": max_new,
        "alpha": alpha,
        "samples": args.samples,
        "completions": len(target),
        "low_temperature_tv": total_variation(tokenwise_tempered_distribution(model, prompt, max_new, alpha), target),
    }
    rows = run_grid(ORDINARY, model, prompt, max_new, alpha, args.samples, args.seed, "ordinary")

    hiding, h_max_new, h_alpha = mode_hiding_model(0), 4, 4.0
    h_target = power_distribution(enumerate_completions(hiding, prompt, h_max_new), h_alpha)
    mode_hiding = {
        "model": "mode_hiding_model(0)",
        "prompt": prompt,
        "max_new_tokens": h_max_new,
        "alpha": h_alpha,
        "samples": args.mode_hiding_samples,
        "completions": len(h_target),
        **hidden_mode(hiding, prompt, h_max_new, h_alpha),
    }
    h_rows = run_grid(
        MODE_HIDING, hiding, prompt, h_max_new, h_alpha, args.mode_hiding_samples, args.seed, "mode_hiding"
    )

    summary = {"ordinary": tokens_to_noise(rows), "mode_hiding": tokens_to_noise(h_rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bias_vs_cost.json").write_text(
        json.dumps(
            {
                "settings": {"seed": args.seed, "ordinary": ordinary, "mode_hiding": mode_hiding},
                "tokens_to_noise": summary,
                "rows": rows + h_rows,
            },
            indent=2,
        )
    )
    print(json.dumps(summary, indent=2), file=sys.stderr)
    _plot(rows, ORDINARY, ordinary, args.out / "bias_vs_cost.png")
    _plot(h_rows, MODE_HIDING, mode_hiding, args.out / "bias_vs_cost_mode_hiding.png")
    return 0


def _plot(rows, grid, meta, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 5.2), dpi=120)
    for label in grid:
        points = sorted((r["tokens_per_sample"], r["tv"]) for r in rows if r["label"] == label)
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
    ax.set_title(f"bias against cost: {meta['model']}, {meta['completions']} completions", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
