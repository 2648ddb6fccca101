"""What all samplers share: how a method is declared, the ``sample`` shell (seed, deadline, span, selection and the
metadata keys every result carries), prompt handling, text decoding, evaluator calls, majority votes and the
choices among answers made of parts (coverage, consensus)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from ..backends.base import Continuation, LanguageModel, TokenConstraint
from ..errors import CapabilityError
from ..observability.tracing import span
from .config import PARTS_RULES
from .result import Completion, ProgressEvent, SampleResult

if TYPE_CHECKING:
    from .config import DecodeConfig

log = logging.getLogger("powersampling.samplers")

ProgressCallback = Callable[[ProgressEvent], None]
S = TypeVar("S", bound="Sampler")


def prompt_ids(model: LanguageModel, prompt: str, *, chat: bool | None = None, system: str | None = None) -> list[int]:
    """Token ids for a text prompt: the model's chat template when it has one (or ``chat=True``), raw text otherwise."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"model {model.name!r} has no tokenizer; pass token ids instead of text")
    use_chat = chat if chat is not None else bool(getattr(tok, "has_chat_template", False))
    if use_chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return list(tok.chat_prompt(messages))
    return list(tok.encode(((system + "\n\n") if system else "") + prompt))


@dataclass(frozen=True)
class MethodSpec:
    """A decoding method as the registry knows it: its name, its validated config type (which holds every default),
    how to build it, the planner route / metrics ``route`` label it runs under (``baseline`` for methods that only
    sample), and what it can do, so that callers ask the registry instead of testing method names:

    * ``exact_logprobs``: it needs exact log p and log q from the backend (its ratios or weights use them);
    * ``temperature``: what a request's ``temperature`` sets: ``"sampling"`` the sampling temperature,
      ``"proposal"`` the proposal temperature (the target stays p^alpha; 0 has no meaning), ``"zero"`` nothing but
      0 is accepted (greedy), ``"none"`` the method has no temperature to set;
    * ``chains_field``: the config field that a request's ``chains`` sets (MH chains, SMC particles), None where
      the method has no chains;
    * ``independent_chains``: each chain is an independent draw of the target, so n samples can be n chains of
      one run, decoded as batched rows;
    * ``selects_by_evaluator``: with a quality evaluator it returns the best-scoring of several outputs;
    * ``in_default_eval``: ``powersampling eval`` runs it when no methods are named (the paper's comparison: plain
      sampling, the low-temperature proposal, power sampling, best-of-n at matched cost).
    """

    name: str
    config: type[DecodeConfig]
    build: Callable[[LanguageModel, Any, Callable[[str], float] | None], Sampler]  # a Sampler class fits
    route: str = "baseline"
    summary: str = ""
    exact_logprobs: bool = False
    temperature: Literal["sampling", "proposal", "zero", "none"] = "none"
    chains_field: str | None = None
    independent_chains: bool = False
    selects_by_evaluator: bool = False
    in_default_eval: bool = False


def require_exact(model: LanguageModel, conts: Sequence[Continuation]) -> None:
    """Acceptance ratios and importance weights are only right with the target's log p and log q; a backend that
    could not apply a constraint's mask to them marks its continuations inexact."""
    if all(c.exact for c in conts):
        return
    reason = (
        getattr(model, "inexact_constraints_reason", None)
        or f"{model.name} could not apply the constraint's mask to its log-probabilities"
    )
    raise CapabilityError(
        f"power sampling under this constraint needs exact log-probabilities, and {reason}. "
        "Baseline methods (sample, low-temp, best-of-n) still run under the constraint."
    )


def require_decode_core(model: LanguageModel, config) -> None:
    """The entropy scan and the defensive mixture ask the backend for per-token entropies and a mixture proposal,
    which only the local decode core (the backends with ``next_token_logprobs``) gives; others would ignore the
    request fields and leave log q wrong, so they are refused up front."""
    wants = []
    if getattr(config, "scan", None) in ("entropy", "sorted-entropy"):
        wants.append(f"scan={config.scan}")
    if getattr(config, "defensive_weight", 0.0) > 0:
        wants.append("defensive_weight > 0")
    if wants and not hasattr(model, "next_token_logprobs"):
        raise CapabilityError(
            f"{' and '.join(wants)} need a local backend (transformers, llama.cpp, FunctionLM); {model.name} "
            "does not report next-token entropies or draw from a mixture proposal"
        )


def declare_method(name: str, config: type[DecodeConfig], **fields: Any) -> Callable[[type[S]], type[S]]:
    """Class decorator: the sampler class runs the method ``name`` with ``config`` (its defaults); the class's
    ``spec`` is the ``MethodSpec`` the registry lists, built from these and ``fields`` (route, summary, ...)."""

    def declare(cls: type[S]) -> type[S]:
        cls.spec = MethodSpec(name, config, cls, **fields)
        return cls

    return declare


@dataclass
class SampleCall:
    """What one ``sample`` call gives a sampler's run: the prompt and constraint, and the seeded generator, the
    deadline, the evaluator tracker and the progress callback the shell made for it."""

    prompt: list[int]
    constraint: TokenConstraint | None
    progress: ProgressCallback | None
    rng: np.random.Generator
    deadline: Deadline
    tracker: EvaluatorTracker

    def notify(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)


@dataclass
class Output:
    """One output a run offers the selection: its completion, each token's log p, and whether a stop ended it."""

    completion: Completion
    logprobs: np.ndarray
    stopped: bool


@dataclass
class RunOutcome:
    """What a sampler's run hands back to the shell.

    ``outputs`` are the run's final outputs in run order (MH chains, SMC particles, best-of-n candidates), the ones
    a majority vote counts; ``default`` is the method's own pick among them and ``default_rule`` its
    ``selected_by`` label; ``by_evaluator`` the best-scoring output the run saw (a visited MH state may no longer be
    among the outputs), None without an evaluator or where the method does not select by score. ``hit_deadline``:
    the deadline cut the run short.
    """

    outputs: list[Output]
    default: int
    default_rule: str
    tokens_generated: int
    backend_calls: int
    hit_deadline: bool = False
    by_evaluator: Output | None = None
    vote_weights: Sequence[float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the method's own statistics
    done: ProgressEvent = field(default_factory=lambda: ProgressEvent("done"))


class Sampler:
    """The shell every sampler shares: ``sample`` resolves the seed, starts the deadline and the evaluator tracker,
    opens the tracing span, runs the method (``run``, a subclass's), selects the output (a majority vote when asked
    for, then the evaluator's best, then the method's own pick) and writes the metadata every result carries.

    Subclasses implement ``run`` and may override ``check`` (refusals before anything runs), ``span_attributes``
    and ``samples``; ``declare_method`` names the method a class runs.
    """

    spec: MethodSpec  # the method run: the class's own (declare_method) unless built for another
    span_name: str = "power_sampling sampler"

    def __init__(
        self,
        model: LanguageModel,
        config: DecodeConfig | None = None,
        evaluator: Callable[[str], float] | None = None,
        *,
        spec: MethodSpec | None = None,
    ) -> None:
        if spec is not None:
            self.spec = spec
        elif not hasattr(self, "spec"):
            raise TypeError(f"{type(self).__name__} runs no method: decorate it with declare_method or pass spec=")
        self.model = model
        self.config = config or self.spec.config()
        self.evaluator = evaluator or self.config.quality_evaluator

    @property
    def method(self) -> str:
        return self.spec.name

    # the hooks

    def check(self, prompt: list[int]) -> None:
        """Refuse a call the method cannot run (a capability error, a bad prompt) before anything is decoded."""

    def span_attributes(self) -> dict[str, Any]:
        return {}

    def run(self, call: SampleCall) -> RunOutcome:
        raise NotImplementedError

    def samples(self, outcome: RunOutcome, lead: int) -> tuple[list[Completion], dict[str, Any]]:
        """The completions returned in ``SampleResult.samples`` and metadata that depends on the pick; ``lead`` is
        the index among the outputs that the vote or the method's own rule picked."""
        return [o.completion for o in outcome.outputs], {}

    # the shell

    def sample(
        self,
        prompt_ids: Sequence[int],
        *,
        constraint: TokenConstraint | None = None,
        progress: ProgressCallback | None = None,
    ) -> SampleResult:
        prompt = list(prompt_ids)
        self.check(prompt)
        cfg = self.config
        seed = resolve_seed(cfg.seed)
        deadline = Deadline(cfg.deadline_s, getattr(cfg, "step_timeout_s", None))
        call = SampleCall(
            prompt, constraint, progress, np.random.default_rng(seed), deadline, EvaluatorTracker(self.evaluator)
        )
        with span(self.span_name, {"gen_ai.request.model": self.model.name, **self.span_attributes()}):
            outcome = self.run(call)
            chosen, selected_by, lead, vote = self._select(outcome)
            samples, picked = self.samples(outcome, lead)
            metadata = {**self._metadata(call, seed, outcome, chosen, selected_by), **outcome.metadata, **picked}
            if vote is not None:
                metadata[f"{self.config.select}_choice" if self.config.select in PARTS_RULES else "vote"] = vote
            call.notify(outcome.done)
        completion = chosen.completion
        return SampleResult(
            list(completion.token_ids), completion.text, chosen.logprobs, self.method, metadata, samples
        )

    def _select(self, outcome: RunOutcome) -> tuple[Output, str, int, dict[str, Any] | None]:
        """The output returned, how it was chosen, the index the vote or the method's rule picked, and the vote's
        record (None when no vote was held)."""
        vote = None
        if self.config.select == "majority" and len(outcome.outputs) > 1:
            completions = [o.completion for o in outcome.outputs]
            index, vote = majority_vote(completions, self.config.answer_extractor, weights=outcome.vote_weights)
            if index is not None:
                return outcome.outputs[index], "majority", index, vote
        if self.config.select in PARTS_RULES and len(outcome.outputs) > 1:
            completions = [o.completion for o in outcome.outputs]
            rule = self.config.select
            index, vote = parts_choice(completions, self.config.parts_extractor, rule, weights=outcome.vote_weights)
            if index is not None:
                return outcome.outputs[index], rule, index, vote
        if outcome.by_evaluator is not None:
            return outcome.by_evaluator, "evaluator", outcome.default, vote
        return outcome.outputs[outcome.default], outcome.default_rule, outcome.default, vote

    def _metadata(
        self, call: SampleCall, seed: int, outcome: RunOutcome, chosen: Output, selected_by: str
    ) -> dict[str, Any]:
        """The keys every sampler's metadata has: the method, its settings, and what the run measured.

        ``cost_multiplier`` is decoded tokens / tokens of the returned completion: every token the backend drew
        (rejected proposals, other chains, particles and candidates included) per token the user gets back. It is
        the number to compare across methods, and the evaluation's matched-budget rule uses it.
        """
        completion = chosen.completion
        final_tokens = len(completion.token_ids)
        return {
            "method": self.method,
            "route": self.spec.route,
            **self.config.model_dump(exclude={"quality_evaluator"}),
            "seed": seed,
            "tokens_generated": outcome.tokens_generated,
            "final_tokens": final_tokens,
            "cost_multiplier": outcome.tokens_generated / max(1, final_tokens),
            "backend_calls": outcome.backend_calls,
            "latency_ms": call.deadline.elapsed_ms(),
            "stopped_by": "deadline" if outcome.hit_deadline else ("eos" if chosen.stopped else "length"),
            "complete": completion.complete and not outcome.hit_deadline,
            "selected_by": selected_by,
            "quality_score": completion.quality_score,
            "evaluator_calls": call.tracker.calls,
            "evaluator_errors": call.tracker.errors,
            "constrained": call.constraint is not None,
        }

    def sample_text(
        self, prompt: str, *, chat: bool | None = None, system: str | None = None, **kwargs
    ) -> SampleResult:
        return self.sample(prompt_ids(self.model, prompt, chat=chat, system=system), **kwargs)

    async def asample(self, prompt_ids: Sequence[int], **kwargs) -> SampleResult:
        """``sample`` in a worker thread, so an event loop stays responsive while the model runs."""
        return await asyncio.to_thread(self.sample, prompt_ids, **kwargs)

    async def asample_text(self, prompt: str, **kwargs) -> SampleResult:
        return await asyncio.to_thread(self.sample_text, prompt, **kwargs)

    # helpers for subclasses

    def _decode(self, token_ids: Sequence[int]) -> str:
        ids = list(token_ids)
        if ids and ids[-1] in self.model.stop_token_ids:
            ids = ids[:-1]
        tok = self.model.tokenizer
        return tok.decode(ids) if tok is not None else " ".join(map(str, ids))


class EvaluatorTracker:
    """Calls a quality evaluator on complete texts, caches scores, never lets an evaluator error escape."""

    def __init__(self, evaluator: Callable[[str], float] | None) -> None:
        self.evaluator = evaluator
        self.errors = 0
        self.calls = 0
        self._cache: dict[tuple[int, ...], float | None] = {}
        self.best_score: float | None = None
        self.best_key: tuple[int, ...] | None = None
        self.best_payload: object = None

    def score(self, key: tuple[int, ...], text: str) -> float | None:
        if self.evaluator is None:
            return None
        if key in self._cache:
            return self._cache[key]
        self.calls += 1
        try:
            value = float(self.evaluator(text))
            if not np.isfinite(value):
                raise ValueError(f"evaluator returned {value}")
        except Exception as exc:  # the evaluator is user code: log, count, carry on
            self.errors += 1
            log.warning("quality evaluator failed (%s: %s); sample kept unscored", type(exc).__name__, exc)
            value = None
        self._cache[key] = value
        return value

    def offer(self, key: tuple[int, ...], text: str, payload: object) -> None:
        value = self.score(key, text)
        if value is not None and (self.best_score is None or value > self.best_score):
            self.best_score, self.best_key, self.best_payload = value, key, payload


class Deadline:
    """An overall deadline plus an optional per-step timeout, on the monotonic clock."""

    def __init__(self, total_s: float | None, step_s: float | None = None) -> None:
        self.start = time.monotonic()
        self.end = self.start + total_s if total_s else None
        self.step_s = step_s

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def for_step(self) -> float | None:
        step_end = time.monotonic() + self.step_s if self.step_s else None
        ends = [e for e in (self.end, step_end) if e is not None]
        return min(ends) if ends else None

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.start) * 1000.0


def resolve_seed(seed: int | None) -> int:
    """The seed actually used: the given one, or fresh entropy (recorded in metadata so the run can be replayed)."""
    return int(seed) if seed is not None else int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The default answer for a majority vote: the last number in the text, commas and a trailing .0 dropped."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def _extract(extract: Callable[[str], Any], completion: Completion, what: str) -> Any:
    """What ``extract`` reads from a finished completion; None for an unfinished one or a failed extraction (user
    code: a failure is no answer, not a failed run)."""
    if not completion.complete:
        return None
    try:
        return extract(completion.text)
    except Exception as exc:
        log.warning("%s failed (%s: %s); that output gives no answer", what, type(exc).__name__, exc)
        return None


def majority_vote(
    completions: Sequence[Completion],
    extract: Callable[[str], str | None] | None,
    weights: Sequence[float] | None = None,
) -> tuple[int | None, dict[str, Any]]:
    """The index of the completion whose answer most completions give (``weights``: votes per completion, default
    one each), ties and the pick within the winning answer by the highest mean log-probability per token; None
    when no complete completion yields an answer. Returns the index and a summary of the votes."""
    extract = extract or last_number
    weights = list(weights) if weights is not None else [1.0] * len(completions)
    votes: dict[str, float] = {}
    answers: list[str | None] = []
    for completion, weight in zip(completions, weights):
        answer = _extract(extract, completion, "answer extractor")
        answers.append(None if answer is None else str(answer))
        if answers[-1] is not None:
            votes[answers[-1]] = votes.get(answers[-1], 0.0) + float(weight)
    if not votes:
        return None, {"votes": {}, "voters": 0, "winner": None}

    def mean_logprob(i: int) -> float:
        return completions[i].logprob / max(1, len(completions[i].token_ids))

    best = max(votes.values())
    tied = {a for a, v in votes.items() if v >= best - 1e-12}
    chosen = max((i for i, a in enumerate(answers) if a in tied), key=mean_logprob)
    total = sum(votes.values())
    return chosen, {
        "votes": dict(sorted(votes.items(), key=lambda kv: -kv[1])),
        "winner": answers[chosen],
        "voters": sum(a is not None for a in answers),
        "agreement": votes[answers[chosen]] / total,
    }


def _contained(mine: Counter[str], theirs: Counter[str]) -> float:
    """How much of another output's answer ``mine`` contains: the share of its parts (a multiset) that ``mine``
    also has; an answer with no parts ("no call") is contained only by another with none."""
    total = sum(theirs.values())
    if total == 0:
        return 1.0 if not mine else 0.0
    return sum((mine & theirs).values()) / total


def _agreement(mine: Counter[str], theirs: Counter[str]) -> float:
    """The F1 of two answers' parts (multisets): shared parts over their mean size; two answers with no parts
    agree fully, one with none agrees with no other."""
    total = sum(mine.values()) + sum(theirs.values())
    if total == 0:
        return 1.0
    return 2 * sum((mine & theirs).values()) / total


# the utility each rule maximizes in expectation over the other outputs (minimum Bayes risk)
_UTILITIES: dict[str, Callable[[Counter[str], Counter[str]], float]] = {
    "coverage": _contained,
    "consensus": _agreement,
}
assert set(_UTILITIES) == set(PARTS_RULES)


def parts_choice(
    completions: Sequence[Completion],
    parts: Callable[[str], Sequence[str] | None],
    rule: str,
    weights: Sequence[float] | None = None,
) -> tuple[int | None, dict[str, Any]]:
    """The index of the completion whose answer best matches the other completions' answers, each answer a
    multiset of parts (``parts``: text -> parts, None for no answer; for tool calls, one canonical call per part).
    A completion scores the sum, over the others (``weights``: votes per completion), of a utility:

    - ``coverage``: the share of the other's parts it also has (recall). Where samples stop early, each holds
      part of the answer, and the one that holds what the others agree on and the parts a minority adds is chosen
      over the majority's shorter answer.
    - ``consensus``: the F1 of the two answers' parts, a majority vote with partial credit. It does not reward
      extra parts, so it suits a model that adds parts nobody asked for; coverage suits one that stops early.

    Both are minimum-Bayes-risk choices; an exact-match utility would be the majority vote. Ties by the highest
    mean log-probability per token; None when no complete completion yields an answer."""
    utility = _UTILITIES.get(rule)
    if utility is None:
        raise ValueError(f"unknown parts rule {rule!r}; choose from {', '.join(PARTS_RULES)}")
    weights = list(weights) if weights is not None else [1.0] * len(completions)
    answers: list[Counter[str] | None] = []
    for completion in completions:
        found = _extract(parts, completion, "parts extractor")
        answers.append(None if found is None else Counter(str(p) for p in found))
    voters = [i for i, a in enumerate(answers) if a is not None]
    if not voters:
        return None, {rule: {}, "voters": 0}
    scores = {i: sum(weights[j] * utility(answers[i], answers[j]) for j in voters if j != i) for i in voters}

    def key(i: int) -> tuple[float, float]:
        return scores[i], completions[i].logprob / max(1, len(completions[i].token_ids))

    chosen = max(voters, key=key)
    return chosen, {
        rule: {str(i): round(s, 6) for i, s in scores.items()},
        "voters": len(voters),
        "chosen_parts": sum(answers[chosen].values()),
    }
