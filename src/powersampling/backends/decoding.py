"""The decode core every local backend (``FunctionLM``, transformers, llama.cpp) runs: one loop, one row state,
one mask policy, one draw.

A backend only supplies a ``Stepper``: how to get next-token logits for a batch of rows (prefill), and how to feed
each continuing row its newest token. Everything that decides *what* is sampled lives here, once:

* ``Row``: a request's tokens so far, its constraint state, and the stop rules (a stop token, the constraint
  finishing, ``max_new_tokens``);
* ``apply_masks``: a constraint state's ``allowed_tokens()`` masks disallowed tokens to ``-inf``; ``None`` means
  every token is allowed and costs nothing (a mask shorter than the vocabulary, as grammar vocabularies can be,
  leaves the rest disallowed);
* ``draw``: one token per row from softmax(logits / T) over the whole vocabulary (no top-k/top-p/min-p), with
  log p (temperature 1) and log q (temperature T) of the drawn token from the same float64 logits. Because both
  come from one forward pass, a Metropolis-Hastings or SMC ratio built from them is exact;
* on request, per row: each drawn token's next-token entropy (``next_token_entropy``, the MH entropy scans' cut
  weights), and a defensive mixture proposal (1 - w) softmax(logits / T) + w softmax(logits / T_d), its log q the
  mixture's.

``log_softmax`` and ``temperature_logprobs`` are the numpy forms used where logits are not torch tensors (remote
servers, the exactness enumerator).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, Union

import numpy as np

from .base import Continuation, ContinuationRequest

if TYPE_CHECKING:
    import torch

Logits = Union[np.ndarray, "torch.Tensor"]


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log softmax over the last axis in float64; ``-inf`` entries stay ``-inf`` (all ``-inf`` gives NaN-free
    ``-inf``)."""
    x = np.asarray(x, dtype=np.float64)
    peak = np.max(x, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return x - (peak + np.log(np.sum(np.exp(x - peak), axis=-1, keepdims=True)))


def temperature_logprobs(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(log p at temperature 1, log q at ``temperature``) for a vector or batch of logits, in float64; at
    temperature 0 both are log p. ``-inf`` logits are disallowed tokens; the rest are renormalized."""
    logits = np.asarray(logits, dtype=np.float64)
    logp = log_softmax(logits)
    if temperature == 0:
        return logp, logp
    return logp, log_softmax(logits / temperature)


def common_prefix_length(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """How many leading token ids ``a`` and ``b`` share."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(len(a), len(b))
    if n == 0:
        return 0
    same = a[:n] == b[:n]
    return n if same.all() else int(np.argmin(same))


class Row:
    """One request being decoded: its tokens and per-token log p / log q so far, its constraint state, and
    whether it is done (a stop token, the constraint finished, or ``max_new_tokens`` reached)."""

    __slots__ = (
        "done",
        "entropy",
        "interrupted",
        "logp",
        "logq",
        "max_new",
        "mixture",
        "prefix",
        "state",
        "stop_ids",
        "stopped",
        "tokens",
    )

    def __init__(self, request: ContinuationRequest, stop_ids: frozenset[int]) -> None:
        self.prefix = [int(t) for t in request.prefix]
        if not self.prefix:
            raise ValueError("a request needs at least one prefix token (the prompt)")
        self.max_new = int(request.max_new_tokens)
        self.stop_ids = stop_ids
        constraint = request.constraint
        self.state = constraint.start(self.prefix[request.generated_start :]) if constraint is not None else None
        self.tokens: list[int] = []
        self.logp: list[float] = []
        self.logq: list[float] = []
        self.entropy: list[float] | None = [] if request.entropy else None
        self.mixture = (
            (float(request.defensive_weight), float(request.defensive_temperature))
            if request.defensive_weight > 0
            else None
        )
        self.stopped = self.interrupted = False
        self.done = self.max_new <= 0

    @property
    def length(self) -> int:
        """Tokens fed or to be fed: prefix plus generated."""
        return len(self.prefix) + len(self.tokens)

    def allowed_tokens(self) -> np.ndarray | None:
        return self.state.allowed_tokens() if self.state is not None else None

    def push(self, token: int, logp: float, logq: float, entropy: float | None = None) -> bool:
        """Record a drawn token; True when the row is done."""
        self.tokens.append(token)
        self.logp.append(logp)
        self.logq.append(logq)
        if self.entropy is not None:
            self.entropy.append(entropy)
        if self.state is not None:
            self.state.advance(token)
        if token in self.stop_ids or (self.state is not None and self.state.is_finished()):
            self.stopped = True
        self.done = self.stopped or len(self.tokens) >= self.max_new
        return self.done

    def continuation(self) -> Continuation:
        return Continuation(
            list(self.tokens),
            np.asarray(self.logp, dtype=np.float64),
            np.asarray(self.logq, dtype=np.float64),
            self.stopped,
            self.interrupted,
            entropy=None if self.entropy is None else np.asarray(self.entropy, dtype=np.float64),
        )


class Stepper(Protocol):
    """What a backend gives the decode loop.

    ``start(rows, deadline)`` returns next-token logits, one row per given row (a (rows, vocab) numpy array, or a
    torch tensor on the backend's device), for rows whose prefix may share cached work with earlier calls; a backend
    that feeds a long prefix in parts may return None when ``deadline`` passes between two parts (a prompt of
    thousands of tokens takes seconds to feed on a CPU, and a request past its deadline must free its worker).
    ``step(keep)`` continues the rows at positions ``keep`` of the current batch (the batch becomes those rows, in
    that order), feeding each its newest token, and returns their logits; the other rows are finished (a backend
    may keep their cache). ``step([])`` finishes all and returns None.
    """

    def start(self, rows: list[Row], deadline: float | None = None) -> Logits | None: ...

    def step(self, keep: list[int]) -> Logits | None: ...


def decode(
    stepper: Stepper,
    requests: Sequence[ContinuationRequest],
    temperature: float,
    rng: np.random.Generator,
    stop_ids: frozenset[int],
    *,
    deadline: float | None = None,
) -> list[Continuation]:
    """Decode every request to a stop token, its constraint's end, ``max_new_tokens`` or ``deadline``
    (``time.monotonic()`` seconds; rows then come back ``interrupted``). All rows advance together, one token per
    step; each step's uniforms come from ``rng``, so a seed gives the same draws on every backend."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    rows = [Row(r, stop_ids) for r in requests]
    live = [row for row in rows if not row.done]
    if not live:
        return [row.continuation() for row in rows]
    logits = stepper.start(live, deadline)
    if logits is None:  # the deadline passed while the prefixes were being fed
        for row in live:
            row.interrupted = True
        return [row.continuation() for row in rows]
    while True:
        masked = apply_masks(logits, live)
        tokens, logp, logq = draw(masked, temperature, rng.random(len(live)), mixture=_shared_mixture(live))
        entropy = next_token_entropy(masked) if any(row.entropy is not None for row in live) else None
        out_of_time = deadline is not None and time.monotonic() > deadline
        keep = []
        for j, row in enumerate(live):
            if row.push(tokens[j], logp[j], logq[j], None if entropy is None else entropy[j]):
                continue
            if out_of_time:
                row.interrupted = True
            else:
                keep.append(j)
        live = [live[j] for j in keep]
        logits = stepper.step(keep)
        if not live:
            return [row.continuation() for row in rows]


def next_token_logprobs(
    stepper: Stepper, requests: Sequence[ContinuationRequest], stop_ids: frozenset[int]
) -> np.ndarray:
    """log p (temperature 1, each request's constraint mask applied and renormalized) of every token after each
    request's prefix: a (rows, vocab) float64 array. The forward pass is the decode loop's own, so the rows'
    caches serve later calls."""
    rows = [Row(r, stop_ids) for r in requests]
    logits = apply_masks(stepper.start(rows), rows)
    stepper.step([])
    if not isinstance(logits, np.ndarray):
        logits = logits.to("cpu").double().numpy()
    return log_softmax(logits)


def _shared_mixture(rows: Sequence[Row]) -> tuple[float, float] | None:
    mixtures = {row.mixture for row in rows}
    if len(mixtures) > 1:
        raise ValueError("the rows of one call must share their defensive mixture (weight and temperature)")
    return mixtures.pop()


def next_token_entropy(logits: Logits) -> list[float]:
    """The entropy (nats) of softmax(logits) per row, in float64; ``-inf`` logits are impossible tokens."""
    if not isinstance(logits, np.ndarray):
        import torch

        x = logits.to(torch.float64)
        shifted = x - x.amax(dim=-1, keepdim=True)
        weights = torch.exp(shifted)
        total = weights.sum(dim=-1)
        spread = (weights * torch.where(weights > 0, shifted, torch.zeros_like(shifted))).sum(dim=-1)
        return (torch.log(total) - spread / total).tolist()
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    weights = np.exp(shifted)
    total = weights.sum(axis=-1)
    spread = (weights * np.where(weights > 0, shifted, 0.0)).sum(axis=-1)
    return (np.log(total) - spread / total).tolist()


def apply_masks(logits: Logits, rows: Sequence[Row]) -> Logits:
    """``logits`` with each row's disallowed tokens at ``-inf``; unchanged (no copy) when no row has a mask."""
    masks = [row.allowed_tokens() for row in rows]
    if all(m is None for m in masks):
        return logits
    vocab = logits.shape[-1]
    allowed = np.ones((len(rows), vocab), dtype=bool)
    for j, mask in enumerate(masks):
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)[:vocab]
            allowed[j, : len(mask)] = mask
            allowed[j, len(mask) :] = False  # beyond a grammar's (shorter) vocabulary nothing is allowed
    if isinstance(logits, np.ndarray):
        return np.where(allowed, logits, -np.inf)
    import torch

    return logits.masked_fill(~torch.from_numpy(allowed).to(logits.device), float("-inf"))


def draw(
    logits: Logits, temperature: float, uniforms: np.ndarray, *, mixture: tuple[float, float] | None = None
) -> tuple[list[int], list[float], list[float]]:
    """One token per row from softmax(logits / temperature) over the full vocabulary (no truncation), by inverse
    CDF with the given uniforms in [0, 1).

    Returns the tokens, their log p at temperature 1 and their log q at ``temperature``, computed in float64 from
    the same logits; at temperature 0 the token is the argmax and log q is 0. ``-inf`` logits are impossible.
    Logits on the CPU (numpy, or torch tensors, viewed as numpy) are drawn in numpy: no thread pool for a few
    vector passes, which matter per token. Tensors on an accelerator are drawn there, with the same arithmetic.

    ``mixture = (w, T_d)``: the token comes from (1 - w) softmax(logits / temperature) + w softmax(logits / T_d)
    (a defensive proposal that keeps every token p allows within reach), and log q is that mixture's.
    """
    if mixture is not None and temperature == 0:
        raise ValueError("a defensive mixture needs a proposal temperature above 0")
    if isinstance(logits, np.ndarray) or logits.device.type == "cpu":
        if not isinstance(logits, np.ndarray):
            logits = logits.numpy()
        return _draw_numpy(np.asarray(logits, dtype=np.float64), temperature, np.asarray(uniforms), mixture)
    return _draw_torch(logits, temperature, uniforms, mixture)


def _draw_numpy(logits: np.ndarray, temperature: float, uniforms: np.ndarray, mixture=None):
    peak = np.max(logits, axis=-1, keepdims=True)
    if not np.all(np.isfinite(peak)):
        raise ValueError("every token is disallowed at this step (the constraint allows nothing the model can emit)")
    shifted = logits - peak
    log_z = np.log(np.sum(np.exp(shifted), axis=-1))
    rows = np.arange(len(logits))
    if temperature == 0:
        tokens = np.argmax(shifted, axis=-1)
        logq = np.zeros(len(logits))
    else:
        scaled = shifted if temperature == 1.0 else shifted / temperature
        if mixture is not None:  # log of the mixture's probabilities: still normalized, so log(total) is ~0
            weight, flat = mixture
            with np.errstate(divide="ignore"):
                scaled = np.logaddexp(
                    np.log1p(-weight) + log_softmax(scaled), np.log(weight) + log_softmax(shifted / flat)
                )
        cdf = np.cumsum(np.exp(scaled), axis=-1)
        total = cdf[:, -1]
        # the first index whose cumulative weight exceeds u owns [cdf[i-1], cdf[i]), a positive weight; u rounded
        # up to the total goes to the last token that carries weight
        tokens = np.sum(cdf <= (uniforms * total)[:, None], axis=-1)
        past_end = tokens >= cdf.shape[-1]
        if past_end.any():
            tokens = np.where(past_end, np.argmax(cdf >= total[:, None], axis=-1), tokens)
        logq = scaled[rows, tokens] - np.log(total)
    return tokens.tolist(), (shifted[rows, tokens] - log_z).tolist(), logq.tolist()


def _draw_torch(logits, temperature: float, uniforms: np.ndarray, mixture=None):
    import torch

    logits = logits.to(torch.float64)
    peak = logits.amax(dim=-1, keepdim=True)
    if not bool(torch.isfinite(peak).all()):
        raise ValueError("every token is disallowed at this step (the constraint allows nothing the model can emit)")
    shifted = logits - peak
    log_z = torch.log(torch.exp(shifted).sum(dim=-1))
    if temperature == 0:
        tokens = shifted.argmax(dim=-1)
        logq = torch.zeros_like(log_z)
    else:
        scaled = shifted if temperature == 1.0 else shifted / temperature
        if mixture is not None:
            weight, flat = mixture
            scaled = torch.logaddexp(
                math.log1p(-weight) + torch.log_softmax(scaled, dim=-1)
                if weight < 1
                else torch.full_like(scaled, -math.inf),
                math.log(weight) + torch.log_softmax(shifted / flat, dim=-1),
            )
        cdf = torch.cumsum(torch.exp(scaled), dim=-1)
        total = cdf[:, -1:].contiguous()
        u = torch.as_tensor(uniforms, dtype=cdf.dtype, device=cdf.device)[:, None] * total
        tokens = torch.searchsorted(cdf, u, right=True)
        past_end = tokens >= cdf.shape[-1]
        if bool(past_end.any()):
            tokens = torch.where(past_end, torch.searchsorted(cdf, total), tokens)
        tokens = tokens.squeeze(-1)
        logq = scaled.gather(-1, tokens[:, None]).squeeze(-1) - torch.log(total.squeeze(-1))
    logp = shifted.gather(-1, tokens[:, None]).squeeze(-1) - log_z
    return tokens.tolist(), logp.tolist(), logq.tolist()
