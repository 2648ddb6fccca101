"""Sequential Monte Carlo power sampling (Power-SMC, Azizi et al., arXiv 2602.10273): whole completions from
p(x)^alpha with N particles decoded as one batch, no MH steps.

The target, the same as the MH sampler's: pi(x) ∝ p(x)^alpha over complete sequences, a complete sequence being
one that ends with a stop token or reaches ``max_new_tokens`` (T) tokens. Those sequences form a prefix-free set
whose p sums to 1, so pi is a proper distribution over them.

Intermediate targets. After t decode steps a particle is either live (exactly t tokens, no stop token) or finished
(stopped at some length <= t). On that space the t-th target is gamma_t(x) = p(x)^alpha_t, where p(x) is the
prefix probability of a live particle or the full probability of a finished one, and alpha_t is the (optionally
annealed) exponent. The move from t to t' extends live particles by sampling from the proposal q (the model at
a temperature) and leaves finished ones where they are. The incremental importance weight is therefore

    gamma_t'(x') / (gamma_t(x) q(x' | x)) = exp(phi_t'(x') - phi_t(x)),   phi_t(x) = alpha_t*log p(x) - log q(x)

with log q(x) the summed log-proposal of all of x's tokens. phi is kept per particle, so one formula covers every
case: per token it is alpha*log p - log q (log Z_t when q is exactly temperature 1/alpha); a chunk of several
tokens simply sums it; a finished particle has no new tokens, so without annealing its weight is unchanged, but
while alpha_t still grows its weight is multiplied by p(x)^(alpha_t' - alpha_t): finished particles DO need that
correction under annealing, or early stoppers would be weighed against a flatter target than the live ones.
The last reweighting always uses alpha itself (even when every particle stops before the annealing ends), so the
weighted particles target p^alpha over complete sequences.

Resampling (systematic) happens at a check when the effective sample size falls below ``ess_threshold * N``;
weights then reset to uniform and the log of the mean weight goes into the running log-marginal estimate, an
unbiased estimate of sum_x p(x)^alpha (for a fixed resampling schedule). The returned completion is one particle
drawn from the final normalized weights: its law approaches p^alpha as N grows (the bias is O(1/N)).

Speed: particles are the rows of one backend call per chunk of ``resample_every`` tokens. Live particles always
share the same length, so every row decodes the same number of tokens. On resampling a duplicated particle is a
token list copied in Python; the transformers backend finds its KV cache in its prefix pool by token prefix, so no
cache is recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Continuation, ContinuationRequest
from ..observability.tracing import span
from .base import (
    Output,
    RunOutcome,
    SampleCall,
    Sampler,
    declare_method,
    require_decode_core,
    require_exact,
)
from .config import SMCConfig
from .result import Completion, ProgressEvent


@dataclass
class _Particle:
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    stopped: bool = False
    finished: bool = False
    potential: float = 0.0  # phi at the last weight update: alpha_t * sum(logp) - sum(logq)

    def extend(self, cont: Continuation, requested: int) -> None:
        self.tokens += cont.token_ids
        self.logp += [float(v) for v in cont.logp]
        self.logq += [float(v) for v in cont.logq]
        self.stopped = cont.stopped
        # a row that ends early without a stop token ended for a reason too (a finished constraint)
        self.finished = cont.stopped or (len(cont) < requested and not cont.interrupted)

    def copy(self) -> _Particle:
        return _Particle(
            list(self.tokens), list(self.logp), list(self.logq), self.stopped, self.finished, self.potential
        )


def systematic_resample(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of N particles drawn by systematic resampling from normalized ``weights`` (one uniform)."""
    n = len(weights)
    positions = (rng.random() + np.arange(n)) / n
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0  # rounding must not leave the last position unmatched
    return np.minimum(np.searchsorted(cumulative, positions, side="right"), n - 1)


def normalized(log_weights: np.ndarray) -> np.ndarray:
    shifted = np.exp(log_weights - np.max(log_weights))
    return shifted / shifted.sum()


def effective_sample_size(weights: np.ndarray) -> float:
    return float(1.0 / np.sum(weights**2))


def normalize(log_weights: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The normalize step: (normalized weights, their effective sample size, the log-evidence increment
    log mean w). Resampling resets the weights and adds the increment to the running log-marginal estimate."""
    peak = float(np.max(log_weights))
    shifted = np.exp(log_weights - peak)
    weights = shifted / shifted.sum()
    return weights, effective_sample_size(weights), peak + math.log(float(np.mean(shifted)))


@declare_method(
    "smc",
    SMCConfig,
    route="smc",
    exact_logprobs=True,
    summary="Power-SMC: particles decoded as one batch, p^alpha by importance weights",
    temperature="proposal",
    chains_field="n_particles",
    selects_by_evaluator=True,
)
class SMCSampler(Sampler):
    config: SMCConfig
    span_name = "power_sampling smc"

    def check(self, prompt: list[int]) -> None:
        require_decode_core(self.model, self.config)
        if not prompt:
            raise ValueError("the prompt is empty: SMC needs at least one prompt token to condition on")

    def span_attributes(self) -> dict:
        cfg = self.config
        return {
            "power_sampling.alpha": cfg.alpha,
            "power_sampling.n_particles": cfg.n_particles,
            "power_sampling.resample_every": cfg.resample_every,
        }

    def run(self, call: SampleCall) -> RunOutcome:
        return _ParticlePopulation(self, call).execute()

    def samples(self, outcome: RunOutcome, lead: int) -> tuple[list[Completion], dict]:
        """The particle drawn (or the vote's pick) first, then, with ``return_particles``, every other particle and
        the final weights in that order."""
        order = [lead] + [i for i in range(len(outcome.outputs)) if i != lead]
        if not self.config.return_particles:
            return [outcome.outputs[lead].completion], {}
        weights = outcome.metadata["particle_weights"]
        return [outcome.outputs[i].completion for i in order], {"particle_weights": [weights[i] for i in order]}


class _ParticlePopulation:
    """The particles of one SMCSampler.sample call: their weights, the ESS trace and the tokens decoded per call."""

    def __init__(self, sampler: SMCSampler, call: SampleCall) -> None:
        self.sampler, self.cfg, self.model, self.call = sampler, sampler.config, sampler.model, call
        self.prompt, self.constraint = call.prompt, call.constraint
        self.rng, self.deadline, self.tracker = call.rng, call.deadline, call.tracker
        n = self.cfg.n_particles
        self.particles = [_Particle() for _ in range(n)]
        self.log_weights = np.zeros(n)
        self.log_marginal = 0.0
        self.steps = 0  # decode steps so far (the length of every live particle)
        self.ess_trace: list[float] = []
        self.resample_steps: list[int] = []
        self.call_tokens: list[int] = []  # tokens decoded per backend call
        self.hit_deadline = False

    def execute(self) -> RunOutcome:
        cfg = self.cfg
        checks_total = math.ceil(cfg.max_new_tokens / cfg.resample_every)
        check = 0
        while self.steps < cfg.max_new_tokens:
            if self.deadline.expired():
                self.hit_deadline = True
            live = [p for p in self.particles if not p.finished]
            if self.hit_deadline or not live:
                break
            self._extend(live, min(cfg.resample_every, cfg.max_new_tokens - self.steps))
            if self.hit_deadline:
                break
            check += 1
            last = self.steps >= cfg.max_new_tokens or all(p.finished for p in self.particles)
            self._reweight(cfg.alpha if last else cfg.alpha_at(self.steps))
            weights, ess, log_evidence = normalize(self.log_weights)
            self.ess_trace.append(ess)
            # threshold 1 means every check, equal weights included (ESS == N is not below N)
            resampled = not last and (cfg.ess_threshold >= 1 or ess < cfg.ess_threshold * cfg.n_particles)
            if resampled:
                self.log_marginal += log_evidence
                self._resample(weights)
            self.call.notify(
                ProgressEvent(
                    "block",
                    block=check,
                    blocks_total=checks_total,
                    tokens_generated=sum(self.call_tokens),
                    extra={"ess": ess, "resampled": resampled, "live": sum(not p.finished for p in self.particles)},
                )
            )
        # the final target is p^alpha whatever the schedule reached (a no-op when the last check already used it)
        self._reweight(cfg.alpha)
        return self._outcome()

    def _extend(self, live: list[_Particle], chunk: int) -> None:
        """Decode every live particle up to ``steps + chunk`` tokens at the chunk's temperature."""
        target_length = self.steps + chunk
        temperature = self.cfg.proposal_temperature_at(target_length)
        if self.steps == 0 and len(live) > 1:
            # One particle's first token alone: the prompt is then encoded once and every other row finds it in the
            # backend's prefix cache, instead of N rows prefilling the same prompt. Same proposal, same law.
            self._decode_rows(live[:1], 1, temperature)
            if self.hit_deadline:
                return
        growing = [p for p in live if not p.finished and len(p.tokens) < target_length]
        self._decode_rows(growing, target_length, temperature)
        self.steps = target_length

    def _decode_rows(self, particles: list[_Particle], target_length: int, temperature: float) -> None:
        if not particles:
            return
        wanted = [target_length - len(p.tokens) for p in particles]
        requests = [
            ContinuationRequest(
                prefix=self.prompt + p.tokens,
                max_new_tokens=n,
                generated_start=len(self.prompt),
                constraint=self.constraint,
                defensive_weight=self.cfg.defensive_weight,
                defensive_temperature=self.cfg.defensive_temperature,
            )
            for p, n in zip(particles, wanted)
        ]
        with span(
            "power_sampling smc chunk", {"power_sampling.rows": len(requests), "power_sampling.tokens": max(wanted)}
        ):
            conts = self.model.sample(requests, temperature, self.rng, deadline=self.deadline.end)
        require_exact(self.model, conts)
        self.call_tokens.append(sum(len(c) for c in conts))
        for particle, cont, n in zip(particles, conts, wanted):
            particle.extend(cont, n)
            if cont.interrupted:
                self.hit_deadline = True
            elif particle.finished:
                self._offer(particle)

    def _reweight(self, alpha_t: float) -> None:
        for i, particle in enumerate(self.particles):
            potential = alpha_t * math.fsum(particle.logp) - math.fsum(particle.logq)
            self.log_weights[i] += potential - particle.potential
            particle.potential = potential

    def _resample(self, weights: np.ndarray) -> None:
        indices = systematic_resample(weights, self.rng)
        self.particles = [self.particles[j].copy() for j in indices]
        self.log_weights = np.zeros(len(self.particles))
        self.resample_steps.append(self.steps)

    def _draw_weights(self, weights: np.ndarray) -> np.ndarray:
        """The final weights, except after a deadline: rows a backend cut short can have decoded different numbers
        of tokens, and the draw is then among the finished particles and the live ones that got furthest."""
        if not self.hit_deadline:
            return weights
        live_lengths = [len(p.tokens) for p in self.particles if not p.finished]
        furthest = max(live_lengths, default=0)
        eligible = np.array([p.finished or len(p.tokens) == furthest for p in self.particles], dtype=float)
        restricted = weights * eligible
        return restricted / restricted.sum() if restricted.sum() > 0 else eligible / eligible.sum()

    def _is_complete(self, particle: _Particle) -> bool:
        return particle.finished or len(particle.tokens) >= self.cfg.max_new_tokens

    def _offer(self, particle: _Particle) -> None:
        if self.tracker.evaluator is not None and self._is_complete(particle):
            key = tuple(particle.tokens)
            self.tracker.offer(key, self.sampler._decode(particle.tokens), particle.copy())

    def _output(self, particle: _Particle, score: float | None) -> Output:
        tokens, text = list(particle.tokens), self.sampler._decode(particle.tokens)
        completion = Completion(tokens, text, math.fsum(particle.logp), self._is_complete(particle), score)
        return Output(completion, np.asarray(particle.logp, dtype=np.float64), particle.stopped)

    def _outcome(self) -> RunOutcome:
        """The particles for the shell's selection: each votes with its final weight, and the method's own pick is
        one particle drawn by weight (drawn in every case, so the random stream does not depend on the selection)."""
        cfg, tracker = self.cfg, self.tracker
        weights, final_ess, log_evidence = normalize(self.log_weights)
        for particle in self.particles:
            self._offer(particle)
        draw_weights = self._draw_weights(weights)
        drawn = int(self.rng.choice(len(weights), p=draw_weights))
        outputs = []
        for particle in self.particles:
            text = self.sampler._decode(particle.tokens)
            score = tracker.score(tuple(particle.tokens), text) if self._is_complete(particle) else None
            outputs.append(self._output(particle, score))
        best = tracker.best_payload
        metadata = {
            "proposal_temperature": cfg.proposal_temperature_at(cfg.max_new_tokens),
            "ess_trace": self.ess_trace,
            "final_ess": final_ess,
            "resample_count": len(self.resample_steps),
            "resample_steps": self.resample_steps,
            "log_marginal_estimate": self.log_marginal + log_evidence,
            "unique_particles": len({tuple(p.tokens) for p in self.particles}),
            "particles_stopped": sum(p.stopped for p in self.particles),
        }
        if cfg.return_particles:
            metadata["particle_weights"] = [float(w) for w in weights]
        tokens_generated = sum(self.call_tokens)
        return RunOutcome(
            outputs,
            default=drawn,
            default_rule="weights",
            tokens_generated=tokens_generated,
            backend_calls=len(self.call_tokens),
            hit_deadline=self.hit_deadline,
            by_evaluator=self._output(best, tracker.best_score) if best is not None else None,
            vote_weights=draw_weights,
            metadata=metadata,
            done=ProgressEvent(
                "done",
                blocks_total=len(self.ess_trace),
                block=len(self.ess_trace),
                tokens_generated=tokens_generated,
                extra={"ess": final_ess},
            ),
        )


METHODS = (SMCSampler.spec,)
