"""The benchmark's headline metric against decoded tokens per problem, from one evaluation folder: the curve a user
picks a method from.

Every method's rows give one point. A ``METHOD+vote@N`` or ``METHOD+quality@N`` method, whose rows record their
draws, gives a curve: its selection over the first 1, 2, 4, ... N draws, and its adaptive selections replayed on
the same draws (votes: ``unbeatable`` and ``posterior``; quality: stop once a round does not raise the best score by
more than a margin) (``powersampling.eval.curves``). Each point is compared with the reference method (default
``low-temp``) on the problems both ran: the paired difference with its bootstrap 95% interval, the test's p (McNemar
for accuracy) and the token ratio. ``--by FIELD`` adds the same table per value of a graded field (BFCL's
``category``), ``--indices A:B`` keeps the problems whose run index is in [A, B) (a held-out part of a run).
Writes accuracy_vs_tokens.{png,md,json} into the folder (or --out).

Several folders of the same task (two models, two prompts, two settings) give one figure: each point is labelled
with its folder's name (``--names``, default the folder names), ``"NAME: METHOD"``, and the pairing is by problem
id, so a point of one folder is compared with the reference of another on the problems both ran. ``--out`` is then
required.

    python benchmarks/accuracy_vs_tokens.py benchmarks/results/gsm8k-qwen05-3shot [--reference low-temp]
        [--budgets 1,2,4,8] [--round-size 2] [--confidence 0.95] [--margins 0,0.05] [--by category]
        [--indices 250:500]
    python benchmarks/accuracy_vs_tokens.py runs/old-prompt runs/new-prompt --names old,new \
        --reference "old: greedy" --out runs/prompts
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from powersampling.eval.benchmarks import get_benchmark
from powersampling.eval.curves import (
    CurvePoint,
    markdown_table,
    paired_against,
    plot_curves,
    replayable,
    row_points,
    selection_points,
)
from powersampling.eval.results import RESULTS_FILE, read_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="evaluation folders (results.jsonl) of one task")
    parser.add_argument(
        "--reference",
        default="low-temp",
        help="the point every other is paired against: a method of the run or a replayed point's label "
        "('low-temp vote of 8'); with several folders, 'NAME: METHOD'",
    )
    parser.add_argument("--names", default=None, help="comma-separated names of the folders (default: their names)")
    parser.add_argument("--budgets", default="1,2,4,8", help="vote budgets replayed from recorded draws")
    parser.add_argument("--round-size", type=int, default=2, help="draws per round of a replayed adaptive vote")
    parser.add_argument("--confidence", type=float, default=0.95, help="the posterior rule's confidence")
    parser.add_argument("--margins", default="0,0.05", help="quality margins of the replayed adaptive selections")
    parser.add_argument("--by", default=None, help="also a table per value of this graded field (e.g. category)")
    parser.add_argument("--indices", default=None, help="A:B keeps the problems of run index A <= i < B")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the run folder)")
    args = parser.parse_args(argv)
    try:
        names = _names(args.runs, args.names, args.out)
        indices = _indices(args.indices)
        runs = {name: _rows(run, indices) for name, run in zip(names, args.runs)}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tasks = {rows[0]["task"] for rows in runs.values()}
    if len(tasks) > 1:
        print(
            f"error: the folders hold different tasks ({', '.join(sorted(tasks))}); pair runs of one task",
            file=sys.stderr,
        )
        return 2
    first = next(iter(runs.values()))
    benchmark = get_benchmark(first[0]["task"])
    points: list[CurvePoint] = []
    for name, rows in runs.items():
        own = _points(rows, args)
        points += [_named(p, name) for p in own] if len(runs) > 1 else own
    reference = next((p for p in points if p.label == args.reference), None)
    if reference is None:
        labels = ", ".join(repr(p.label) for p in points)
        print(f"error: no point is named {args.reference!r}; --reference takes one of {labels}", file=sys.stderr)
        return 2
    groups: dict[str, list[CurvePoint]] = {}  # field value -> the points on its problems, the reference first
    if args.by is not None:
        values = {o.graded.get(args.by) for o in reference.outcomes.values()}
        if values == {None}:
            print(f"error: the rows' grades have no field {args.by!r}", file=sys.stderr)
            return 2
        for value in sorted(values, key=str):
            within = [_within(p, reference, args.by, value) for p in points]
            groups[str(value)] = [within.pop(points.index(reference)), *within]
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    models = ", ".join(dict.fromkeys(rows[0]["model"] for rows in runs.values()))
    title = f"{first[0]['task']}, {models}: {benchmark.curve_metric_name} against decoded tokens"
    plot_curves(points, out / "accuracy_vs_tokens.png", title, benchmark)
    table = markdown_table(points, reference, benchmark)
    for value, (own_reference, *others) in groups.items():
        table += ["", f"{args.by} = {value}:", "", *markdown_table([own_reference, *others], own_reference, benchmark)]
    (out / "accuracy_vs_tokens.md").write_text("\n".join([f"# {title}", "", *table, ""]))
    document = {
        "run": str(args.runs[0]) if len(runs) == 1 else {name: str(run) for name, run in zip(names, args.runs)},
        "reference": args.reference,
        "round_size": args.round_size,
        "confidence": args.confidence,
        "points": [p.summary(benchmark) for p in points],
        "paired": [c for p in points if p is not reference and (c := paired_against(reference, p, benchmark))],
        "by": {
            value: [c for p in others if (c := paired_against(own_reference, p, benchmark))]
            for value, (own_reference, *others) in groups.items()
        },
        "indices": args.indices,
    }
    (out / "accuracy_vs_tokens.json").write_text(json.dumps(document, indent=2))
    print("\n".join(table))
    return 0


def _names(runs: list[Path], names: str | None, out: Path | None) -> list[str]:
    """One name per folder, each different; several folders need an output folder of their own."""
    chosen = [n.strip() for n in names.split(",")] if names is not None else [r.resolve().name for r in runs]
    if len(chosen) != len(runs):
        raise ValueError(f"--names gives {len(chosen)} name(s) for {len(runs)} folder(s)")
    if len(set(chosen)) != len(chosen) or not all(chosen):
        raise ValueError(
            f"the folders need different, non-empty names (got {', '.join(map(repr, chosen))}): use --names"
        )
    if len(runs) > 1 and out is None:
        raise ValueError("with several folders, --out names the folder the comparison is written to")
    return chosen


def _indices(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--indices takes A:B, two whole numbers (got {text!r})") from None
    return low, high


def _rows(run: Path, indices: tuple[int, int] | None) -> list[dict]:
    path = run / RESULTS_FILE
    if not path.is_file():
        raise ValueError(f"{run} holds no {RESULTS_FILE}")
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no rows yet")
    if indices is not None:
        low, high = indices
        rows = [r for r in rows if low <= int(r["index"]) < high]
        if not rows:
            raise ValueError(f"no row of {path} has an index in [{low}, {high})")
    return rows


def _points(rows: list[dict], args: argparse.Namespace) -> list[CurvePoint]:
    """Every method's point, and the replayed points of the methods that record their draws. A method whose draws
    are recorded on only some rows (rows written before it recorded them) keeps its point over all its rows as
    well: the replays cover only the rows with draws."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    with_draws = [m for m in methods if replayable(m) and any(r.get("draws") for r in rows if r["method"] == m)]
    partly = {m for m in with_draws if any(not r.get("draws") for r in rows if r["method"] == m)}
    budgets = [int(b) for b in args.budgets.split(",")]
    margins = [float(m) for m in args.margins.split(",")]
    points = row_points(rows, [m for m in methods if m not in with_draws or m in partly])
    for method in with_draws:
        replayed = selection_points(
            rows, method, budgets, round_size=args.round_size, confidence=args.confidence, margins=margins
        )
        # low-temp+vote and low-temp+vote@8 replay to the same labels ('low-temp vote of 8'): name the run
        if sum(m.partition("@")[0] == method.partition("@")[0] for m in with_draws) > 1:
            replayed = [CurvePoint(f"{p.label} [{method}]", f"{p.family} [{method}]", p.outcomes) for p in replayed]
        points += replayed
    return points


def _named(point: CurvePoint, name: str) -> CurvePoint:
    """The point labelled (and its family named) with its folder's name."""
    return CurvePoint(f"{name}: {point.label}", f"{name}: {point.family}", point.outcomes)


def _within(point: CurvePoint, reference: CurvePoint, field: str, value) -> CurvePoint:
    """The point on the problems whose reference outcome has ``field`` = ``value``."""
    keep = {p for p, o in reference.outcomes.items() if o.graded.get(field) == value}
    return CurvePoint(point.label, point.family, {p: o for p, o in point.outcomes.items() if p in keep})


if __name__ == "__main__":
    sys.exit(main())
