"""The headline metric against decoded tokens: the cost-quality curve a user picks a method from.

A selection's candidates are independent draws, and a row of ``METHOD+vote@N`` (or ``METHOD+quality@N``) records
them in the order drawn (``draws``: tokens, log p, the answer each votes for, its quality score, its grade). The
first k of them are therefore a k-sample selection, and an adaptive selection with budget N is the same stream
stopped by its rule after a round. So one run at the largest budget gives every smaller budget and every stopping
rule on the same problems and the same samples: paired by construction, for the cost of one run. The replays run
the sampler's own rules (``samplers.base.majority_vote`` and ``parts_choice``, ``samplers.votes.vote_stop_reason``,
and the quality selection's order of ``baselines.TemperatureSampler``); a replay at the full budget reproduces the
row's verdict.

Methods without draws (power, SMC, ...) enter as their rows stand, one point each. The metric and its intervals
are the benchmark's (``Benchmark.curve_metric``): accuracy with Wilson intervals, TaskBench's pooled node F1 with
bootstrap intervals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..samplers.base import majority_vote, parts_choice
from ..samplers.config import PARTS_RULES
from ..samplers.registry import CANDIDATES_METHOD
from ..samplers.result import Completion
from ..samplers.votes import vote_stop_reason
from .benchmarks import Benchmark
from .report import save_against_tokens
from .runner import PARTS_SELECTIONS, QUALITY, VOTE, split_method

DEFAULT_BUDGETS = (1, 2, 4, 8)
VOTE_RULES = ("unbeatable", "posterior")
# the fixed selections whose draws can be replayed, and the word their points are labelled with
SELECTIONS = {VOTE: "majority", QUALITY: "quality", **PARTS_SELECTIONS}
WORDS = {"majority": "vote", "quality": "best quality", "coverage": "coverage", "consensus": "consensus"}
LIKELIEST = CANDIDATES_METHOD  # its candidates replay too: the one of highest mean log p among the first k


def replayable(method: str) -> bool:
    """Whether ``method``'s recorded draws give points at smaller budgets (``selection_points``)."""
    name = method.partition("@")[0]
    return name == LIKELIEST or any(name.endswith(s) for s in SELECTIONS)


@dataclass(frozen=True)
class Outcome:
    graded: dict  # ``correct`` and the grade's fields of the output returned
    tokens: int
    samples: int | None  # outputs drawn (candidates, chains, particles); None where a row does not say

    @property
    def correct(self) -> bool:
        return bool(self.graded["correct"])


@dataclass
class CurvePoint:
    label: str
    family: str  # one method at several budgets: joined by a line in the plot
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # problem id -> outcome

    @property
    def problems(self) -> int:
        return len(self.outcomes)

    @property
    def mean_tokens(self) -> float:
        return float(np.mean([o.tokens for o in self.outcomes.values()])) if self.outcomes else 0.0

    @property
    def mean_samples(self) -> float | None:
        samples = [o.samples for o in self.outcomes.values()]
        return float(np.mean(samples)) if samples and None not in samples else None

    def summary(self, benchmark: Benchmark) -> dict:
        value, low, high = benchmark.curve_metric([o.graded for o in self.outcomes.values()])
        return {
            "label": self.label,
            "family": self.family,
            "problems": self.problems,
            "metric": benchmark.curve_metric_name,
            "value": value,
            "ci95": [low, high],
            "mean_tokens": self.mean_tokens,
            "mean_samples": self.mean_samples,
        }


def _graded(draw: dict) -> dict:
    return {**draw.get("fields", {}), "correct": bool(draw["correct"])}


def _mean_logp(draw: dict) -> float:
    return draw["logprob"] / draw["tokens"] if draw["tokens"] else -np.inf


def _as_completions(draws: Sequence[dict]) -> list[Completion]:
    # the vote reads each answer through an extractor; here the recorded answer is the text it reads
    return [
        Completion([0] * d["tokens"], d["answer"] or "", d["logprob"], d["complete"] and d["answer"] is not None)
        for d in draws
    ]


def _recorded_answer(text: str) -> str | None:
    return text or None


def _voting_on_parts(draw: dict) -> dict:
    """A candidate that votes for its parts as a multiset (the calls of a turn, in any order; [] for a text answer):
    the answer a vote over canonical call sets compares, for candidates recorded without one."""
    parts = draw.get("parts")
    return {**draw, "answer": None if parts is None else json.dumps(sorted(parts), ensure_ascii=False)}


def _by_parts(draws: Sequence[dict], rule: str) -> int | None:
    # each completion's text is its index; the parts are the ones recorded for that draw
    completions = [
        Completion([0] * d["tokens"], str(i), d["logprob"], d["complete"] and d.get("parts") is not None)
        for i, d in enumerate(draws)
    ]
    return parts_choice(completions, lambda i: draws[int(i)]["parts"], rule)[0]


def _pick(draws: Sequence[dict], select: str) -> int:
    """The draw a selection returns, as the sampler picks it: a vote's majority (ties and the pick within it by
    mean log p per token), or the highest quality score (the later draw on a tie); with no answer or no score, and
    for best-of-n (``likeliest``), the draw of highest mean log p."""
    if len(draws) == 1:
        return 0
    if select == "majority":
        chosen, _ = majority_vote(_as_completions(draws), _recorded_answer)
        if chosen is not None:
            return chosen
    elif select in PARTS_RULES:
        chosen = _by_parts(draws, select)
        if chosen is not None:
            return chosen
    elif select == "quality":
        scored = [(d["quality_score"], i) for i, d in enumerate(draws) if d.get("quality_score") is not None]
        if scored:
            return max(scored)[1]
    return int(np.argmax([_mean_logp(d) for d in draws]))


def replay(draws: Sequence[dict], k: int, select: str = "majority") -> Outcome:
    """The selection (``majority``, ``quality``, ``coverage``, ``consensus`` or best-of-n's ``likeliest``) over the
    first ``k`` draws."""
    if not 1 <= k <= len(draws):
        raise ValueError(f"a selection over {k} draws needs 1 <= k <= {len(draws)} recorded draws")
    used = list(draws[:k])
    return Outcome(_graded(used[_pick(used, select)]), sum(d["tokens"] for d in used), k)


def replay_adaptive_vote(draws: Sequence[dict], rule: str, round_size: int = 2, confidence: float = 0.95) -> Outcome:
    """The vote that draws ``round_size`` samples per round and stops when ``rule`` says so (``samplers.votes``);
    its budget is the number of draws recorded."""
    budget, used = len(draws), 0
    while used < budget:
        used = min(budget, used + round_size)
        if used == budget:
            break
        _, vote = majority_vote(_as_completions(draws[:used]), _recorded_answer)
        if vote_stop_reason(vote["votes"], budget - used, rule, confidence) is not None:
            break
    return replay(draws, used, "majority")


def replay_adaptive_quality(draws: Sequence[dict], margin: float, round_size: int = 2) -> Outcome:
    """The quality selection that draws ``round_size`` samples per round and stops after the first round that does
    not raise the best score by more than ``margin`` (rounds before any scored output never stop it)."""
    budget, used, best = len(draws), 0, -np.inf
    while used < budget:
        used = min(budget, used + round_size)
        previous = best
        best = max([best] + [d["quality_score"] for d in draws[:used] if d.get("quality_score") is not None])
        if used < budget and np.isfinite(best) and not best > previous + margin:
            break
    return replay(draws, used, "quality")


def selection_points(
    rows: Sequence[dict],
    method: str,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    *,
    round_size: int = 2,
    confidence: float = 0.95,
    margins: Sequence[float] = (0.0, 0.05),
) -> list[CurvePoint]:
    """The fixed selections at ``budgets`` and the adaptive ones (each vote rule, or each quality margin; with the
    full recorded budget) replayed from the ``draws`` of ``method``'s rows (a ``METHOD+vote@N`` or
    ``METHOD+quality@N``, ``METHOD+cover@N``, or best-of-n's candidates); a budget above a row's draws is left out
    for that row."""
    mine = [r for r in rows if r["method"] == method and r.get("draws")]
    if not mine:
        raise ValueError(f"no rows of {method!r} record their draws (run it as METHOD+vote@N or METHOD+quality@N)")
    if not replayable(method):
        raise ValueError(
            f"{method!r} is neither a fixed selection ({', '.join(SELECTIONS)}) nor {LIKELIEST}: "
            "its draws do not replay"
        )
    name = method.partition("@")[0]
    most = max(len(r["draws"]) for r in mine)
    budgets = sorted({k for k in budgets if k <= most} | {most})
    if name == LIKELIEST:  # best of k; where the candidates record their answers' parts, also chosen among by parts
        points = _first_k_points(mine, method, budgets, "likeliest", "best of {}", name)
        if all("parts" in d for r in mine for d in r["draws"]):  # one draw is the same pick: k from 2
            wider = [k for k in budgets if k > 1]
            for rule in PARTS_RULES:
                points += _first_k_points(mine, f"{method} {rule}", wider, rule, f"{WORDS[rule]} of {{}}", None)
            voting = [{**r, "draws": [_voting_on_parts(d) for d in r["draws"]]} for r in mine]
            points += _first_k_points(voting, f"{method} vote", wider, "majority", "vote of {}", None)
        return points
    suffix = next(s for s in SELECTIONS if name.endswith(s))
    unit, select = name.removesuffix(suffix), SELECTIONS[suffix]
    what = WORDS[select]
    points = _first_k_points(mine, method, budgets, select, f"{unit} {what} of {{}}", unit)
    if select in PARTS_RULES:  # no adaptive form
        return points
    adaptive = (
        [(f"{rule}", lambda d, rule=rule: replay_adaptive_vote(d, rule, round_size, confidence)) for rule in VOTE_RULES]
        if select == "majority"
        else [(f"margin {m:g}", lambda d, m=m: replay_adaptive_quality(d, m, round_size)) for m in margins]
    )
    for rule, run in adaptive:
        point = CurvePoint(f"{unit} adaptive {what} ({rule}, up to {most})", f"{unit}+a{suffix[1:]} ({rule})")
        for r in mine:
            point.outcomes[r["problem_id"]] = run(r["draws"])
        points.append(point)
    return points


def _first_k_points(
    rows: Sequence[dict], family: str, budgets: Sequence[int], select: str, of_k: str, one: str | None
) -> list[CurvePoint]:
    """The selection ``select`` over the first k draws of each row, for each budget k (a row with fewer draws is
    left out of that point); k = 1 is labelled as one draw of ``one`` where given."""
    points = []
    for k in budgets:
        label = f"{one} (one of the draws)" if k == 1 and one is not None else of_k.format(k)
        point = CurvePoint(label, f"{family}, first k")
        for r in rows:
            if k <= len(r["draws"]):
                point.outcomes[r["problem_id"]] = replay(r["draws"], k, select)
        points.append(point)
    return points


def row_points(rows: Sequence[dict], methods: Sequence[str]) -> list[CurvePoint]:
    """One point per method from its rows as they stand; a selection run at several budgets (``smc+vote@2``,
    ``smc+vote``) is one family, joined in the plot."""
    points = []
    for method in methods:
        point = CurvePoint(method, method.partition("@")[0])
        for r in rows:
            if r["method"] == method:
                params = r.get("params", {})
                counted = [r.get("samples_used"), params.get("n"), params.get("n_chains"), params.get("n_particles")]
                samples = next((int(c) for c in counted if c is not None), None)
                if samples is None and split_method(method)[1] is None:
                    samples = 1
                point.outcomes[r["problem_id"]] = Outcome(r, int(r["tokens_generated"]), samples)
        if point.outcomes:
            points.append(point)
    return points


def paired_against(reference: CurvePoint, point: CurvePoint, benchmark: Benchmark) -> dict | None:
    """The point's metric minus the reference's on the problems both have (paired), and the token ratio."""
    common = sorted(set(reference.outcomes) & set(point.outcomes))
    if not common:
        return None
    difference = benchmark.curve_difference(
        [reference.outcomes[p].graded for p in common], [point.outcomes[p].graded for p in common]
    )
    tokens = np.mean([point.outcomes[p].tokens for p in common]) / max(
        1e-9, np.mean([reference.outcomes[p].tokens for p in common])
    )
    return {
        "reference": reference.label,
        "label": point.label,
        "problems": len(common),
        **difference,
        "token_ratio": float(tokens),
    }


def _number(value: float, benchmark: Benchmark, signed: bool = False) -> str:
    if benchmark.curve_metric_name == "accuracy":
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}%"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def markdown_table(points: Sequence[CurvePoint], reference: CurvePoint | None, benchmark: Benchmark) -> list[str]:
    metric = benchmark.curve_metric_name
    head = f"| method | problems | {metric} (95% CI) | decoded tokens / problem | samples / problem |"
    rule = "|---|---|---|---|---|"
    if reference is not None:
        head += f" vs {reference.label}: difference (paired 95% CI) | p | tokens x |"
        rule += "---|---|---|"
    lines = [head, rule]
    for p in points:
        s = p.summary(benchmark)
        low, high = s["ci95"]
        line = (
            f"| {p.label} | {p.problems} | {_number(s['value'], benchmark)} ({_number(low, benchmark)} - "
            f"{_number(high, benchmark)}) | {p.mean_tokens:.0f} | "
            f"{'-' if p.mean_samples is None else f'{p.mean_samples:.2f}'} |"
        )
        if reference is not None:
            cmp = paired_against(reference, p, benchmark) if p is not reference else None
            if cmp is None:
                line += " - | - | - |"
            else:
                line += (
                    f" {_number(cmp['difference'], benchmark, True)} ({_number(cmp['ci95'][0], benchmark, True)}.."
                    f"{_number(cmp['ci95'][1], benchmark, True)}) on {cmp['problems']} | {cmp['p']:.3g} | "
                    f"{cmp['token_ratio']:.2f} |"
                )
        lines.append(line)
    return lines


def plot_curves(points: Sequence[CurvePoint], path, title: str, benchmark: Benchmark):
    """The metric (95% interval) against mean decoded tokens per problem; a family's points joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    families: dict[str, list[CurvePoint]] = {}
    for p in points:
        families.setdefault(p.family, []).append(p)
    for family, members in families.items():
        members = sorted(members, key=lambda p: p.mean_tokens)
        summaries = [p.summary(benchmark) for p in members]
        ys = [s["value"] for s in summaries]
        err = [
            [max(0.0, s["value"] - s["ci95"][0]) for s in summaries],
            [max(0.0, s["ci95"][1] - s["value"]) for s in summaries],
        ]
        n = "/".join(map(str, sorted({p.problems for p in members})))
        style = "o-" if len(members) > 1 else "o"
        ax.errorbar([p.mean_tokens for p in members], ys, yerr=err, fmt=style, capsize=3, label=f"{family} (n={n})")
    return save_against_tokens(fig, ax, path, title, f"{benchmark.curve_metric_name} (95% interval)", legend_size=7)
