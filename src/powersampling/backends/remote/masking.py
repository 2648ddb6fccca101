"""A token constraint applied to what a server returned: which grammar a server can be given, the local
constraint's masks over drawn tokens, and full-vocabulary log-probabilities renormalized over a mask.

The target under a mask is the step-wise renormalized masked model (see ``backends/constraints.py``): at each
step log p is renormalized over the allowed tokens, and log q is the proposal at temperature T over the same
tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..base import ConstraintState, TokenConstraint
from ..constraints import JsonSchemaConstraint
from ..decoding import log_softmax
from .wire import Grammar


def server_grammar(constraint: TokenConstraint | None, generated: Sequence[int]) -> Grammar | None:
    """The grammar to send with a row, if any: a server starts its grammar at the first generated token, so only
    a row with nothing generated yet can hand it over."""
    if isinstance(constraint, JsonSchemaConstraint) and not generated:
        return Grammar(constraint.schema_text, compact=not constraint.any_whitespace)
    return None


def replay(state: ConstraintState, tokens: Sequence[int]) -> tuple[list[np.ndarray | None], bool]:
    """The local constraint's mask before each drawn token, up to the token where the constraint finishes, and
    whether it finished there. Stops before the first token the constraint does not allow, so fewer masks than
    tokens without ``finished`` means the constraint disagrees with the draw at ``len(masks)``."""
    masks: list[np.ndarray | None] = []
    for token in tokens:
        mask = state.allowed_tokens()
        if mask is not None and not (token < len(mask) and mask[token]):
            return masks, False
        masks.append(mask)
        state.advance(token)
        if state.is_finished():
            return masks, True
    return masks, False


def allowed_vector(mask: np.ndarray | None, size: int) -> np.ndarray:
    """``mask`` over ``size`` tokens; ids past a (shorter) grammar vocabulary are not allowed, None allows all."""
    if mask is None:
        return np.ones(size, dtype=bool)
    mask = np.asarray(mask, dtype=bool)[:size]
    allowed = np.zeros(size, dtype=bool)
    allowed[: len(mask)] = mask
    return allowed


def matches_served_mask(logprobs: np.ndarray, allowed: np.ndarray) -> bool:
    """Whether a server's log-probabilities agree with a local mask. A server that masks before computing them
    (vLLM applies the grammar bitmask to the logits first) shows its allowed tokens as the finite entries, which
    must then be exactly the local ones; a server that reports unmasked values shows nothing to compare."""
    served = np.isfinite(logprobs)
    return bool(served.all() or np.array_equal(served, allowed))


def renormalized(logprobs: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return log_softmax(np.where(allowed, logprobs, -np.inf))


def draw_token(logp: np.ndarray, temperature: float, rng: np.random.Generator) -> tuple[int, float, float]:
    """One token from softmax(log p / T) (argmax at T = 0), with its log p and log q."""
    if temperature == 0:
        token = int(np.argmax(logp))
        return token, float(logp[token]), 0.0
    logq = log_softmax(logp / temperature)
    weights = np.exp(logq)
    token = int(rng.choice(len(weights), p=weights / weights.sum()))
    return token, float(logp[token]), float(logq[token])
