"""Accuracy against decoded tokens: the cost-quality curve a user picks a method from.

A vote's candidates are independent draws, and a row of ``METHOD+vote@N`` records them in the order drawn
(``draws``: tokens, log p, the answer each votes for, its grade). The first k of them are therefore a k-sample
vote, and an adaptive vote with budget N is the same stream stopped by its rule after a round. So one run at the
largest budget gives every smaller budget and every stopping rule on the same problems and the same samples:
paired by construction, at the cost of one run. ``replay_vote`` and ``replay_adaptive_vote`` re-run the selection
code of the sampler itself (``samplers.base.majority_vote``, ``samplers.votes.vote_stop_reason``) on the records;
a replay at the full budget reproduces the row's own verdict.

Methods without draws (power, SMC, ...) enter the curve as their rows stand, one point each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..samplers.base import majority_vote
from ..samplers.result import Completion
from ..samplers.votes import vote_stop_reason
from .stats import mcnemar_exact, paired_bootstrap, wilson_interval

DEFAULT_BUDGETS = (1, 2, 4, 8)
DEFAULT_RULES = ("unbeatable", "posterior")


@dataclass(frozen=True)
class Outcome:
    correct: bool
    tokens: int
    samples: int


@dataclass
class CurvePoint:
    label: str
    family: str  # points of one family are joined by a line in the plot (one method at several budgets)
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # problem id -> outcome

    @property
    def problems(self) -> int:
        return len(self.outcomes)

    @property
    def correct(self) -> int:
        return sum(o.correct for o in self.outcomes.values())

    @property
    def mean_tokens(self) -> float:
        return float(np.mean([o.tokens for o in self.outcomes.values()])) if self.outcomes else 0.0

    @property
    def mean_samples(self) -> float:
        return float(np.mean([o.samples for o in self.outcomes.values()])) if self.outcomes else 0.0

    def summary(self) -> dict:
        low, high = wilson_interval(self.correct, self.problems)
        return {
            "label": self.label,
            "family": self.family,
            "problems": self.problems,
            "correct": self.correct,
            "accuracy": self.correct / self.problems if self.problems else None,
            "ci95": [low, high],
            "mean_tokens": self.mean_tokens,
            "mean_samples": self.mean_samples,
        }


def _as_completions(draws: Sequence[dict]) -> list[Completion]:
    # the vote reads an answer through the extractor; here the recorded answer is the text it reads
    return [
        Completion([0] * d["tokens"], d["answer"] or "", d["logprob"], d["complete"] and d["answer"] is not None)
        for d in draws
    ]


def _recorded_answer(text: str) -> str | None:
    return text or None


def _pick(draws: Sequence[dict]) -> int:
    """The draw a vote returns: the majority's (ties and the pick within it by mean log p per token), else, with no
    answer to vote on, the draw of highest mean log p, as the sampler does."""
    chosen, _ = majority_vote(_as_completions(draws), _recorded_answer)
    if chosen is not None:
        return chosen
    means = [d["logprob"] / d["tokens"] if d["tokens"] else -np.inf for d in draws]
    return int(np.argmax(means))


def replay_vote(draws: Sequence[dict], k: int) -> Outcome:
    """A vote over the first ``k`` draws."""
    if not 1 <= k <= len(draws):
        raise ValueError(f"a vote over {k} draws needs 1 <= k <= {len(draws)} recorded draws")
    used = list(draws[:k])
    return Outcome(bool(used[_pick(used)]["correct"]), sum(d["tokens"] for d in used), k)


def replay_adaptive_vote(
    draws: Sequence[dict], rule: str, round_size: int = 2, confidence: float = 0.95, budget: int | None = None
) -> Outcome:
    """The vote that draws ``round_size`` samples per round and stops when ``rule`` says so (``samplers.votes``),
    with a budget of ``budget`` draws (default: all recorded)."""
    budget = len(draws) if budget is None else budget
    if not 1 <= budget <= len(draws):
        raise ValueError(f"a budget of {budget} needs 1 <= budget <= {len(draws)} recorded draws")
    used = 0
    while used < budget:
        used = min(budget, used + round_size)
        remaining = budget - used
        if remaining == 0:
            break
        _, vote = majority_vote(_as_completions(draws[:used]), _recorded_answer)
        if vote_stop_reason(vote["votes"], remaining, rule, confidence) is not None:
            break
    return replay_vote(draws, used)


def vote_points(
    rows: Sequence[dict],
    method: str,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    rules: Sequence[str] = DEFAULT_RULES,
    round_size: int = 2,
    confidence: float = 0.95,
) -> list[CurvePoint]:
    """The fixed votes at ``budgets`` and the adaptive votes (each rule, the full recorded budget) replayed from the
    ``draws`` of ``method``'s rows; a budget above a row's draws is skipped for that row."""
    mine = [r for r in rows if r["method"] == method and r.get("draws")]
    if not mine:
        raise ValueError(f"no rows of {method!r} record their draws (run it as METHOD+vote@N)")
    unit = method.partition("+")[0]
    points = []
    for k in budgets:
        point = CurvePoint(f"{unit} vote of {k}" if k > 1 else f"{unit} (one of the draws)", f"{unit}+vote")
        for r in mine:
            if k <= len(r["draws"]):
                point.outcomes[r["problem_id"]] = replay_vote(r["draws"], k)
        points.append(point)
    for rule in rules:
        point = CurvePoint(f"{unit} adaptive vote ({rule}, up to {len(mine[0]['draws'])})", f"{unit}+avote")
        for r in mine:
            point.outcomes[r["problem_id"]] = replay_adaptive_vote(r["draws"], rule, round_size, confidence)
        points.append(point)
    return points


def row_points(rows: Sequence[dict], methods: Sequence[str]) -> list[CurvePoint]:
    """One point per method from its rows as they stand."""
    points = []
    for method in methods:
        point = CurvePoint(method, method)
        for r in rows:
            if r["method"] == method:
                samples = int(r.get("samples_used") or 1)
                point.outcomes[r["problem_id"]] = Outcome(bool(r["correct"]), int(r["tokens_generated"]), samples)
        if point.outcomes:
            points.append(point)
    return points


def paired_against(reference: CurvePoint, point: CurvePoint, n_boot: int = 10_000) -> dict | None:
    """Accuracy difference point - reference on the problems both have, with a paired bootstrap CI and McNemar."""
    common = sorted(set(reference.outcomes) & set(point.outcomes))
    if not common:
        return None
    a = [reference.outcomes[p].correct for p in common]
    b = [point.outcomes[p].correct for p in common]
    boot, mc = paired_bootstrap(a, b, n_boot=n_boot), mcnemar_exact(a, b)
    tokens = np.mean([point.outcomes[p].tokens for p in common]) / max(
        1e-9, np.mean([reference.outcomes[p].tokens for p in common])
    )
    return {
        "reference": reference.label,
        "label": point.label,
        "problems": len(common),
        "difference": boot.difference,
        "ci95": [boot.ci_low, boot.ci_high],
        "mcnemar_p": mc.p_value,
        "only_reference": mc.only_a,
        "only_point": mc.only_b,
        "token_ratio": float(tokens),
    }


def markdown_table(points: Sequence[CurvePoint], reference: CurvePoint | None) -> list[str]:
    head = "| method | problems | accuracy (95% CI) | decoded tokens / problem | samples / problem |"
    rule = "|---|---|---|---|---|"
    if reference is not None:
        head += f" vs {reference.label}: difference (paired 95% CI) | McNemar p | tokens x |"
        rule += "---|---|---|"
    lines = [head, rule]
    for p in points:
        s = p.summary()
        line = (
            f"| {p.label} | {p.problems} | {100 * s['accuracy']:.1f}% ({100 * s['ci95'][0]:.1f}-"
            f"{100 * s['ci95'][1]:.1f}%) | {p.mean_tokens:.0f} | {p.mean_samples:.2f} |"
        )
        if reference is not None:
            cmp = paired_against(reference, p) if p is not reference else None
            if cmp is None:
                line += " - | - | - |"
            else:
                line += (
                    f" {100 * cmp['difference']:+.1f} ({100 * cmp['ci95'][0]:+.1f}..{100 * cmp['ci95'][1]:+.1f}) "
                    f"on {cmp['problems']} | {cmp['mcnemar_p']:.3g} | {cmp['token_ratio']:.2f} |"
                )
        lines.append(line)
    return lines


def plot_curves(points: Sequence[CurvePoint], path, title: str):
    """Accuracy (Wilson 95% interval) against mean decoded tokens per problem; a family's points joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    families: dict[str, list[CurvePoint]] = {}
    for p in points:
        families.setdefault(p.family, []).append(p)
    for family, members in families.items():
        members = sorted(members, key=lambda p: p.mean_tokens)
        xs = [p.mean_tokens for p in members]
        ys = [p.correct / p.problems for p in members]
        cis = [wilson_interval(p.correct, p.problems) for p in members]
        err = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, cis)], [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis)]]
        n = sorted({p.problems for p in members})
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            fmt="o-" if len(members) > 1 else "o",
            capsize=3,
            label=f"{family} (n={'/'.join(map(str, n))})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("decoded tokens per problem (log scale)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
