"""Baselines through the same API: ancestral sampling at a temperature, low temperature, greedy, best-of-n."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..backends.base import ContinuationRequest, LanguageModel, TokenConstraint
from ..errors import ConfigError
from ..observability.tracing import span
from .base import (
    Deadline,
    EvaluatorTracker,
    MethodSpec,
    ProgressCallback,
    Sampler,
    common_metadata,
    majority_vote,
    resolve_seed,
)
from .config import BestOfNConfig, GreedyConfig, LowTemperatureConfig, SamplingConfig
from .result import Completion, ProgressEvent, SampleResult
from .votes import leader_posterior, vote_stop_reason

TemperatureConfig = SamplingConfig | GreedyConfig | LowTemperatureConfig | BestOfNConfig


class TemperatureSampler(Sampler):
    """n independent samples at the config's temperature (0 = greedy) decoded as one batch; the first is returned,
    or with ``n > 1`` the best by the quality evaluator, else by mean base-model log p per token (best-of-n)."""

    config_type = SamplingConfig
    config: TemperatureConfig

    def __init__(
        self,
        model: LanguageModel,
        config: TemperatureConfig | None = None,
        *,
        evaluator=None,
        method: str | None = None,
    ) -> None:
        super().__init__(model, config, evaluator=evaluator)
        if getattr(self.config, "quality_margin", None) is not None and self.evaluator is None:
            raise ConfigError("quality_margin stops when the best quality score stops improving; give an evaluator")
        self.method = method or (
            "greedy" if self.config.temperature == 0 else "best-of-n" if self.config.n > 1 else "sample"
        )

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
        with span(
            f"power_sampling {self.method}",
            {"gen_ai.request.model": self.model.name, "gen_ai.request.temperature": cfg.temperature},
        ):
            tracker = EvaluatorTracker(self.evaluator)
            conts, completions, stop = self._draw(request, rng, deadline, tracker)
        vote = None
        if cfg.select == "majority" and len(completions) > 1:
            chosen, vote = majority_vote(completions, cfg.answer_extractor)
        if vote is not None and chosen is not None:
            selected_by = "majority"
        else:
            chosen, selected_by = self._select(completions, conts)
        cont = conts[chosen]
        tokens_generated = sum(len(c) for c in conts)
        metadata = common_metadata(
            self.method,
            cfg,
            seed=seed,
            tokens_generated=tokens_generated,
            final_tokens=len(cont),
            backend_calls=stop["rounds"] if stop is not None else 1,
            latency_ms=deadline.elapsed_ms(),
            stopped_by="deadline" if cont.interrupted else ("eos" if cont.stopped else "length"),
            complete=completions[chosen].complete,
            selected_by=selected_by,
            quality_score=completions[chosen].quality_score,
            tracker=tracker,
            constrained=constraint is not None,
        )
        metadata["temperature"] = cfg.temperature
        if vote is not None:
            metadata["vote"] = vote
        if stop is not None:
            metadata["adaptive_quality" if stop["rule"] == "quality_margin" else "adaptive_vote"] = stop
        if progress is not None:
            progress(ProgressEvent("done", tokens_generated=tokens_generated))
        return SampleResult(
            list(cont.token_ids), completions[chosen].text, np.asarray(cont.logp), self.method, metadata, completions
        )

    def _draw(self, request, rng, deadline: Deadline, tracker: EvaluatorTracker):
        """The continuations and their completions: all n as one batch, or in batched rounds of ``round_size``
        until the budget is spent or the adaptive rule says stop: for a vote (``vote_stop``), ``votes.
        vote_stop_reason``; for a quality selection (``quality_margin``), the first round after which the best
        quality score so far is not above the best before it plus the margin (rounds before any complete,
        scored output never stop it). Returns them and how an adaptive run stopped (None otherwise)."""
        cfg = self.config
        adaptive_vote = getattr(cfg, "vote_stop", "fixed") != "fixed" and cfg.select == "majority"
        adaptive_quality = getattr(cfg, "quality_margin", None) is not None
        adaptive = adaptive_vote or adaptive_quality
        conts, completions = [], []
        rounds, reason, best = 0, "budget", -np.inf
        while len(conts) < cfg.n:
            size = min(cfg.round_size, cfg.n - len(conts)) if adaptive else cfg.n
            drawn = self.model.sample([request] * size, cfg.temperature, rng, deadline=deadline.end)
            rounds += 1
            for cont in drawn:
                text = self._decode(cont.token_ids)
                complete = cont.stopped or len(cont) >= cfg.max_new_tokens
                score = tracker.score(tuple(cont.token_ids), text) if complete else None
                completions.append(Completion(list(cont.token_ids), text, float(cont.logp.sum()), complete, score))
            conts.extend(drawn)
            if not adaptive:
                break
            if any(c.interrupted for c in drawn):
                reason = "deadline"
                break
            remaining = cfg.n - len(conts)
            if adaptive_quality:
                previous = best
                best = max([best] + [c.quality_score for c in completions if c.quality_score is not None])
                if remaining > 0 and np.isfinite(best) and not best > previous + cfg.quality_margin:
                    reason = "no_improvement"
                    break
            elif remaining > 0:
                votes = majority_vote(completions, cfg.answer_extractor)[1]["votes"]
                why = vote_stop_reason(votes, remaining, cfg.vote_stop, cfg.vote_confidence)
                if why is not None:
                    reason = why
                    break
        if not adaptive:
            return conts, completions, None
        stop = {"stopped_by": reason, "samples_drawn": len(conts), "budget": cfg.n, "rounds": rounds}
        if adaptive_quality:
            stop.update(rule="quality_margin", margin=cfg.quality_margin, best_quality=float(best))
        else:
            votes = majority_vote(completions, cfg.answer_extractor)[1]["votes"]
            stop.update(rule=cfg.vote_stop, leader_posterior=leader_posterior(votes))
        return conts, completions, stop

    def _select(self, completions: list[Completion], conts) -> tuple[int, str]:
        if len(completions) == 1:
            return 0, "only"
        scored = [(c.quality_score, i) for i, c in enumerate(completions) if c.quality_score is not None]
        if scored:
            return max(scored)[1], "evaluator"
        mean_logp = [float(np.mean(c.logp)) if len(c) else -np.inf for c in conts]
        return int(np.argmax(mean_logp)), "mean_logprob"


def _builder(method: str):
    def build(model: LanguageModel, config: TemperatureConfig, evaluator) -> TemperatureSampler:
        return TemperatureSampler(model, config, evaluator=evaluator, method=method)

    return build


METHODS = (
    MethodSpec(
        "sample",
        SamplingConfig,
        _builder("sample"),
        summary="plain ancestral sampling at a temperature",
        temperature="sampling",
        in_default_eval=True,
    ),
    MethodSpec(
        "low-temp",
        LowTemperatureConfig,
        _builder("low-temp"),
        summary="per-token temperature 1/alpha (the MH proposal, not the p^alpha target)",
        in_default_eval=True,
    ),
    MethodSpec(
        "greedy", GreedyConfig, _builder("greedy"), summary="the most likely token at every step", temperature="zero"
    ),
    MethodSpec(
        "best-of-n",
        BestOfNConfig,
        _builder("best-of-n"),
        route="best-of-n",
        summary="n samples, the best by the evaluator or by mean log-probability",
        temperature="sampling",
        selects_by_evaluator=True,
        in_default_eval=True,
    ),
)
