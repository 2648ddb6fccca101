"""Baselines through the same API: ancestral sampling at a temperature, greedy, best-of-n."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backends.base import ContinuationRequest, LanguageModel, TokenConstraint
from ..observability.tracing import span
from .base import Deadline, EvaluatorTracker, ProgressCallback, Sampler, resolve_seed
from .config import SamplingConfig
from .result import Completion, ProgressEvent, SampleResult


class TemperatureSampler(Sampler):
    """n independent samples at ``temperature`` (0 = greedy) decoded as one batch; the first is returned, or with
    ``n > 1`` the best by the quality evaluator, else by mean base-model log p per token (best-of-n)."""

    def __init__(
        self, model: LanguageModel, config: SamplingConfig | None = None, *, evaluator=None, method: str | None = None
    ) -> None:
        super().__init__(model)
        self.config = config or SamplingConfig()
        self.evaluator = evaluator or self.config.quality_evaluator
        self.method = method or ("greedy" if self.config.temperature == 0 else
                                 "best-of-n" if self.config.n > 1 else "sample")

    def sample(
        self,
        prompt_ids: Sequence[int],
        *,
        constraint: TokenConstraint | None = None,
        progress: ProgressCallback | None = None,
    ) -> SampleResult:
        cfg = self.config
        prompt = list(prompt_ids)
        seed = resolve_seed(cfg.seed)
        rng = np.random.default_rng(seed)
        deadline = Deadline(cfg.deadline_s)
        request = ContinuationRequest(prompt, cfg.max_new_tokens, generated_start=len(prompt), constraint=constraint)
        with span(f"power_sampling {self.method}", {"gen_ai.request.model": self.model.name,
                                                     "gen_ai.request.temperature": cfg.temperature}):
            conts = self.model.sample([request] * cfg.n, cfg.temperature, rng, deadline=deadline.end)
        tracker = EvaluatorTracker(self.evaluator)
        completions = []
        for cont in conts:
            text = self._decode(cont.token_ids)
            complete = cont.stopped or len(cont) >= cfg.max_new_tokens
            score = tracker.score(tuple(cont.token_ids), text) if complete else None
            completions.append(Completion(list(cont.token_ids), text, float(cont.logp.sum()), complete, score))
        chosen, selected_by = self._select(completions, conts)
        cont = conts[chosen]
        tokens_generated = sum(len(c) for c in conts)
        stopped_by = "deadline" if cont.interrupted else ("eos" if cont.stopped else "length")
        metadata = {
            "method": self.method,
            "temperature": cfg.temperature,
            "n": cfg.n,
            "max_new_tokens": cfg.max_new_tokens,
            "seed": seed,
            "tokens_generated": tokens_generated,
            "final_tokens": len(cont),
            "cost_multiplier": tokens_generated / max(1, len(cont)),
            "latency_ms": deadline.elapsed_ms(),
            "stopped_by": stopped_by,
            "complete": completions[chosen].complete,
            "selected_by": selected_by,
            "quality_score": completions[chosen].quality_score,
            "evaluator_calls": tracker.calls,
            "evaluator_errors": tracker.errors,
            "constrained": constraint is not None,
        }
        if progress is not None:
            progress(ProgressEvent("done", tokens_generated=tokens_generated))
        return SampleResult(list(cont.token_ids), completions[chosen].text, np.asarray(cont.logp), self.method,
                            metadata, completions)

    def _select(self, completions: list[Completion], conts) -> tuple[int, str]:
        if len(completions) == 1:
            return 0, "only"
        scored = [(c.quality_score, i) for i, c in enumerate(completions) if c.quality_score is not None]
        if scored:
            return max(scored)[1], "evaluator"
        mean_logp = [float(np.mean(c.logp)) if len(c) else -np.inf for c in conts]
        return int(np.argmax(mean_logp)), "mean_logprob"
