"""When a majority vote may stop drawing samples (adaptive votes).

A vote with a budget of n samples draws them in rounds and, after each round, asks ``vote_stop_reason``:

- ``unbeatable``: the leading answer has more votes than the runner-up's votes plus every sample still in the
  budget, so no way the remaining samples could fall changes the winner. The answer is the one the full vote would
  have returned (the pick among the leader's completions may differ: fewer of them were drawn).
- ``posterior`` (the Beta criterion of Adaptive-Consistency, Aggarwal et al. 2023): with v1 votes for the leader
  and v2 for the runner-up (0 when only one answer was given), the posterior of the leader's share among the two,
  x ~ Beta(v1 + 1, v2 + 1) (a uniform prior), gives P(x > 1/2); the vote stops once it is >= the stated
  confidence. This is a heuristic stopping rule: the answer can differ from the full vote's. Samples without an
  answer (incomplete, or none extracted) cast no vote and count towards the budget. ``posterior`` also stops when
  the leader is unbeatable.

With confidence 0.95, a unanimous vote stops after 4 answers (P = 1 - 2^-5 = 0.969; 3 give 0.9375).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from scipy.stats import beta

from .base import majority_vote
from .result import Completion

if TYPE_CHECKING:
    from .config import AdaptiveVoteConfig

VOTE_STOP_RULES = ("fixed", "unbeatable", "posterior")


def leader_posterior(votes: Mapping[str, float]) -> float:
    """P(the leading answer's share exceeds the runner-up's) under Beta(v1 + 1, v2 + 1); 0.5 with no votes."""
    ranked = sorted(votes.values(), reverse=True) + [0.0, 0.0]
    return float(beta.sf(0.5, ranked[0] + 1, ranked[1] + 1))


def vote_stop_reason(votes: Mapping[str, float], remaining: int, rule: str, confidence: float = 0.95) -> str | None:
    """Why the vote may stop now (``"unbeatable"`` or ``"posterior"``), or None to draw more; ``remaining`` is the
    number of samples left in the budget, ``votes`` answer -> votes so far."""
    if rule not in VOTE_STOP_RULES:
        raise ValueError(f"unknown vote_stop rule {rule!r}; choose one of {', '.join(VOTE_STOP_RULES)}")
    if rule == "fixed" or not votes:
        return None
    ranked = sorted(votes.values(), reverse=True) + [0.0]
    if ranked[0] > ranked[1] + remaining:
        return "unbeatable"
    if rule == "posterior" and leader_posterior(votes) >= confidence:
        return "posterior"
    return None


def round_stop(completions: Sequence[Completion], remaining: int, cfg: AdaptiveVoteConfig) -> str | None:
    """``vote_stop_reason`` for the outputs drawn so far, voted by the config's answer extractor."""
    votes = majority_vote(completions, cfg.answer_extractor)[1]["votes"]
    return vote_stop_reason(votes, remaining, cfg.vote_stop, cfg.vote_confidence)


def adaptive_vote_record(
    completions: Sequence[Completion], cfg: AdaptiveVoteConfig, *, stopped_by: str, budget: int, rounds: int
) -> dict:
    """The ``adaptive_vote`` metadata of a run: why it stopped, the outputs drawn of the budget, in how many rounds,
    the rule and the leader's posterior at the end."""
    votes = majority_vote(completions, cfg.answer_extractor)[1]["votes"]
    return {
        "stopped_by": stopped_by,
        "samples_drawn": len(completions),
        "budget": budget,
        "rounds": rounds,
        "rule": cfg.vote_stop,
        "leader_posterior": leader_posterior(votes),
    }
