"""Cost, as the harness and its reports use the word.

A method's cost on a set of problems is what the backend measured for it, summed over the problems: the tokens it
decoded (``tokens_generated``: every MH proposal, every candidate and particle) or the seconds its sampler call took
(``wall_s``). A relative cost compares two methods on the problems both have finished: the ratio of their sums.
The report gives every method's cost relative to plain sampling, and best-of-n at matched cost draws as many
candidates as power sampling's cost relative to one sample.

Each sampler also records ``cost_multiplier`` in its metadata: decoded tokens per token of the completion it
returned, the same ratio for one call against a plain sample as long as its answer. It stands in for the relative
cost only where a run holds no plain-sample rows to measure against.
"""

from __future__ import annotations

import numpy as np

COST_MEASURES = {"token": "tokens_generated", "time": "wall_s"}


def relative_cost(mine: dict[str, dict], reference: dict[str, dict], key: str = "tokens_generated") -> float | None:
    """``mine``'s summed ``key`` over ``reference``'s, on the problems (row dicts by problem id) both finished;
    None when they share none or the reference measured nothing."""
    common = set(mine) & set(reference)
    total = sum(reference[p][key] for p in common)
    return sum(mine[p][key] for p in common) / total if total else None


def mean_cost_multiplier(rows: list[dict]) -> float | None:
    """The samplers' own per-call ``cost_multiplier``, averaged over rows."""
    values = [r["metadata"].get("cost_multiplier", 0.0) for r in rows]
    return float(np.mean(values)) if values else None
