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

    python benchmarks/accuracy_vs_tokens.py benchmarks/results/gsm8k-qwen05-3shot [--reference low-temp]
        [--budgets 1,2,4,8] [--round-size 2] [--confidence 0.95] [--margins 0,0.05] [--by category]
        [--indices 250:500]
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
    parser.add_argument("run", type=Path, help="an evaluation folder (results.jsonl)")
    parser.add_argument(
        "--reference",
        default="low-temp",
        help="the point every other is paired against: a method of the run or a replayed point's label "
        "('low-temp vote of 8')",
    )
    parser.add_argument("--budgets", default="1,2,4,8", help="vote budgets replayed from recorded draws")
    parser.add_argument("--round-size", type=int, default=2, help="draws per round of a replayed adaptive vote")
    parser.add_argument("--confidence", type=float, default=0.95, help="the posterior rule's confidence")
    parser.add_argument("--margins", default="0,0.05", help="quality margins of the replayed adaptive selections")
    parser.add_argument("--by", default=None, help="also a table per value of this graded field (e.g. category)")
    parser.add_argument("--indices", default=None, help="A:B keeps the problems of run index A <= i < B")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the run folder)")
    args = parser.parse_args(argv)
    path = args.run / RESULTS_FILE
    if not path.is_file():
        print(f"error: {args.run} holds no {RESULTS_FILE}", file=sys.stderr)
        return 2
    rows = read_rows(path)
    if not rows:
        print(f"error: {path} holds no rows yet", file=sys.stderr)
        return 2
    if args.indices is not None:
        try:
            low, high = (int(x) for x in args.indices.split(":"))
        except ValueError:
            print(f"error: --indices takes A:B, two whole numbers (got {args.indices!r})", file=sys.stderr)
            return 2
        rows = [r for r in rows if low <= int(r["index"]) < high]
        if not rows:
            print(f"error: no row of {path} has an index in [{low}, {high})", file=sys.stderr)
            return 2
    benchmark = get_benchmark(rows[0]["task"])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    with_draws = [m for m in methods if replayable(m) and any(r.get("draws") for r in rows if r["method"] == m)]
    budgets = [int(b) for b in args.budgets.split(",")]
    points = row_points(rows, [m for m in methods if m not in with_draws])
    margins = [float(m) for m in args.margins.split(",")]
    for method in with_draws:
        points += selection_points(
            rows, method, budgets, round_size=args.round_size, confidence=args.confidence, margins=margins
        )
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
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    title = f"{rows[0]['task']}, {rows[0]['model']}: {benchmark.curve_metric_name} against decoded tokens"
    plot_curves(points, out / "accuracy_vs_tokens.png", title, benchmark)
    table = markdown_table(points, reference, benchmark)
    for value, (own_reference, *others) in groups.items():
        table += ["", f"{args.by} = {value}:", "", *markdown_table([own_reference, *others], own_reference, benchmark)]
    (out / "accuracy_vs_tokens.md").write_text("\n".join([f"# {title}", "", *table, ""]))
    document = {
        "run": str(args.run),
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


def _within(point: CurvePoint, reference: CurvePoint, field: str, value) -> CurvePoint:
    """The point on the problems whose reference outcome has ``field`` = ``value``."""
    keep = {p for p, o in reference.outcomes.items() if o.graded.get(field) == value}
    return CurvePoint(point.label, point.family, {p: o for p, o in point.outcomes.items() if p in keep})


if __name__ == "__main__":
    sys.exit(main())
