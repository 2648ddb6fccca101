"""Metropolis-Hastings power sampling: whole completions from p(x)^alpha (Karan & Du, arXiv 2510.14901).

Block-wise annealing: the completion grows by ``block_size`` tokens at a time; after each block, ``n_mcmc`` MH
steps run on everything generated so far. A step picks a cut m uniformly among the n current tokens, redraws the
suffix from the proposal q (the model at ``proposal_temperature``) up to the block's length limit or a stop token,
and accepts with

    log A = alpha*(log p(new suffix) - log p(old suffix)) + log q(old suffix) - log q(new suffix) + log n - log n'

where n' is the proposal's length. Suffixes are compared over their full lengths, and the log n - log n' term is
the reverse/forward ratio of the uniform cut choice when a stop token makes the lengths differ.

Speed without approximation, two scans:

* ``scan="random"`` (the paper's): proposals for several upcoming steps are drawn from the current state in one
  batched backend call. Step t's proposal stays valid after an earlier step changed the state as long as the state
  still has the same length and the same first m_t tokens (the proposal depends on nothing else), so it is used as
  is; otherwise a fresh one is drawn. Each step's cut comes from its own uniform u_t, drawn independently of the
  chain, so the sequence of moves is exactly that of sequential MH.
* ``scan="sorted"``: for a fixed cut m, "redraw the suffix after m and accept with the ratio above without the
  log n - log n' term" leaves p^alpha invariant on its own (the reverse move uses the same m; a state with m or fewer
  tokens is left as is). So the block's n_mcmc cuts are drawn uniform over the block's positions, independently of
  the chain, and applied in descending order: a step at cut m only changes tokens from m on, so every later step's
  prefix is still the one its proposal was drawn from, and all proposals of a block come from one batched call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..backends.base import Continuation, ContinuationRequest, LanguageModel, TokenConstraint
from ..observability.tracing import span
from .base import Deadline, EvaluatorTracker, ProgressCallback, Sampler, require_exact, resolve_seed
from .config import PowerSamplingConfig
from .result import Completion, ProgressEvent, SampleResult


@dataclass
class _Proposal:
    base_length: int
    cut: int
    base_prefix: list[int]
    continuation: Continuation


@dataclass
class _Chain:
    tokens: list[int] = field(default_factory=list)
    logp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    logq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stopped: bool = False
    limit: int = 0
    steps_left: int = 0
    step_index: int = 0
    final_phase: bool = False
    uniforms: dict[int, float] = field(default_factory=dict)
    pending: dict[int, _Proposal] = field(default_factory=dict)

    def replace_suffix(self, cut: int, cont: Continuation) -> None:
        self.tokens = self.tokens[:cut] + list(cont.token_ids)
        self.logp = np.concatenate([self.logp[:cut], cont.logp])
        self.logq = np.concatenate([self.logq[:cut], cont.logq])
        self.stopped = cont.stopped


class PowerSampler(Sampler):
    method = "power"

    def __init__(
        self,
        model: LanguageModel,
        config: PowerSamplingConfig | None = None,
        *,
        evaluator=None,
    ) -> None:
        super().__init__(model)
        self.config = config or PowerSamplingConfig()
        self.evaluator = evaluator or self.config.quality_evaluator

    def sample(
        self,
        prompt_ids: Sequence[int],
        *,
        constraint: TokenConstraint | None = None,
        progress: ProgressCallback | None = None,
    ) -> SampleResult:
        run = _Run(self, list(prompt_ids), constraint, progress)
        with span(
            "power_sampling mh",
            {"gen_ai.request.model": self.model.name, "power_sampling.alpha": self.config.alpha,
             "power_sampling.n_mcmc": self.config.n_mcmc, "power_sampling.block_size": self.config.block_size},
        ):
            return run.execute()


class _Run:
    """One call of PowerSampler.sample: the chains, the counters, the loop."""

    def __init__(self, sampler: PowerSampler, prompt: list[int], constraint, progress) -> None:
        cfg = sampler.config
        self.sampler, self.cfg, self.model = sampler, cfg, sampler.model
        self.prompt, self.constraint, self.progress = prompt, constraint, progress
        self.seed = resolve_seed(cfg.seed)
        self.rng = np.random.default_rng(self.seed)
        self.temperature = cfg.effective_proposal_temperature
        self.deadline = Deadline(cfg.deadline_s, cfg.step_timeout_s)
        self.tracker = EvaluatorTracker(sampler.evaluator)
        self.chains = [_Chain() for _ in range(cfg.n_chains)]
        self.blocks_total = math.ceil(cfg.max_new_tokens / cfg.block_size)
        self.tokens_generated = self.backend_calls = 0
        self.proposed = self.accepted = self.discarded = self.step_timeouts = 0
        self.blocks_generated = self.identity_steps = 0
        self.hit_deadline = False

    # the loop

    def execute(self) -> SampleResult:
        cfg = self.cfg
        for block in range(self.blocks_total):
            if self.deadline.expired():
                self.hit_deadline = True
                break
            active = [c for c in self.chains if not c.final_phase]
            if not active:
                break
            limit = min((block + 1) * cfg.block_size, cfg.max_new_tokens)
            with span("power_sampling block", {"power_sampling.block": block}):
                self._extend(active, limit)
                if self.hit_deadline:
                    break
                self.blocks_generated += 1
                for chain in active:
                    # A finished completion skips the remaining blocks: its MH steps run at the final length
                    # limit at once, so the chain targets p^alpha over all completions up to max_new_tokens.
                    chain.final_phase = chain.stopped or limit == cfg.max_new_tokens
                    chain.limit = cfg.max_new_tokens if chain.final_phase else limit
                    chain.steps_left = cfg.n_mcmc if chain.tokens else 0
                    chain.pending.clear()
                if cfg.scan == "sorted":
                    self._mh_sorted_scan(active, block)
                else:
                    self._mh_steps(active, block)
                self._notify(ProgressEvent("block", block=block + 1, blocks_total=self.blocks_total,
                                           accepted=self.accepted, proposed=self.proposed,
                                           tokens_generated=self.tokens_generated))
            if self.hit_deadline:
                break
        return self._result()

    def _extend(self, chains: list[_Chain], limit: int) -> None:
        growing = [c for c in chains if not c.stopped and len(c.tokens) < limit]
        if not growing:
            return
        conts = self._call([self._request(c.tokens, limit - len(c.tokens)) for c in growing], self.deadline.end)
        for chain, cont in zip(growing, conts):
            chain.tokens += cont.token_ids
            chain.logp = np.concatenate([chain.logp, cont.logp])
            chain.logq = np.concatenate([chain.logq, cont.logq])
            chain.stopped = cont.stopped
            if cont.interrupted:
                self.hit_deadline = True
        for chain in chains:
            self._offer(chain)

    def _mh_steps(self, chains: list[_Chain], block: int) -> None:
        while True:
            for chain in chains:
                self._consume_pending(chain, block)
            if self.hit_deadline:
                return
            waiting = [c for c in chains if c.steps_left > 0]
            if not waiting:
                return
            if self.deadline.expired():
                self.hit_deadline = True
                return
            self._draw_proposals(waiting)

    def _mh_sorted_scan(self, chains: list[_Chain], block: int) -> None:
        requests, owners = [], []
        for chain in chains:
            if not chain.steps_left:
                continue
            cuts = sorted(self.rng.integers(0, chain.limit, size=chain.steps_left).tolist(), reverse=True)
            live = [c for c in cuts if c < len(chain.tokens)]  # a cut past the end is a move that changes nothing
            self.identity_steps += len(cuts) - len(live)
            chain.steps_left = 0
            for cut in live:
                requests.append(self._request(chain.tokens[:cut], chain.limit - cut))
                owners.append((chain, cut))
        with span("power_sampling proposals", {"power_sampling.rows": len(requests)}):
            conts = self._call(requests, self.deadline.for_step())
        for step, ((chain, cut), cont) in enumerate(zip(owners, conts), start=1):
            self._step(chain, _Proposal(len(chain.tokens), cut, chain.tokens[:cut], cont), cut_ratio=False)
            self._notify(ProgressEvent("mh_step", block=block + 1, blocks_total=self.blocks_total, step=step,
                                       steps_total=len(owners), accepted=self.accepted, proposed=self.proposed,
                                       tokens_generated=self.tokens_generated))

    def _draw_proposals(self, chains: list[_Chain]) -> None:
        requests, owners = [], []
        width = self.cfg.effective_proposal_batch
        for chain in chains:
            n = len(chain.tokens)
            for t in range(chain.step_index, chain.step_index + min(width, chain.steps_left)):
                if t in chain.pending and self._is_valid(chain, chain.pending[t], t):
                    continue
                cut = self._cut(chain, t)
                requests.append(self._request(chain.tokens[:cut], chain.limit - cut))
                owners.append((chain, t, n, cut))
        with span("power_sampling proposals", {"power_sampling.rows": len(requests)}):
            conts = self._call(requests, self.deadline.for_step())
        for (chain, t, n, cut), cont in zip(owners, conts):
            chain.pending[t] = _Proposal(n, cut, chain.tokens[:cut], cont)

    def _consume_pending(self, chain: _Chain, block: int) -> None:
        while chain.steps_left > 0:
            t = chain.step_index
            proposal = chain.pending.pop(t, None)
            if proposal is None:
                return
            if not self._is_valid(chain, proposal, t):
                self.discarded += 1
                return
            self._step(chain, proposal)
            chain.step_index += 1
            chain.steps_left -= 1
            self._notify(ProgressEvent("mh_step", block=block + 1, blocks_total=self.blocks_total,
                                       step=self.cfg.n_mcmc - chain.steps_left, steps_total=self.cfg.n_mcmc,
                                       accepted=self.accepted, proposed=self.proposed,
                                       tokens_generated=self.tokens_generated))
        # proposals drawn for steps beyond this block's budget were never used
        self.discarded += len(chain.pending)
        chain.pending.clear()

    def _step(self, chain: _Chain, proposal: _Proposal, cut_ratio: bool = True) -> None:
        cont, cut = proposal.continuation, proposal.cut
        self.proposed += 1
        if cont.interrupted:
            self.step_timeouts += 1
            if self.deadline.expired():
                self.hit_deadline = True
            return
        alpha = self.cfg.alpha
        n_old, n_new = len(chain.tokens), cut + len(cont)
        log_accept = (
            alpha * (float(cont.logp.sum()) - float(chain.logp[cut:].sum()))
            + float(chain.logq[cut:].sum()) - float(cont.logq.sum())
            + ((math.log(n_old) - math.log(n_new)) if cut_ratio else 0.0)
        )
        accepted = log_accept >= 0 or math.log(self.rng.random()) < log_accept
        with span("power_sampling mh_step", {"power_sampling.cut": cut, "power_sampling.suffix_tokens": len(cont),
                                             "power_sampling.log_accept": min(log_accept, 0.0),
                                             "power_sampling.accepted": accepted}):
            if accepted:
                self.accepted += 1
                chain.replace_suffix(cut, cont)
                self._offer(chain)

    # small pieces

    def _cut(self, chain: _Chain, t: int) -> int:
        if t not in chain.uniforms:
            chain.uniforms[t] = float(self.rng.random())
        return int(chain.uniforms.get(t) * len(chain.tokens))

    def _is_valid(self, chain: _Chain, proposal: _Proposal, t: int) -> bool:
        n = len(chain.tokens)
        return (
            proposal.base_length == n
            and self._cut(chain, t) == proposal.cut
            and chain.tokens[: proposal.cut] == proposal.base_prefix
        )

    def _request(self, generated: list[int], max_new: int) -> ContinuationRequest:
        return ContinuationRequest(
            prefix=self.prompt + generated,
            max_new_tokens=max_new,
            generated_start=len(self.prompt),
            constraint=self.constraint,
        )

    def _call(self, requests: list[ContinuationRequest], deadline: float | None) -> list[Continuation]:
        conts = self.model.sample(requests, self.temperature, self.rng, deadline=deadline)
        require_exact(self.model, conts)
        self.backend_calls += 1
        self.tokens_generated += sum(len(c) for c in conts)
        return conts

    def _is_complete(self, chain: _Chain) -> bool:
        return chain.stopped or len(chain.tokens) >= self.cfg.max_new_tokens

    def _offer(self, chain: _Chain) -> None:
        if self.tracker.evaluator is not None and self._is_complete(chain):
            key = tuple(chain.tokens)
            self.tracker.offer(key, self.sampler._decode(chain.tokens), (list(chain.tokens), chain.logp.copy()))

    def _notify(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def _result(self) -> SampleResult:
        decode = self.sampler._decode
        for chain in self.chains:
            self._offer(chain)
        completions = [
            Completion(list(c.tokens), decode(c.tokens), float(c.logp.sum()), self._is_complete(c),
                       self.tracker.score(tuple(c.tokens), decode(c.tokens)) if self.tracker.evaluator else None)
            for c in self.chains
        ]
        if self.tracker.best_payload is not None:
            tokens, logp = self.tracker.best_payload
            selected_by = "evaluator"
        else:
            tokens, logp = list(self.chains[0].tokens), self.chains[0].logp
            selected_by = "chain_0"
        final_lengths = sum(len(c.tokens) for c in self.chains)
        last_stopped = bool(tokens) and tokens[-1] in self.model.stop_token_ids
        stopped_by = "deadline" if self.hit_deadline else ("eos" if last_stopped else "length")
        metadata = {
            "method": "power",
            "alpha": self.cfg.alpha,
            "n_mcmc": self.cfg.n_mcmc,
            "block_size": self.cfg.block_size,
            "max_new_tokens": self.cfg.max_new_tokens,
            "proposal_temperature": self.temperature,
            "n_chains": self.cfg.n_chains,
            "seed": self.seed,
            "acceptance_rate": self.accepted / self.proposed if self.proposed else 0.0,
            "total_iterations": self.proposed,
            "total_acceptances": self.accepted,
            "blocks_generated": self.blocks_generated,
            "tokens_generated": self.tokens_generated,
            "final_tokens": len(tokens),
            "cost_multiplier": self.tokens_generated / final_lengths if final_lengths else 0.0,
            "scan": self.cfg.scan,
            "proposals_discarded": self.discarded,
            "identity_steps": self.identity_steps,
            "step_timeouts": self.step_timeouts,
            "backend_calls": self.backend_calls,
            "latency_ms": self.deadline.elapsed_ms(),
            "stopped_by": stopped_by,
            "complete": last_stopped or len(tokens) >= self.cfg.max_new_tokens,
            "selected_by": selected_by,
            "quality_score": self.tracker.best_score,
            "evaluator_calls": self.tracker.calls,
            "evaluator_errors": self.tracker.errors,
            "constrained": self.constraint is not None,
        }
        self._notify(ProgressEvent("done", blocks_total=self.blocks_total, accepted=self.accepted,
                                   proposed=self.proposed, tokens_generated=self.tokens_generated))
        return SampleResult(list(tokens), decode(tokens), np.asarray(logp), "power", metadata, completions)
