"""Scalable power sampling (Ji et al., arXiv 2601.21590): p^alpha token by token, with no MCMC, by estimating each
candidate token's future.

The power distribution's exact next-token conditional is

    pi(x_t | x_<t) ∝ p(x_t | x_<t)^alpha * zeta(x_<=t),   zeta(x_<=t) = sum over futures f of p(f | x_<=t)^alpha,

and zeta is an expectation this sampler estimates by rollouts. Rollouts are drawn from the proposal q (the model at
``proposal_temperature``, default 1/alpha) and weighted by importance: zeta = E_q[p(f)^alpha / q(f)], whose
per-token log weight alpha*log p - log q is what the backend reports for every drawn token (log Z_t when q is
exactly temperature 1/alpha, the lowest-variance choice). At each position:

1. the whole next-token distribution p(. | x_<t) comes from one forward pass (``next_token_logprobs``); when its
   entropy is below ``entropy_threshold`` the token is drawn at temperature 1/alpha without rollouts;
2. otherwise the ``top_k`` most likely tokens are the candidates, and ``rollouts`` continuations of at most
   ``horizon`` tokens are drawn after each of them, all candidates' rollouts as the rows of one batched backend call
   (they share the prefix through the backend's prefix cache); a candidate that is a stop token has zeta = 1;
3. pi is estimated over the candidates as p^alpha * mean(weights), normalized; with ``jackknife`` the ratio
   estimator's O(1/M) bias is removed to first order (M * pi_hat - (M - 1) * mean of the leave-one-rollout-out
   estimates, negative entries clipped, renormalized);
4. the token is drawn from that estimate.

This is approximate, and the approximations are known: only top-k candidates can be drawn, futures are cut at the
horizon (zeta then weighs only the first ``horizon`` tokens), and M rollouts give a noisy (jackknifed) ratio. It is
exact in the limit top_k = vocabulary, horizon = the remaining length, rollouts -> infinity. Measured bias
(``benchmarks/bias_vs_cost.py``: a 4-token enumerable model, 5 new tokens, alpha 2, 4000 samples, where per-token
low temperature is 0.146 away from p^alpha in total variation and an exact sampler's 99% noise is 0.0063): top_k 4
with one rollout reaches 0.038 at horizon 1, 0.014 at horizon 2, and 0.0041 (within the noise) with whole
futures; the test-suite checks the horizon-1 bias and the whole-future agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import ContinuationRequest
from ..backends.decoding import draw
from ..errors import CapabilityError
from .base import Output, RunOutcome, SampleCall, Sampler, declare_method, require_exact
from .config import ScalablePowerConfig, low_temperature
from .result import Completion, ProgressEvent


def _logmeanexp(x: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.squeeze(peak, axis) + np.log(np.mean(np.exp(x - peak), axis=axis))


def power_estimate(alpha_logp: np.ndarray, log_weights: np.ndarray, *, jackknife: bool) -> np.ndarray:
    """The estimated next-token power distribution over K candidates from their alpha*log p (K,) and the rollout
    log weights (K, M): p^alpha * mean(w) normalized, optionally jackknifed over the M rollouts."""

    def normalized(log_zeta: np.ndarray) -> np.ndarray:
        scores = alpha_logp + log_zeta
        scores = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
        return scores / scores.sum(axis=-1, keepdims=True)

    estimate = normalized(_logmeanexp(log_weights, axis=1))
    m = log_weights.shape[1]
    if not jackknife or m < 2:
        return estimate
    # leave rollout i out of every candidate's mean: (M, K)
    leave_out = np.stack([normalized(_logmeanexp(np.delete(log_weights, i, axis=1), axis=1)) for i in range(m)])
    corrected = np.clip(m * estimate - (m - 1) * leave_out.mean(axis=0), 0.0, None)
    total = corrected.sum()
    return corrected / total if total > 0 else estimate


@declare_method(
    "scalable-power",
    ScalablePowerConfig,
    route="scalable-power",
    exact_logprobs=True,
    summary="p^alpha token by token from rollout estimates of each candidate's future (no MCMC; approximate)",
    temperature="proposal",
)
class ScalablePowerSampler(Sampler):
    config: ScalablePowerConfig
    span_name = "power_sampling scalable"

    def check(self, prompt: list[int]) -> None:
        if not hasattr(self.model, "next_token_logprobs"):
            raise CapabilityError(
                f"scalable power sampling needs whole next-token distributions, which "
                f"{self.model.name} does not give; use power or smc"
            )
        if not prompt:
            raise ValueError("the prompt is empty: scalable power sampling needs at least one prompt token")

    def span_attributes(self) -> dict:
        cfg = self.config
        return {
            "power_sampling.alpha": cfg.alpha,
            "power_sampling.top_k": cfg.top_k,
            "power_sampling.rollouts": cfg.rollouts,
        }

    @property
    def _proposal_temperature(self) -> float:
        return self.config.effective_proposal_temperature

    def run(self, call: SampleCall) -> RunOutcome:
        cfg, tally = self.config, _Tally()
        tokens, logps, stopped = self._draw_tokens(call, tally)
        text = self._decode(tokens)
        complete = stopped or len(tokens) >= cfg.max_new_tokens
        score = call.tracker.score(tuple(tokens), text) if complete else None
        completion = Completion(list(tokens), text, float(sum(logps)), complete, score)
        return RunOutcome(
            [Output(completion, np.asarray(logps), stopped)],
            default=0,
            default_rule="only",
            tokens_generated=tally.decoded,
            backend_calls=tally.calls,
            hit_deadline=tally.hit_deadline,
            metadata={
                "proposal_temperature": self._proposal_temperature,
                "rollouts_total": tally.rollouts,
                "rollout_tokens": tally.rollout_tokens,
                "positions_with_rollouts": tally.positions_with_rollouts,
            },
            done=ProgressEvent("done", tokens_generated=tally.decoded),
        )

    def _draw_tokens(self, call: SampleCall, tally: _Tally) -> tuple[list[int], list[float], bool]:
        """The completion token by token: its tokens, their log p, and whether a stop token or the constraint
        ended it."""
        cfg, model, prompt, constraint = self.config, self.model, call.prompt, call.constraint
        tokens: list[int] = []
        logps: list[float] = []
        state = constraint.start([]) if constraint is not None else None
        while len(tokens) < cfg.max_new_tokens and not tally.hit_deadline:
            if call.deadline.expired():
                tally.hit_deadline = True
                break
            logp = model.next_token_logprobs([_request(prompt, tokens, 1, constraint)])[0]
            tally.calls += 1
            tally.forward_tokens += 1
            token = self._next_token(prompt, tokens, logp, constraint, call.rng, call.deadline, tally)
            tokens.append(token)
            logps.append(float(logp[token]))
            if state is not None:
                state.advance(token)
            call.notify(
                ProgressEvent(
                    "block", block=len(tokens), blocks_total=cfg.max_new_tokens, tokens_generated=tally.decoded
                )
            )
            if token in model.stop_token_ids or (state is not None and state.is_finished()):
                return tokens, logps, True
        return tokens, logps, False

    def _next_token(self, prompt, tokens, logp, constraint, rng, deadline, tally: _Tally) -> int:
        """Below the entropy threshold a draw at 1/alpha; otherwise one from the power distribution estimated over
        the top-k candidates."""
        cfg = self.config
        finite = np.isfinite(logp)
        p = np.exp(np.where(finite, logp, -np.inf))
        entropy = float(-np.sum(p[finite] * logp[finite]))
        if cfg.entropy_threshold is not None and entropy < cfg.entropy_threshold:
            (token,), _, _ = draw(logp[None, :], low_temperature(cfg.alpha), rng.random(1))
            return int(token)
        candidates = np.argsort(-np.where(finite, logp, -np.inf), kind="stable")[: cfg.top_k]
        candidates = candidates[finite[candidates]]
        log_weights = self._rollout_log_weights(prompt, tokens, candidates, constraint, rng, deadline, tally)
        probs = power_estimate(cfg.alpha * logp[candidates], log_weights, jackknife=cfg.jackknife)
        index = np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right")
        return int(candidates[min(int(index), len(probs) - 1)])

    def _rollout_log_weights(self, prompt, tokens, candidates, constraint, rng, deadline, tally: _Tally) -> np.ndarray:
        """(K, M) importance log weights alpha*log p - log q of M rollouts after each candidate, all in one batched
        call; 0 (zeta = 1) for a candidate that ends the completion or when no token is left after it."""
        cfg, model = self.config, self.model
        log_weights = np.zeros((len(candidates), cfg.rollouts))
        left = cfg.max_new_tokens - len(tokens) - 1
        horizon = left if cfg.horizon is None else min(cfg.horizon, left)
        open_rows = [
            k
            for k, c in enumerate(candidates)
            if horizon > 0
            and int(c) not in model.stop_token_ids
            and not (constraint is not None and _finishes(constraint, tokens, int(c)))
        ]
        if not open_rows:
            return log_weights
        requests = [
            _request(prompt, [*tokens, int(candidates[k])], horizon, constraint)
            for k in open_rows
            for _ in range(cfg.rollouts)
        ]
        conts = model.sample(requests, self._proposal_temperature, rng, deadline=deadline.end)
        require_exact(model, conts)
        tally.calls += 1
        tally.rollouts += len(conts)
        tally.positions_with_rollouts += 1
        tally.rollout_tokens += sum(len(c) for c in conts)
        tally.hit_deadline = any(c.interrupted for c in conts)
        weights = np.array([cfg.alpha * c.logp.sum() - c.logq.sum() for c in conts])
        log_weights[open_rows] = weights.reshape(len(open_rows), cfg.rollouts)
        return log_weights


@dataclass
class _Tally:
    """What a run decoded and called, for the metadata."""

    forward_tokens: int = 0
    rollout_tokens: int = 0
    rollouts: int = 0
    positions_with_rollouts: int = 0
    calls: int = 0
    hit_deadline: bool = False

    @property
    def decoded(self) -> int:
        return self.forward_tokens + self.rollout_tokens


def _request(prompt: list[int], generated: list[int], max_new: int, constraint) -> ContinuationRequest:
    return ContinuationRequest(prompt + generated, max_new, generated_start=len(prompt), constraint=constraint)


def _finishes(constraint, generated: list[int], token: int) -> bool:
    """Whether the constraint accepts ``generated + [token]`` as complete (nothing may follow)."""
    state = constraint.start(generated)
    state.advance(token)
    return state.is_finished()


METHODS = (ScalablePowerSampler.spec,)
