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

* ``mixed_confidence`` (``--scenarios mixed_confidence --name bias_vs_cost_mixed_confidence``):
  ``exactness.mixed_confidence_model(0)``, 5 new tokens, alpha 2: 60% of positions nearly deterministic, the rest
  flat, as in a language model; the MH scans only, to see whether cuts that follow entropy pay off there.

Usage: python benchmarks/bias_vs_cost.py [--samples 4000] [--mode-hiding-samples 2000] [--scenarios ordinary,
mode_hiding] [--name bias_vs_cost] [--out benchmarks/results]
Writes NAME.json and one plot per scenario: NAME.png for ordinary (or for a lone scenario), NAME_SCENARIO.png for
the others. One core; about 10 minutes for the default scenarios on an idle core.
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
    mixed_confidence_model,
    mode_hiding_model,
    power_distribution,
    random_table_model,
    sampler_tv,
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


MIXED_CONFIDENCE = {
    "MH, random scan": ("power", [dict(n_mcmc=k, block_size=5, scan="random") for k in STEPS]),
    "MH, sorted scan": ("power", [dict(n_mcmc=k, block_size=5, scan="sorted") for k in STEPS]),
    "MH, entropy scan": ("power", [dict(n_mcmc=k, block_size=5, scan="entropy") for k in STEPS]),
    "MH, sorted-entropy scan": ("power", [dict(n_mcmc=k, block_size=5, scan="sorted-entropy") for k in STEPS]),
    "MH, sorted-entropy scan, floor 0.1": (
        "power",
        [dict(n_mcmc=k, block_size=5, scan="sorted-entropy", entropy_floor=0.1) for k in STEPS],
    ),
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


# scenario -> (model expression, grid, new tokens, alpha, the flag giving its sample count)
SCENARIOS = {
    "ordinary": ("random_table_model(vocab=4, max_len=6, scale=0.6)", ORDINARY, 5, 2.0, "samples"),
    "mode_hiding": ("mode_hiding_model(0)", MODE_HIDING, 4, 4.0, "mode_hiding_samples"),
    "mixed_confidence": ("mixed_confidence_model(0)", MIXED_CONFIDENCE, 5, 2.0, "samples"),
}
MODELS = {
    "random_table_model(vocab=4, max_len=6, scale=0.6)": lambda: random_table_model(vocab=4, max_len=6, scale=0.6),
    "mode_hiding_model(0)": lambda: mode_hiding_model(0),
    "mixed_confidence_model(0)": lambda: mixed_confidence_model(0),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--mode-hiding-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--scenarios", default="ordinary,mode_hiding", help=f"comma-separated, from {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--name", default="bias_vs_cost", help="result files NAME.json and NAME[_scenario].png")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")

    prompt, settings, rows = [1], {"seed": args.seed}, {}
    for scenario in chosen:
        expression, grid, max_new, alpha, samples_flag = SCENARIOS[scenario]
        model, samples = MODELS[expression](), getattr(args, samples_flag)
        target = power_distribution(enumerate_completions(model, prompt, max_new), alpha)
        settings[scenario] = {
            "model": expression,
            "prompt": prompt,
            "max_new_tokens": max_new,
            "alpha": alpha,
            "samples": samples,
            "completions": len(target),
            **hidden_mode(model, prompt, max_new, alpha),
        }
        rows[scenario] = run_grid(grid, model, prompt, max_new, alpha, samples, args.seed, scenario)

    summary = {scenario: tokens_to_noise(these) for scenario, these in rows.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps(
            {"settings": settings, "tokens_to_noise": summary, "rows": [r for these in rows.values() for r in these]},
            indent=2,
        )
    )
    print(json.dumps(summary, indent=2), file=sys.stderr)
    for scenario, these in rows.items():
        suffix = "" if scenario == "ordinary" or len(rows) == 1 else f"_{scenario}"
        _plot(these, SCENARIOS[scenario][1], settings[scenario], args.out / f"{args.name}{suffix}.png")
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
