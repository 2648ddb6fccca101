"""Metropolis-Hastings power sampling: whole completions from p(x)^alpha (Karan & Du, arXiv 2510.14901).

Block-wise annealing: the completion grows by ``block_size`` tokens at a time; after each block, ``n_mcmc`` MH
steps run on everything generated so far. A step picks a cut m uniformly among the n current tokens, redraws the
suffix from the proposal q (the model at ``proposal_temperature``) up to the block's length limit or a stop token,
and accepts with

    log A = alpha*(log p(new suffix) - log p(old suffix)) + log q(old suffix) - log q(new suffix) + log n - log n'

where n' is the proposal's length. Suffixes are compared over their full lengths, and the log n - log n' term is
the reverse/forward ratio of the uniform cut choice when a stop token makes the lengths differ.

The kernel is pure: ``accept_step(state, cut, continuation, alpha, log_u) -> (state, info)`` on a frozen
``ChainState``. Two schedulers, with a variant each, decide which proposals to draw and in which order to apply
them; all four are exact:

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
* ``scan="entropy"``: the random scan with the cut drawn from ``EntropyCuts`` (weights follow each position's
  next-token entropy); the cut law depends on the state, so the ratio's last term is log c(m | x') - log c(m | x).
* ``scan="sorted-entropy"``: the sorted scan with each position's number of cuts set by its own entropy
  (``entropy_allocated_cuts``): exact with no extra term, because that number depends only on tokens the moves at
  larger cuts never change.

``stop_after_rejections`` (random and entropy scans) ends a block's steps after k rejections in a row; the number of
steps then depends on the chain, so that option is not exact.

Counters in the metadata are reductions over the per-step ``StepInfo`` and the per-call token counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
from .config import PowerSamplingConfig
from .result import Completion, ProgressEvent
from .votes import adaptive_vote_record, round_stop

_EMPTY = np.zeros(0)
_EMPTY.flags.writeable = False  # shared by every empty state


@dataclass(frozen=True)
class ChainState:
    """One chain's completion so far, with each token's log p (temperature 1) and log q (its proposal), and, for
    the entropy scan, the entropy of p's next-token distribution each token was drawn from."""

    tokens: tuple[int, ...] = ()
    logp: np.ndarray = field(default_factory=lambda: _EMPTY, repr=False)
    logq: np.ndarray = field(default_factory=lambda: _EMPTY, repr=False)
    stopped: bool = False
    entropy: np.ndarray | None = field(default=None, repr=False)
    cut_probs: dict = field(default_factory=dict, repr=False, compare=False)  # a cut law's probabilities, by law

    def __len__(self) -> int:
        return len(self.tokens)

    def with_suffix(self, cut: int, cont: Continuation) -> ChainState:
        """The state with everything from ``cut`` on replaced by ``cont`` (``cut = len(self)`` extends it)."""
        entropy = None
        if cont.entropy is not None and (self.entropy is not None or cut == 0):
            entropy = np.concatenate([_EMPTY if self.entropy is None else self.entropy[:cut], cont.entropy])
        return ChainState(
            self.tokens[:cut] + tuple(cont.token_ids),
            np.concatenate([self.logp[:cut], cont.logp]),
            np.concatenate([self.logq[:cut], cont.logq]),
            cont.stopped,
            entropy,
        )


class UniformCuts:
    """The paper's cut: uniform over the state's n tokens, log c(m | x) = -log n."""

    def draw(self, state: ChainState, u: float) -> int:
        return int(u * len(state))

    def log_prob(self, state: ChainState, cut: int) -> float:
        return -math.log(len(state))


@dataclass(frozen=True)
class EntropyCuts:
    """Cuts where the model was unsure: c(m | x) = floor / n + (1 - floor) H_m / sum_j H_j over the state's n
    tokens, H_m the entropy of p's next-token distribution at position m (uniform when every H_m is 0).

    H_m depends only on the tokens before m, so a proposal at cut m keeps H_0..H_m; the normalizer sum_j H_j and n
    belong to the whole state and differ between x and the proposed x', which is why the acceptance ratio carries
    log c(m | x') - log c(m | x). The floor keeps every position reachable.
    """

    floor: float

    def probs(self, state: ChainState) -> np.ndarray:
        cached = state.cut_probs.get(self)
        if cached is None:
            cached = state.cut_probs[self] = self._probs(state)
        return cached

    def _probs(self, state: ChainState) -> np.ndarray:
        n = len(state)
        if state.entropy is None or len(state.entropy) != n:
            raise ValueError("the entropy scan needs every token's next-token entropy in the chain state")
        h = np.maximum(state.entropy, 0.0)  # rounding can give -1e-17 for a one-token distribution
        total = float(h.sum())
        if total <= 0:
            return np.full(n, 1.0 / n)
        return self.floor / n + (1.0 - self.floor) * h / total

    def draw(self, state: ChainState, u: float) -> int:
        cdf = np.cumsum(self.probs(state))
        return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(state) - 1)

    def log_prob(self, state: ChainState, cut: int) -> float:
        return math.log(float(self.probs(state)[cut]))


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
    state: ChainState,
    cut: int,
    proposal: Continuation,
    alpha: float,
    log_u: float,
    *,
    cuts: UniformCuts | EntropyCuts | None = UniformCuts(),
) -> tuple[ChainState, StepInfo]:
    """The MH accept/reject of ``proposal`` (a suffix drawn after ``state.tokens[:cut]``) with ``log_u = log U``,
    U uniform on [0, 1). ``cuts``: the state-dependent law the cut was drawn from, whose reverse/forward ratio
    log c(cut | x') - log c(cut | x) joins the ratio (log n - log n' for uniform cuts); None for a fixed cut."""
    if proposal.interrupted:  # a deadline cut the proposal short: it is no proposal from q
        return state, StepInfo(cut, len(proposal), timed_out=True)
    proposed = state.with_suffix(cut, proposal)
    log_accept = (
        alpha * (float(proposal.logp.sum()) - float(state.logp[cut:].sum()))
        + float(state.logq[cut:].sum())
        - float(proposal.logq.sum())
        + ((cuts.log_prob(proposed, cut) - cuts.log_prob(state, cut)) if cuts is not None else 0.0)
    )
    accepted = log_u < log_accept
    info = StepInfo(cut, len(proposal), log_accept, accepted)
    return (proposed if accepted else state), info


def stratified_cuts(steps: int, limit: int, u: float) -> list[int]:
    """``steps`` cut positions spread evenly over [0, limit) from one uniform ``u``: floor((k + u) * limit / steps).

    Each position gets floor or ceil(steps / limit) cuts (all of them once steps >= limit), where independent
    uniform cuts would skip some: fewer positions left as the block proposal drew them, so the chain mixes more per
    step. The cuts depend on nothing in the chain, so every fixed-cut move still leaves p^alpha invariant.
    """
    return [int((k + u) * limit / steps) for k in range(steps)]


def entropy_allocated_cuts(
    entropy: np.ndarray, steps: int, limit: int, floor: float, scale: float, u: float
) -> list[int]:
    """The sorted-entropy scan's cuts for one block: position m gets cuts at the rate
    steps * (floor + (1 - floor) * H_m / scale) / limit, rounded systematically from one uniform ``u`` (the count at
    m is floor(R_m + u) - floor(R_(m-1) + u) with R the running sum of the rates). H_m = 0 past the state's end.

    Why this is exact: the count at m depends on H_0..H_m, which depend only on the tokens before m, and on u. The
    cuts are applied from the last position back, and a move at a cut above m never changes the tokens before m,
    so when position m's moves run, its count is a function of the part of the state those moves keep. A kernel
    that keeps x_<m and leaves p^alpha invariant, repeated a number of times that depends on x_<m only, still
    leaves p^alpha invariant (it does so on every slice of states sharing x_<m). ``scale`` is fixed (log of the
    vocabulary size, the largest entropy), never the state's own total, which would depend on tokens after m.
    """
    h = np.zeros(limit)
    n = min(len(entropy), limit)
    h[:n] = np.clip(entropy[:n], 0.0, scale)
    rates = steps * (floor + (1.0 - floor) * h / scale) / limit
    running = np.floor(np.cumsum(rates) + u)
    counts = np.diff(np.concatenate([[math.floor(u)], running])).astype(int)
    return [m for m in range(limit) for _ in range(counts[m])]


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
    rejections_in_a_row: int = 0
    uniforms: dict[int, float] = field(default_factory=dict)
    pending: dict[int, _Proposal] = field(default_factory=dict)
    decoded: int = 0  # tokens the backend decoded for this chain: its extensions and every proposal drawn for it


@declare_method(
    "power",
    PowerSamplingConfig,
    route="power",
    exact_logprobs=True,
    summary="Metropolis-Hastings power sampling, exact p^alpha",
    temperature="proposal",
    chains_field="n_chains",
    independent_chains=True,
    selects_by_evaluator=True,
    in_default_eval=True,
)
class PowerSampler(Sampler):
    config: PowerSamplingConfig
    span_name = "power_sampling mh"

    def check(self, prompt: list[int]) -> None:
        require_decode_core(self.model, self.config)

    def span_attributes(self) -> dict:
        cfg = self.config
        return {
            "power_sampling.alpha": cfg.alpha,
            "power_sampling.n_mcmc": cfg.n_mcmc,
            "power_sampling.block_size": cfg.block_size,
        }

    def run(self, call: SampleCall) -> RunOutcome:
        return _MHChains(self, call).execute()


class _MHChains:
    """The chains of one PowerSampler.sample call and their block-wise schedule: the loop, the per-step infos and
    the per-call token counts."""

    def __init__(self, sampler: PowerSampler, call: SampleCall) -> None:
        cfg = sampler.config
        self.sampler, self.cfg, self.model, self.call = sampler, cfg, sampler.model, call
        self.prompt, self.constraint = call.prompt, call.constraint
        self.rng, self.deadline, self.tracker = call.rng, call.deadline, call.tracker
        self.temperature = cfg.effective_proposal_temperature
        self.cuts = EntropyCuts(cfg.entropy_floor) if cfg.scan == "entropy" else UniformCuts()
        self.chains = [_Chain() for _ in range(cfg.n_chains)]
        self.blocks_total = math.ceil(cfg.max_new_tokens / cfg.block_size)
        self.blocks_done = 0
        self.steps: list[StepInfo] = []
        self.extend_tokens: list[int] = []  # tokens decoded per block-extension call
        self.proposal_calls: list[tuple[int, int]] = []  # (rows, tokens) per proposal call
        self._tally = (0, 0, 0)  # steps seen, accepted, proposed: for progress events
        self.hit_deadline = False
        self.early_stops = 0  # blocks whose MH steps stopped early (stop_after_rejections)
        self.adaptive_vote: dict | None = None  # how an adaptive vote over the chains stopped
        self.steps_skipped = 0

    # the loop

    def execute(self) -> RunOutcome:
        cfg = self.cfg
        if not cfg.adaptive_vote:
            self._run_blocks(self.chains)
            return self._outcome()
        # An adaptive vote runs the chains in rounds: each chain is an independent draw whatever the others did,
        # so stopping after a round changes how many draws are voted on, not what each one is distributed as.
        budget, run, rounds, reason = self.chains, [], 0, "budget"
        while len(run) < len(budget):
            group = budget[len(run) : len(run) + cfg.round_size]
            self._run_blocks(group)
            run += group
            rounds += 1
            if self.hit_deadline:
                reason = "deadline"
                break
            why = round_stop(self._completions(run), len(budget) - len(run), cfg)
            if why is not None:
                reason = why
                break
        self.chains = run
        self.adaptive_vote = adaptive_vote_record(
            self._completions(run), cfg, stopped_by=reason, budget=len(budget), rounds=rounds
        )
        return self._outcome()

    def _completions(self, chains: list[_Chain]) -> list[Completion]:
        return [self._output(c.state, None).completion for c in chains]

    def _run_blocks(self, chains: list[_Chain]) -> None:
        """The block-wise schedule of ``chains``: extend each by a block, then run its MH steps, until every chain
        is in its final phase (stopped, or at max_new_tokens) or the deadline passes."""
        cfg = self.cfg
        scheduler = self._sorted_scan if cfg.scan in ("sorted", "sorted-entropy") else self._random_scan
        for block in range(self.blocks_total):
            if self.deadline.expired():
                self.hit_deadline = True
            active = [c for c in chains if not c.final_phase]
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
                    chain.rejections_in_a_row = 0
                    chain.pending.clear()
                scheduler(active, block)
                self._notify("block", block + 1, self.blocks_total)

    def _extend(self, chains: list[_Chain], limit: int) -> None:
        growing = [c for c in chains if not c.state.stopped and len(c.state) < limit]
        if growing:
            conts = self._call(
                [self._request(c.state.tokens, limit - len(c.state)) for c in growing], self.deadline.end
            )
            self.extend_tokens.append(sum(len(c) for c in conts))
            for chain, cont in zip(growing, conts):
                chain.decoded += len(cont)
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
            if self.cfg.scan == "sorted-entropy":
                entropy = chain.state.entropy if chain.state.entropy is not None else _EMPTY
                scale = math.log(self.model.vocab_size)
                cuts = entropy_allocated_cuts(
                    entropy, chain.steps_left, chain.limit, self.cfg.entropy_floor, scale, self.rng.random()
                )
            else:
                cuts = stratified_cuts(chain.steps_left, chain.limit, self.rng.random())
            cuts.sort(reverse=True)
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
            chain.decoded += len(cont)
            self._apply(chain, cut, cont, cuts=None)
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
            chain.decoded += len(cont)
            chain.pending[t] = _Proposal(n, cut, chain.state.tokens[:cut], cont)

    def _consume_pending(self, chain: _Chain, block: int) -> None:
        while chain.steps_left > 0:
            t = chain.step_index
            proposal = chain.pending.pop(t, None)
            if proposal is None or not self._is_valid(chain, proposal, t):
                return  # drawn again by the next prefetch
            info = self._apply(chain, proposal.cut, proposal.continuation, cuts=self.cuts)
            if self.hit_deadline:
                return
            chain.step_index += 1
            chain.steps_left -= 1
            chain.rejections_in_a_row = 0 if info.accepted else chain.rejections_in_a_row + 1
            if (
                self.cfg.stop_after_rejections is not None
                and chain.rejections_in_a_row >= self.cfg.stop_after_rejections
            ):
                self.early_stops += 1
                self.steps_skipped += chain.steps_left
                chain.steps_left = 0
            self._notify("mh_step", block + 1, self.blocks_total, self.cfg.n_mcmc - chain.steps_left, self.cfg.n_mcmc)
        chain.pending.clear()  # proposals drawn for steps beyond this block's budget are never used

    def _cut(self, chain: _Chain, t: int) -> int:
        if t not in chain.uniforms:
            chain.uniforms[t] = float(self.rng.random())
        return self.cuts.draw(chain.state, chain.uniforms[t])

    def _is_valid(self, chain: _Chain, proposal: _Proposal, t: int) -> bool:
        state = chain.state
        return (
            proposal.base_length == len(state)
            and self._cut(chain, t) == proposal.cut
            and state.tokens[: proposal.cut] == proposal.base_prefix
        )

    # one step, one call

    def _apply(
        self, chain: _Chain, cut: int, proposal: Continuation, *, cuts: UniformCuts | EntropyCuts | None
    ) -> StepInfo:
        chain.state, info = accept_step(
            chain.state, cut, proposal, self.cfg.alpha, math.log1p(-self.rng.random()), cuts=cuts
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
        return info

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
            entropy=self.cfg.scan in ("entropy", "sorted-entropy"),
            defensive_weight=self.cfg.defensive_weight,
            defensive_temperature=self.cfg.defensive_temperature,
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
        if self.call.progress is not None:
            self.call.notify(self._event(kind, block, blocks_total, step, steps_total))

    def _event(self, kind: str, block: int, blocks_total: int, step: int = 0, steps_total: int = 0) -> ProgressEvent:
        # the running acceptance, reduced over the steps added since the last event
        seen, accepted, proposed = self._tally
        for info in self.steps[seen:]:
            accepted += info.accepted
            proposed += not info.identity
        self._tally = (len(self.steps), accepted, proposed)
        return ProgressEvent(
            kind,
            block=block,
            blocks_total=blocks_total,
            step=step,
            steps_total=steps_total,
            accepted=accepted,
            proposed=proposed,
            tokens_generated=self._tokens_generated(),
        )

    def _tokens_generated(self) -> int:
        return sum(self.extend_tokens) + sum(tokens for _, tokens in self.proposal_calls)

    def _output(self, state: ChainState, score: float | None) -> Output:
        text = self.sampler._decode(state.tokens)
        completion = Completion(list(state.tokens), text, float(state.logp.sum()), self._is_complete(state), score)
        return Output(completion, np.asarray(state.logp), state.stopped)

    def _outcome(self) -> RunOutcome:
        for chain in self.chains:
            self._offer(chain.state)
        decode, tracker = self.sampler._decode, self.tracker
        outputs = [self._output(c.state, tracker.score(c.state.tokens, decode(c.state.tokens))) for c in self.chains]
        best = tracker.best_payload
        mh = [s for s in self.steps if not s.identity]
        proposed, accepted = len(mh), sum(s.accepted for s in mh)
        return RunOutcome(
            outputs,
            default=0,
            default_rule="chain_0",
            tokens_generated=self._tokens_generated(),
            backend_calls=len(self.extend_tokens) + len(self.proposal_calls),
            hit_deadline=self.hit_deadline,
            by_evaluator=self._output(best, tracker.best_score) if best is not None else None,
            metadata={
                "proposal_temperature": self.temperature,
                "acceptance_rate": accepted / proposed if proposed else 0.0,
                "total_iterations": proposed,
                "total_acceptances": accepted,
                "blocks_generated": self.blocks_done,
                "proposals_discarded": sum(rows for rows, _ in self.proposal_calls) - proposed,
                "identity_steps": len(self.steps) - proposed,
                "step_timeouts": sum(s.timed_out for s in mh),
                "early_stops": self.early_stops,
                "steps_skipped": self.steps_skipped,
                "decoded_tokens_per_chain": [c.decoded for c in self.chains],
                **({"adaptive_vote": self.adaptive_vote} if self.adaptive_vote is not None else {}),
            },
            done=self._event("done", 0, self.blocks_total),
        )


METHODS = (PowerSampler.spec,)
