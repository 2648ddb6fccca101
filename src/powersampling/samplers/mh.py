"""Metropolis-Hastings power sampling: whole completions from p(x)^alpha (Karan & Du, arXiv 2510.14901).

Block-wise annealing: the completion grows by ``block_size`` tokens at a time; after each block, ``n_mcmc`` MH
steps run on everything generated so far. A step picks a cut m uniformly among the n current tokens, redraws the
suffix from the proposal q (the model at ``proposal_temperature``) up to the block's length limit or a stop token,
and accepts with

    log A = alpha*(log p(new suffix) - log p(old suffix)) + log q(old suffix) - log q(new suffix) + log n - log n'

where n' is the proposal's length. Suffixes are compared over their full lengths, and the log n - log n' term is
the reverse/forward ratio of the uniform cut choice when a stop token makes the lengths differ.

The kernel is pure: ``accept_step(state, cut, continuation, alpha, log_u) -> (state, info)`` on a frozen
``ChainState``. Two schedulers decide which proposals to draw and in which order to apply them; both are exact:

* ``scan="random"`` (the paper's): proposals for several upcoming steps are drawn from the current state in one
  batched backend call. Step t's proposal stays valid after an earlier step changed the state as long as the state
  still has the same length and the same first m_t tokens (the proposal depends on nothing else), so it is used as
  is; otherwise a fresh one is drawn. Each step's cut comes from its own uniform u_t, drawn independently of the
  chain, so the sequence of moves is exactly that of sequential MH.
* ``scan="sorted"``: for a fixed cut m, "redraw the suffix after m and accept with the ratio above without the
  log n - log n' term" leaves p^alpha invariant on its own (the reverse move uses the same m; a state with m or fewer
  tokens is left as is). So the block's n_mcmc cuts are spread evenly over the block's positions (stratified, from
  one uniform offset), independently of the chain, and applied in descending order: a step at cut m only changes
  tokens from m on, so every later step's prefix is still the one its proposal was drawn from, and all proposals of
  a block come from one batched call.

Counters in the metadata are reductions over the per-step ``StepInfo`` and the per-call token counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Continuation, ContinuationRequest, LanguageModel, TokenConstraint
from ..observability.tracing import span
from .base import (
    Deadline,
    EvaluatorTracker,
    MethodSpec,
    ProgressCallback,
    Sampler,
    common_metadata,
    majority_vote,
    require_exact,
    resolve_seed,
)
from .config import PowerSamplingConfig
from .result import Completion, ProgressEvent, SampleResult

_EMPTY = np.zeros(0)
_EMPTY.flags.writeable = False  # shared by every empty state


@dataclass(frozen=True)
class ChainState:
    """One chain's completion so far, with each token's log p (temperature 1) and log q (its proposal)."""

    tokens: tuple[int, ...] = ()
    logp: np.ndarray = field(default_factory=lambda: _EMPTY, repr=False)
    logq: np.ndarray = field(default_factory=lambda: _EMPTY, repr=False)
    stopped: bool = False

    def __len__(self) -> int:
        return len(self.tokens)

    def with_suffix(self, cut: int, cont: Continuation) -> ChainState:
        """The state with everything from ``cut`` on replaced by ``cont`` (``cut = len(self)`` extends it)."""
        return ChainState(
            self.tokens[:cut] + tuple(cont.token_ids),
            np.concatenate([self.logp[:cut], cont.logp]),
            np.concatenate([self.logq[:cut], cont.logq]),
            cont.stopped,
        )


@dataclass(frozen=True)
class StepInfo:
    """What one MH step did. ``identity``: a sorted-scan cut past the end, a move that changes nothing."""

    cut: int
    proposal_tokens: int = 0
    log_accept: float = -math.inf
    accepted: bool = False
    timed_out: bool = False
    identity: bool = False


def accept_step(
    state: ChainState, cut: int, proposal: Continuation, alpha: float, log_u: float, *, cut_ratio: bool = True
) -> tuple[ChainState, StepInfo]:
    """The MH accept/reject of ``proposal`` (a suffix drawn after ``state.tokens[:cut]``) with ``log_u = log U``,
    U uniform on [0, 1). ``cut_ratio``: include log n - log n' (the random scan's uniform cut), not for a fixed cut."""
    if proposal.interrupted:  # a deadline cut the proposal short: it is no proposal from q
        return state, StepInfo(cut, len(proposal), timed_out=True)
    n_old, n_new = len(state), cut + len(proposal)
    log_accept = (
        alpha * (float(proposal.logp.sum()) - float(state.logp[cut:].sum()))
        + float(state.logq[cut:].sum())
        - float(proposal.logq.sum())
        + ((math.log(n_old) - math.log(n_new)) if cut_ratio else 0.0)
    )
    accepted = log_u < log_accept
    info = StepInfo(cut, len(proposal), log_accept, accepted)
    return (state.with_suffix(cut, proposal) if accepted else state), info


def stratified_cuts(steps: int, limit: int, u: float) -> list[int]:
    """``steps`` cut positions spread evenly over [0, limit) from one uniform ``u``: floor((k + u) * limit / steps).

    Each position gets floor or ceil(steps / limit) cuts (all of them once steps >= limit), where independent
    uniform cuts would skip some: fewer positions left as the block proposal drew them, so the chain mixes more per
    step. The cuts depend on nothing in the chain, so every fixed-cut move still leaves p^alpha invariant.
    """
    return [int((k + u) * limit / steps) for k in range(steps)]


@dataclass
class _Proposal:
    base_length: int
    cut: int
    base_prefix: tuple[int, ...]
    continuation: Continuation


@dataclass
class _Chain:
    """A chain's state and its place in the schedule."""

    state: ChainState = field(default_factory=ChainState)
    limit: int = 0
    steps_left: int = 0
    step_index: int = 0
    final_phase: bool = False
    uniforms: dict[int, float] = field(default_factory=dict)
    pending: dict[int, _Proposal] = field(default_factory=dict)


class PowerSampler(Sampler):
    method = "power"

    config_type = PowerSamplingConfig
    config: PowerSamplingConfig

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
            {
                "gen_ai.request.model": self.model.name,
                "power_sampling.alpha": self.config.alpha,
                "power_sampling.n_mcmc": self.config.n_mcmc,
                "power_sampling.block_size": self.config.block_size,
            },
        ):
            return run.execute()


class _Run:
    """One call of PowerSampler.sample: the chains, the per-step infos and per-call token counts, the loop."""

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
        self.blocks_done = 0
        self.steps: list[StepInfo] = []
        self.extend_tokens: list[int] = []  # tokens decoded per block-extension call
        self.proposal_calls: list[tuple[int, int]] = []  # (rows, tokens) per proposal call
        self._tally = (0, 0, 0)  # steps seen, accepted, proposed: for progress events
        self.hit_deadline = False

    # the loop

    def execute(self) -> SampleResult:
        cfg = self.cfg
        scheduler = self._sorted_scan if cfg.scan == "sorted" else self._random_scan
        for block in range(self.blocks_total):
            if self.deadline.expired():
                self.hit_deadline = True
            active = [c for c in self.chains if not c.final_phase]
            if self.hit_deadline or not active:
                break
            limit = min((block + 1) * cfg.block_size, cfg.max_new_tokens)
            with span("power_sampling block", {"power_sampling.block": block}):
                self._extend(active, limit)
                if self.hit_deadline:
                    break
                self.blocks_done += 1
                for chain in active:
                    # A finished completion skips the remaining blocks: its MH steps run at the final length
                    # limit at once, so the chain targets p^alpha over all completions up to max_new_tokens.
                    chain.final_phase = chain.state.stopped or limit == cfg.max_new_tokens
                    chain.limit = cfg.max_new_tokens if chain.final_phase else limit
                    chain.steps_left = cfg.n_mcmc if chain.state.tokens else 0
                    chain.pending.clear()
                scheduler(active, block)
                self._notify("block", block + 1, self.blocks_total)
        return self._result()

    def _extend(self, chains: list[_Chain], limit: int) -> None:
        growing = [c for c in chains if not c.state.stopped and len(c.state) < limit]
        if growing:
            conts = self._call(
                [self._request(c.state.tokens, limit - len(c.state)) for c in growing], self.deadline.end
            )
            self.extend_tokens.append(sum(len(c) for c in conts))
            for chain, cont in zip(growing, conts):
                chain.state = chain.state.with_suffix(len(chain.state), cont)
                self.hit_deadline = self.hit_deadline or cont.interrupted
        for chain in chains:
            self._offer(chain.state)

    # the two schedulers

    def _random_scan(self, chains: list[_Chain], block: int) -> None:
        """Steps in order, each at a cut uniform over the current length; proposals prefetched in batches."""
        while True:
            for chain in chains:
                self._consume_pending(chain, block)
            waiting = [c for c in chains if c.steps_left > 0]
            if self.hit_deadline or not waiting:
                return
            if self.deadline.expired():
                self.hit_deadline = True
                return
            self._prefetch(waiting)

    def _sorted_scan(self, chains: list[_Chain], block: int) -> None:
        """The block's cuts drawn up front, proposals for all of them in one call, applied from the last cut back."""
        requests, owners = [], []
        for chain in chains:
            cuts = sorted(stratified_cuts(chain.steps_left, chain.limit, self.rng.random()), reverse=True)
            chain.steps_left = 0
            for cut in cuts:
                if cut >= len(chain.state):  # nothing after the cut to redraw: the move changes nothing
                    self.steps.append(StepInfo(cut, identity=True))
                    continue
                requests.append(self._request(chain.state.tokens[:cut], chain.limit - cut))
                owners.append((chain, cut))
        if not requests:
            return
        conts = self._propose(requests)
        for step, ((chain, cut), cont) in enumerate(zip(owners, conts), start=1):
            self._apply(chain, cut, cont, cut_ratio=False)
            self._notify("mh_step", block + 1, self.blocks_total, step, len(owners))

    def _prefetch(self, chains: list[_Chain]) -> None:
        requests, owners = [], []
        width = self.cfg.effective_proposal_batch
        for chain in chains:
            state = chain.state
            for t in range(chain.step_index, chain.step_index + min(width, chain.steps_left)):
                if t in chain.pending and self._is_valid(chain, chain.pending[t], t):
                    continue
                cut = self._cut(chain, t)
                requests.append(self._request(state.tokens[:cut], chain.limit - cut))
                owners.append((chain, t, len(state), cut))
        conts = self._propose(requests)
        for (chain, t, n, cut), cont in zip(owners, conts):
            chain.pending[t] = _Proposal(n, cut, chain.state.tokens[:cut], cont)

    def _consume_pending(self, chain: _Chain, block: int) -> None:
        while chain.steps_left > 0:
            t = chain.step_index
            proposal = chain.pending.pop(t, None)
            if proposal is None or not self._is_valid(chain, proposal, t):
                return  # drawn again by the next prefetch
            self._apply(chain, proposal.cut, proposal.continuation, cut_ratio=True)
            if self.hit_deadline:
                return
            chain.step_index += 1
            chain.steps_left -= 1
            self._notify("mh_step", block + 1, self.blocks_total, self.cfg.n_mcmc - chain.steps_left, self.cfg.n_mcmc)
        chain.pending.clear()  # proposals drawn for steps beyond this block's budget are never used

    def _cut(self, chain: _Chain, t: int) -> int:
        if t not in chain.uniforms:
            chain.uniforms[t] = float(self.rng.random())
        return int(chain.uniforms[t] * len(chain.state))

    def _is_valid(self, chain: _Chain, proposal: _Proposal, t: int) -> bool:
        state = chain.state
        return (
            proposal.base_length == len(state)
            and self._cut(chain, t) == proposal.cut
            and state.tokens[: proposal.cut] == proposal.base_prefix
        )

    # one step, one call

    def _apply(self, chain: _Chain, cut: int, proposal: Continuation, *, cut_ratio: bool) -> None:
        chain.state, info = accept_step(
            chain.state, cut, proposal, self.cfg.alpha, math.log1p(-self.rng.random()), cut_ratio=cut_ratio
        )
        self.steps.append(info)
        with span(
            "power_sampling mh_step",
            {
                "power_sampling.cut": cut,
                "power_sampling.suffix_tokens": len(proposal),
                "power_sampling.log_accept": min(info.log_accept, 0.0),
                "power_sampling.accepted": info.accepted,
            },
        ):
            if info.accepted:
                self._offer(chain.state)
        if info.timed_out and self.deadline.expired():
            self.hit_deadline = True

    def _propose(self, requests: list[ContinuationRequest]) -> list[Continuation]:
        with span("power_sampling proposals", {"power_sampling.rows": len(requests)}):
            conts = self._call(requests, self.deadline.for_step())
        self.proposal_calls.append((len(requests), sum(len(c) for c in conts)))
        return conts

    def _request(self, generated: Sequence[int], max_new: int) -> ContinuationRequest:
        return ContinuationRequest(
            prefix=self.prompt + list(generated),
            max_new_tokens=max_new,
            generated_start=len(self.prompt),
            constraint=self.constraint,
        )

    def _call(self, requests: list[ContinuationRequest], deadline: float | None) -> list[Continuation]:
        conts = self.model.sample(requests, self.temperature, self.rng, deadline=deadline)
        require_exact(self.model, conts)
        return conts

    # results

    def _is_complete(self, state: ChainState) -> bool:
        return state.stopped or len(state) >= self.cfg.max_new_tokens

    def _offer(self, state: ChainState) -> None:
        if self.tracker.evaluator is not None and self._is_complete(state):
            self.tracker.offer(state.tokens, self.sampler._decode(state.tokens), state)

    def _notify(self, kind: str, block: int, blocks_total: int, step: int = 0, steps_total: int = 0) -> None:
        if self.progress is None:
            return
        # the running acceptance, reduced over the steps added since the last event
        seen, accepted, proposed = self._tally
        for info in self.steps[seen:]:
            accepted += info.accepted
            proposed += not info.identity
        self._tally = (len(self.steps), accepted, proposed)
        self.progress(
            ProgressEvent(
                kind,
                block=block,
                blocks_total=blocks_total,
                step=step,
                steps_total=steps_total,
                accepted=accepted,
                proposed=proposed,
                tokens_generated=self._tokens_generated(),
            )
        )

    def _tokens_generated(self) -> int:
        return sum(self.extend_tokens) + sum(tokens for _, tokens in self.proposal_calls)

    def _result(self) -> SampleResult:
        decode = self.sampler._decode
        for chain in self.chains:
            self._offer(chain.state)
        states = [c.state for c in self.chains]
        completions = [
            Completion(
                list(s.tokens),
                decode(s.tokens),
                float(s.logp.sum()),
                self._is_complete(s),
                self.tracker.score(s.tokens, decode(s.tokens)) if self.tracker.evaluator else None,
            )
            for s in states
        ]
        vote = None
        if self.cfg.select == "majority" and len(states) > 1:
            index, vote = majority_vote(completions, self.cfg.answer_extractor)
        if vote is not None and index is not None:
            chosen, selected_by = states[index], "majority"
        elif self.tracker.best_payload is not None:
            chosen, selected_by = self.tracker.best_payload, "evaluator"
        else:
            chosen, selected_by = states[0], "chain_0"
        tokens = list(chosen.tokens)
        last_stopped = chosen.stopped  # a stop token, or a constraint (a stop string) that finished it
        mh = [s for s in self.steps if not s.identity]
        proposed, accepted = len(mh), sum(s.accepted for s in mh)
        metadata = common_metadata(
            "power",
            self.cfg,
            seed=self.seed,
            tokens_generated=self._tokens_generated(),
            final_tokens=len(tokens),
            backend_calls=len(self.extend_tokens) + len(self.proposal_calls),
            latency_ms=self.deadline.elapsed_ms(),
            stopped_by="deadline" if self.hit_deadline else ("eos" if last_stopped else "length"),
            complete=last_stopped or len(tokens) >= self.cfg.max_new_tokens,
            selected_by=selected_by,
            quality_score=self.tracker.best_score,
            tracker=self.tracker,
            constrained=self.constraint is not None,
        )
        metadata.update(
            {
                "proposal_temperature": self.temperature,
                "acceptance_rate": accepted / proposed if proposed else 0.0,
                "total_iterations": proposed,
                "total_acceptances": accepted,
                "blocks_generated": self.blocks_done,
                "proposals_discarded": sum(rows for rows, _ in self.proposal_calls) - proposed,
                "identity_steps": len(self.steps) - proposed,
                "step_timeouts": sum(s.timed_out for s in mh),
            }
        )
        if vote is not None:
            metadata["vote"] = vote
        self._notify("done", 0, self.blocks_total)
        return SampleResult(tokens, decode(tokens), np.asarray(chosen.logp), "power", metadata, completions)


def _build(model: LanguageModel, config: PowerSamplingConfig, evaluator) -> PowerSampler:
    return PowerSampler(model, config, evaluator=evaluator)


METHODS = (
    MethodSpec(
        "power",
        PowerSamplingConfig,
        _build,
        route="power",
        exact_logprobs=True,
        summary="Metropolis-Hastings power sampling, exact p^alpha",
    ),
)
