"""The report of a results file: accuracy with Wilson intervals, paired tests, cost, a plot and a markdown summary.

Costs are measured, never assumed (``cost``): decoded tokens are what the backend actually drew (every MH
proposal, every best-of-n candidate), wall time is the sampler call's elapsed time. Multipliers are relative to
plain sampling (T=1) on the same problems when it is in the run. What a benchmark adds (TaskBench's graph
metrics) comes from its ``Benchmark`` class.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..samplers.config import low_temperature
from ..samplers.registry import CANDIDATES_METHOD, PLAIN_METHOD
from .benchmarks import Benchmark, get_benchmark
from .cost import COST_MEASURES, relative_cost
from .results import RESULTS_FILE, SETTINGS_FILE, read_rows
from .stats import mcnemar_exact, paired_bootstrap, wilson_interval
from .tables import format_p

PLOT_FILE = "accuracy_vs_cost.png"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"


def summarize(
    rows: list[dict],
    methods: Sequence[str] | None = None,
    problem_ids: Sequence[str] | None = None,
    *,
    n_boot: int = 10_000,
    benchmark: Benchmark | None = None,
) -> dict:
    """Per-method accuracy and cost, and paired comparisons over the problems every method has finished, with
    the metrics of ``benchmark`` (default: the one the rows name)."""
    if problem_ids is not None:
        wanted = set(problem_ids)
        rows = [r for r in rows if r["problem_id"] in wanted]
    if methods is None:
        methods = list(dict.fromkeys(r["method"] for r in rows))
    by_method = {m: {r["problem_id"]: r for r in rows if r["method"] == m} for m in methods}
    per_method = {m: _method_entry(m, list(by_method[m].values())) for m in methods}
    if by_method.get(PLAIN_METHOD):
        for m in methods:
            per_method[m].update(_cost_vs_sample(by_method[m], by_method[PLAIN_METHOD]))
    comparisons = []
    for a, b in itertools.combinations(methods, 2):
        common = sorted(set(by_method[a]) & set(by_method[b]))
        if common:
            comparisons.append(_paired_comparison(a, b, by_method, common, n_boot))
    prefill = {r["problem_id"]: r["prompt_prefill_s"] for r in rows if r.get("prompt_prefill_s") is not None}
    summary = {
        "methods": per_method,
        "comparisons": comparisons,
        "mean_prompt_prefill_s": _mean(prefill.values()) if prefill else None,
    }
    benchmark = benchmark or _benchmark_of(rows)
    if benchmark is not None:
        benchmark.add_metrics(summary, by_method, n_boot=n_boot)
    return summary


def _benchmark_of(rows: list[dict]) -> Benchmark | None:
    tasks = {r["task"] for r in rows if "task" in r}
    return get_benchmark(tasks.pop()) if len(tasks) == 1 else None


def _method_entry(method: str, mrows: list[dict]) -> dict:
    n = len(mrows)
    k = sum(bool(r["correct"]) for r in mrows)
    lo, hi = wilson_interval(k, n) if n else (0.0, 1.0)
    entry = {
        "problems": n,
        "correct": k,
        "accuracy": k / n if n else None,
        "ci95": [lo, hi],
        "mean_tokens_decoded": _mean(r["tokens_generated"] for r in mrows),
        "mean_final_tokens": _mean(r["final_tokens"] for r in mrows),
        "mean_wall_s": _mean(r["wall_s"] for r in mrows),
        "total_wall_s": float(sum(r["wall_s"] for r in mrows)),
    }
    stops = [r.get("metadata", {}).get("stopped_by") for r in mrows]
    if any(stops):  # an answer cut off by the token cap is usually graded wrong: truncation explains much
        entry["hit_token_cap"] = sum(stop == "length" for stop in stops)
    acc = [r["metadata"].get("acceptance_rate") for r in mrows if "acceptance_rate" in r.get("metadata", {})]
    if acc:
        entry["mean_acceptance_rate"] = float(np.mean(acc))
    used = [r["samples_used"] for r in mrows if "samples_used" in r]
    if used and len(used) == n and method != CANDIDATES_METHOD:  # a vote or quality selection over n samples
        entry["n_values"] = sorted({r.get("n") for r in mrows})
        entry["mean_samples_used"] = float(np.mean(used))
    if method == CANDIDATES_METHOD and mrows:
        entry["n_values"] = sorted({r.get("n") for r in mrows})
        entry["oracle_pass_at_n"] = sum(r.get("candidates_correct", 0) > 0 for r in mrows) / n
    return entry


def _cost_vs_sample(mine: dict[str, dict], sample: dict[str, dict]) -> dict:
    """Decoded tokens and wall time relative to plain sampling's, on the problems both finished."""
    if not set(mine) & set(sample):
        return {}
    return {f"{measure}_cost_vs_sample": relative_cost(mine, sample, key) for measure, key in COST_MEASURES.items()}


def _paired_comparison(a: str, b: str, by_method: dict, common: list[str], n_boot: int) -> dict:
    ca = [bool(by_method[a][p]["correct"]) for p in common]
    cb = [bool(by_method[b][p]["correct"]) for p in common]
    mc = mcnemar_exact(ca, cb)
    bs = paired_bootstrap(ca, cb, n_boot=n_boot, seed=0)
    return {
        "a": a,
        "b": b,
        "problems": len(common),
        "accuracy_a": float(np.mean(ca)),
        "accuracy_b": float(np.mean(cb)),
        "difference_b_minus_a": bs.difference,
        "bootstrap_ci95": [bs.ci_low, bs.ci_high],
        "bootstrap_p": bs.p_value,
        "only_a_correct": mc.only_a,
        "only_b_correct": mc.only_b,
        "mcnemar_exact_p": mc.p_value,
    }


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def plot_accuracy_vs_cost(summary: dict, path: Path, title: str, benchmark: Benchmark | None = None) -> Path | None:
    """Accuracy (Wilson 95% interval), or the benchmark's own headline metric, against mean decoded tokens per
    problem, log-scaled x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(m, s) for m, s in summary["methods"].items() if s["problems"] and s["mean_tokens_decoded"]]
    if not points:
        return None
    benchmark = benchmark or Benchmark()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for m, s in points:
        x = s["mean_tokens_decoded"]
        y, lo, hi = benchmark.plot_point(s)
        ax.errorbar(
            [x],
            [y],
            yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]],
            fmt="o",
            capsize=4,
            label=f"{m} (n={s['problems']})",
        )
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    return save_against_tokens(fig, ax, path, title, benchmark.plot_axis_label, legend_size=8)


def save_against_tokens(fig, ax, path: Path, title: str, ylabel: str, legend_size: int = 8) -> Path:
    """Label a metric-against-decoded-tokens plot (log x axis), save it to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xlabel("decoded tokens per problem (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_summary(
    summary: dict,
    settings: dict | None,
    plot_name: str | None,
    n_boot: int = 10_000,
    benchmark: Benchmark | None = None,
) -> str:
    """The report as markdown: settings, the benchmark's method table and notes, paired comparisons, the plot.
    ``benchmark`` defaults to the one ``settings`` names (else the plain accuracy report)."""
    if benchmark is None:
        benchmark = get_benchmark(settings["task"]) if settings else Benchmark()
    lines = ["# Evaluation summary", ""]
    if settings:
        s = settings
        lines += [
            f"- task **{s['task']}**, model **{s['model']}**, prompt style {s['style']}"
            + (f", {s['shots']} shots" if s.get("shots") is not None else ""),
            f"- alpha {s['alpha']} (low-temp T = {low_temperature(s['alpha']):.3g}), MH steps per block "
            f"{s['n_mcmc']}, block size {s['block_size']}, max new tokens {s['max_new_tokens']}, run seed {s['seed']}"
            + (f", extra sampler parameters {s['extra_params']}" if s.get("extra_params") else ""),
            "",
        ]
    lines += benchmark.method_table(summary)
    if summary.get("mean_prompt_prefill_s") is not None:
        lines += [
            "",
            f"Wall times exclude the prompt prefill, done once per problem before its methods run: "
            f"{summary['mean_prompt_prefill_s']:.2f} s per problem on average.",
        ]
    lines += benchmark.notes(summary)
    if summary["comparisons"]:
        lines += [
            "",
            "## Paired comparisons (same problems)",
            "",
            "| A | B | problems | acc A | acc B | B - A | bootstrap 95% CI | only A right | only B right "
            "| McNemar exact p | bootstrap p |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            lo, hi = c["bootstrap_ci95"]
            lines.append(
                f"| {c['a']} | {c['b']} | {c['problems']} | {c['accuracy_a']:.1%} | {c['accuracy_b']:.1%} | "
                f"{c['difference_b_minus_a']:+.1%} | {lo:+.1%} .. {hi:+.1%} | {c['only_a_correct']} | "
                f"{c['only_b_correct']} | {c['mcnemar_exact_p']:.3g} | {format_p(c['bootstrap_p'], n_boot)} |"
            )
        lines += benchmark.comparison_tables(summary, n_boot)
    if plot_name:
        lines += ["", f"![accuracy against cost]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path, *, methods: Sequence[str] | None = None, problem_ids: Sequence[str] | None = None
) -> dict:
    """Summarize ``out_dir/results.jsonl`` into summary.json, summary.md and the accuracy-vs-cost plot."""
    out = Path(out_dir)
    rows = read_rows(out / RESULTS_FILE)
    settings_path = out / SETTINGS_FILE
    settings = json.loads(settings_path.read_text())["settings"] if settings_path.is_file() else None
    benchmark = get_benchmark(settings["task"]) if settings else None
    summary = summarize(rows, methods, problem_ids, benchmark=benchmark)
    title = f"{settings['task']} - {settings['model']}" if settings else "accuracy against cost"
    plot = plot_accuracy_vs_cost(summary, out / PLOT_FILE, title, benchmark)
    summary["settings"] = settings
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    (out / SUMMARY_MD).write_text(markdown_summary(summary, settings, plot.name if plot else None, benchmark=benchmark))
    return summary
