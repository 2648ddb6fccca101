"""The tables of a run's markdown report that a benchmark may reuse in its own (``Benchmark.method_table``,
``Benchmark.notes``): the accuracy table per method, the oracle note, and the number formats they share."""

from __future__ import annotations

from ..samplers.registry import CANDIDATES_METHOD


def fmt(value, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_p(p: float, n_boot: int) -> str:
    return f"< {1 / n_boot:.0e}" if p == 0 else f"{p:.3g}"


def oracle_note(summary: dict) -> list[str]:
    """What best-of-n would score if an oracle picked its candidate (pass@n)."""
    entry = summary["methods"].get(CANDIDATES_METHOD)
    if not entry or entry.get("oracle_pass_at_n") is None:
        return []
    return [
        "",
        f"{CANDIDATES_METHOD} picks by mean log-probability; with an oracle picking any correct candidate it would "
        f"score {entry['oracle_pass_at_n']:.1%} (pass@n, not a fair comparison).",
    ]


def method_label(method: str, entry: dict) -> str:
    """A method's name in a report table, with its n values and, for an adaptive selection, the mean samples used."""
    parts = [f"n={','.join(map(str, entry['n_values']))}"] if entry.get("n_values") else []
    if entry.get("mean_samples_used") is not None:
        parts.append(f"{entry['mean_samples_used']:.2f} used")
    return method + (f" ({', '.join(parts)})" if parts else "")


def accuracy_table(summary: dict) -> list[str]:
    lines = []
    lines += [
        "| method | problems | correct | accuracy | 95% CI (Wilson) | decoded tokens / problem | token cost x sample "
        "| wall s / problem | time x sample | final tokens | hit the token cap | MH acceptance |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summary["methods"].items():
        lo, hi = s["ci95"]
        acc = "-" if s["accuracy"] is None else f"{s['accuracy']:.1%}"
        name = method_label(m, s)
        lines.append(
            f"| {name} | {s['problems']} | {s['correct']} | {acc} | {lo:.1%} - {hi:.1%} | "
            f"{fmt(s['mean_tokens_decoded'])} | {fmt(s.get('token_cost_vs_sample'), '.2f')} | "
            f"{fmt(s['mean_wall_s'], '.2f')} | {fmt(s.get('time_cost_vs_sample'), '.2f')} | "
            f"{fmt(s['mean_final_tokens'])} | {fmt(s.get('hit_token_cap'), 'd')} | "
            f"{fmt(s.get('mean_acceptance_rate'), '.1%')} |"
        )
    return lines
