"""The report of a results file: accuracy with Wilson intervals, paired tests, cost, a plot and a markdown summary.

Costs are measured, never assumed: decoded tokens are what the backend actually drew (every MH proposal, every
best-of-n candidate), wall time is the sampler call's elapsed time. Multipliers are relative to plain sampling
("sample", T=1) on the same problems when it is in the run.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .results import RESULTS_FILE, SETTINGS_FILE, read_rows
from .stats import mcnemar_exact, paired_bootstrap, wilson_interval

PLOT_FILE = "accuracy_vs_cost.png"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"


def summarize(
    rows: list[dict],
    methods: Sequence[str] | None = None,
    problem_ids: Sequence[str] | None = None,
    *,
    n_boot: int = 10_000,
) -> dict:
    """Per-method accuracy and cost, and paired comparisons over the problems every method has finished."""
    if problem_ids is not None:
        wanted = set(problem_ids)
        rows = [r for r in rows if r["problem_id"] in wanted]
    if methods is None:
        methods = list(dict.fromkeys(r["method"] for r in rows))
    by_method = {m: {r["problem_id"]: r for r in rows if r["method"] == m} for m in methods}
    per_method = {m: _method_entry(m, list(by_method[m].values())) for m in methods}
    if by_method.get("sample"):
        for m in methods:
            per_method[m].update(_cost_vs_sample(by_method[m], by_method["sample"]))
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
    if any("node_counts" in r for r in rows):
        _add_plan_metrics(summary, by_method, n_boot=min(n_boot, 2000))
    return summary


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
    if method == "best-of-n" and mrows:
        entry["n_values"] = sorted({r.get("n") for r in mrows})
        entry["oracle_pass_at_n"] = sum(r.get("candidates_correct", 0) > 0 for r in mrows) / n
    return entry


def _cost_vs_sample(mine: dict[str, dict], sample: dict[str, dict]) -> dict:
    """Decoded tokens and wall time over plain sampling's, on the problems both finished."""
    common = set(mine) & set(sample)
    if not common:
        return {}
    tok_m = sum(mine[p]["tokens_generated"] for p in common)
    tok_s = sum(sample[p]["tokens_generated"] for p in common)
    wall_m = sum(mine[p]["wall_s"] for p in common)
    wall_s = sum(sample[p]["wall_s"] for p in common)
    return {
        "token_cost_vs_sample": tok_m / tok_s if tok_s else None,
        "time_cost_vs_sample": wall_m / wall_s if wall_s else None,
    }


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


def _add_plan_metrics(summary: dict, by_method: dict[str, dict[str, dict]], *, n_boot: int) -> None:
    """TaskBench's graph metrics per method (with breakdowns by record type and gold plan size), paired
    differences of node and edge F1, and how the plans' quality score ranks against their node and edge F1."""
    from scipy.stats import spearmanr

    from .taskbench import bootstrap_metric_ci, f1, paired_metric_difference, pooled_metrics

    for method, rows_by_id in by_method.items():
        rows = list(rows_by_id.values())
        entry = summary["methods"][method]
        entry.update(pooled_metrics(rows))
        entry["ci95_f1"] = bootstrap_metric_ci(rows, n_boot=n_boot)
        entry["valid_rate"] = float(np.mean([bool(r["valid"]) for r in rows])) if rows else None
        entry["mean_quality_score"] = _mean(r["quality_score"] for r in rows)
        for key, group in (
            ("by_type", lambda r: str(r.get("type"))),
            ("by_gold_nodes", lambda r: str(r.get("gold_nodes"))),
        ):
            groups: dict[str, list[dict]] = {}
            for r in rows:
                groups.setdefault(group(r), []).append(r)
            entry[key] = {name: _group_f1(g) for name, g in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))}
    for comparison in summary["comparisons"]:
        a, b = by_method[comparison["a"]], by_method[comparison["b"]]
        common = sorted(set(a) & set(b))
        comparison.update(
            {
                f"{metric}_difference_b_minus_a": value
                for metric, value in paired_metric_difference(
                    [a[p] for p in common], [b[p] for p in common], n_boot=n_boot
                ).items()
            }
        )
    plans = [r for rows_by_id in by_method.values() for r in rows_by_id.values() if r.get("valid")]

    def record_f1(counts) -> float:
        return 1.0 if not any(counts) else f1(counts)

    if len(plans) >= 3:
        quality = [r["quality_score"] for r in plans]

        def rho(key: str) -> float | None:  # undefined (None) when either side is constant
            truth = [record_f1(r[key]) for r in plans]
            if len(set(quality)) < 2 or len(set(truth)) < 2:
                return None
            return float(spearmanr(quality, truth).statistic)

        summary["quality_score_spearman"] = {
            "plans": len(plans),
            "node_f1": rho("node_counts"),
            "edge_f1": rho("edge_counts"),
        }
        summary["quality_score_within_record"] = _within_record_agreement(plans, record_f1)


def _within_record_agreement(plans: list[dict], record_f1) -> dict:
    """What selecting by the quality score relies on: among two plans for the same record that differ in both
    quality score and F1, how often the higher-scored one has the higher F1 (0.5 is chance)."""
    by_record: dict[str, list[dict]] = {}
    for r in plans:
        by_record.setdefault(r["problem_id"], []).append(r)
    out = {}
    for metric, key in (("node_f1", "node_counts"), ("edge_f1", "edge_counts")):
        agree = pairs = 0
        for rows in by_record.values():
            for i, a in enumerate(rows):
                for b in rows[i + 1 :]:
                    dq, df = a["quality_score"] - b["quality_score"], record_f1(a[key]) - record_f1(b[key])
                    if dq and df:
                        pairs += 1
                        agree += (dq > 0) == (df > 0)
        out[metric] = {"pairs": pairs, "agreement": agree / pairs if pairs else None}
    return out


def _group_f1(rows: list[dict]) -> dict:
    """Node and edge F1 of one breakdown group; None where neither the gold nor the plans have any (single-tool
    records have no links: an F1 of 0 there would read as every plan wrong)."""
    from .taskbench import f1

    out: dict = {"records": len(rows)}
    for metric, key in (("node_f1", "node_counts"), ("edge_f1", "edge_counts")):
        counts = np.sum([r[key] for r in rows], axis=0)
        out[metric] = f1(counts) if counts.any() else None
    return out


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def plot_accuracy_vs_cost(summary: dict, path: Path, title: str) -> Path | None:
    """Accuracy (Wilson 95% interval) against mean decoded tokens per problem, log-scaled x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(m, s) for m, s in summary["methods"].items() if s["problems"] and s["mean_tokens_decoded"]]
    if not points:
        return None
    plans = all("node_f1" in s for _, s in points)  # TaskBench: node F1 with its bootstrap interval
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for m, s in points:
        x, y = s["mean_tokens_decoded"], s["node_f1"] if plans else s["accuracy"]
        lo, hi = s["ci95_f1"].get("node_f1", (y, y)) if plans else s["ci95"]
        ax.errorbar(
            [x],
            [y],
            yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]],
            fmt="o",
            capsize=4,
            label=f"{m} (n={s['problems']})",
        )
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("decoded tokens per problem (log scale)")
    ax.set_ylabel("node F1 (95% bootstrap interval)" if plans else "accuracy (95% Wilson interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _p_value(p: float, n_boot: int) -> str:
    return f"< {1 / n_boot:.0e}" if p == 0 else f"{p:.3g}"


def _accuracy_table(summary: dict) -> list[str]:
    lines = []
    lines += [
        "| method | problems | correct | accuracy | 95% CI (Wilson) | decoded tokens / problem | token cost x sample "
        "| wall s / problem | time x sample | final tokens | hit the token cap | MH acceptance |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summary["methods"].items():
        lo, hi = s["ci95"]
        acc = "-" if s["accuracy"] is None else f"{s['accuracy']:.1%}"
        name = m + (f" (n={','.join(map(str, s['n_values']))})" if s.get("n_values") else "")
        lines.append(
            f"| {name} | {s['problems']} | {s['correct']} | {acc} | {lo:.1%} - {hi:.1%} | "
            f"{_fmt(s['mean_tokens_decoded'])} | {_fmt(s.get('token_cost_vs_sample'), '.2f')} | "
            f"{_fmt(s['mean_wall_s'], '.2f')} | {_fmt(s.get('time_cost_vs_sample'), '.2f')} | "
            f"{_fmt(s['mean_final_tokens'])} | {_fmt(s.get('hit_token_cap'), 'd')} | "
            f"{_fmt(s.get('mean_acceptance_rate'), '.1%')} |"
        )
    return lines


def _plan_tables(summary: dict) -> list[str]:
    """TaskBench's graph metrics per method, the breakdowns, and the quality score against the truth."""

    def ci(entry: dict, metric: str) -> str:
        low, high = entry.get("ci95_f1", {}).get(metric, (None, None))
        return f"{entry[metric]:.3f} ({low:.2f}-{high:.2f})" if low is not None else f"{entry[metric]:.3f}"

    lines = [
        "| method | records | valid | node F1 (95% CI) | edge F1 (95% CI) | t-F1 | v-F1 | edit distance | exact graph "
        "match | quality score | decoded tokens / record | token cost x sample | wall s / record | time x sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, e in summary["methods"].items():
        name = m + (f" (n={','.join(map(str, e['n_values']))})" if e.get("n_values") else "")
        lines.append(
            f"| {name} | {e['problems']} | {_fmt(e.get('valid_rate'), '.0%')} | {ci(e, 'node_f1')} | "
            f"{ci(e, 'edge_f1')} | {e['arg_name_f1']:.3f} | {e['arg_value_f1']:.3f} | {e['edit_distance']:.3f} | "
            f"{e['correct']}/{e['problems']} | {_fmt(e.get('mean_quality_score'), '.2f')} | "
            f"{_fmt(e['mean_tokens_decoded'])} | {_fmt(e.get('token_cost_vs_sample'), '.2f')} | "
            f"{_fmt(e['mean_wall_s'], '.2f')} | {_fmt(e.get('time_cost_vs_sample'), '.2f')} |"
        )
    for key, title in (("by_type", "record type"), ("by_gold_nodes", "gold plan size (nodes)")):
        groups = list(dict.fromkeys(g for e in summary["methods"].values() for g in e.get(key, {})))
        lines += [
            "",
            f"Node F1 / edge F1 by {title} (records; n/a: no gold or predicted links in that group):",
            "",
            "| method | " + " | ".join(groups) + " |",
            "|---|" + "---|" * len(groups),
        ]
        for m, e in summary["methods"].items():
            cells = []
            for g in groups:
                v = e.get(key, {}).get(g)
                cells.append(
                    f"{_fmt(v['node_f1'], '.2f', 'n/a')} / {_fmt(v['edge_f1'], '.2f', 'n/a')} ({v['records']})"
                    if v
                    else "-"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    rho = summary.get("quality_score_spearman")
    if rho:
        lines += [
            "",
            f"Quality score against the truth, over {rho['plans']} valid plans: Spearman rho "
            f"{_fmt(rho['node_f1'], '+.2f', 'n/a')} with the plan's node F1, "
            f"{_fmt(rho['edge_f1'], '+.2f', 'n/a')} with its edge F1.",
        ]
    within = summary.get("quality_score_within_record")
    if within:
        cells = [
            f"{name} F1 {_fmt(within[m]['agreement'], '.0%')} of {within[m]['pairs']} pairs"
            for m, name in (("node_f1", "node"), ("edge_f1", "edge"))
        ]
        lines += [
            "",
            "Two plans for the same record that differ in quality score and in F1: the higher-scored plan has the "
            f"higher {' and '.join(cells)} (50% is chance).",
        ]
    return lines


def markdown_summary(summary: dict, settings: dict | None, plot_name: str | None, n_boot: int = 10_000) -> str:
    lines = ["# Evaluation summary", ""]
    if settings:
        s = settings
        lines += [
            f"- task **{s['task']}**, model **{s['model']}**, prompt style {s['style']}"
            + (f", {s['shots']} shots" if s.get("shots") is not None else ""),
            f"- alpha {s['alpha']} (low-temp T = {1 / s['alpha']:.3g}), MH steps per block {s['n_mcmc']}, block size "
            f"{s['block_size']}, max new tokens {s['max_new_tokens']}, run seed {s['seed']}"
            + (f", extra sampler parameters {s['extra_params']}" if s.get("extra_params") else ""),
            "",
        ]
    plan_metrics = any("node_f1" in m for m in summary["methods"].values())
    lines += _plan_tables(summary) if plan_metrics else _accuracy_table(summary)
    if summary.get("mean_prompt_prefill_s") is not None:
        lines += [
            "",
            f"Wall times exclude the prompt prefill, done once per problem before its methods run: "
            f"{summary['mean_prompt_prefill_s']:.2f} s per problem on average.",
        ]
    bon = summary["methods"].get("best-of-n")
    if bon and bon.get("oracle_pass_at_n") is not None and not plan_metrics:
        lines += [
            "",
            f"best-of-n picks by mean log-probability; with an oracle picking any correct candidate it would "
            f"score {bon['oracle_pass_at_n']:.1%} (pass@n, not a fair comparison).",
        ]
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
                f"{c['only_b_correct']} | {c['mcnemar_exact_p']:.3g} | {_p_value(c['bootstrap_p'], n_boot)} |"
            )
        if plan_metrics:
            lines += [
                "",
                "(acc: exact graph match, the node set and the link set both equal to the gold ones)",
                "",
                "| A | B | node F1 B - A (95% CI, p) | edge F1 B - A (95% CI, p) |",
                "|---|---|---|---|",
            ]
            for c in summary["comparisons"]:
                cells = []
                for metric in ("node_f1", "edge_f1"):
                    d = c[f"{metric}_difference_b_minus_a"]
                    lo, hi = d["ci95"]
                    cells.append(f"{d['difference']:+.3f} ({lo:+.3f} .. {hi:+.3f}, p {_p_value(d['p'], n_boot)})")
                lines.append(f"| {c['a']} | {c['b']} | " + " | ".join(cells) + " |")
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
    summary = summarize(rows, methods, problem_ids)
    title = f"{settings['task']} - {settings['model']}" if settings else "accuracy against cost"
    plot = plot_accuracy_vs_cost(summary, out / PLOT_FILE, title)
    summary["settings"] = settings
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    (out / SUMMARY_MD).write_text(markdown_summary(summary, settings, plot.name if plot else None))
    return summary
