"""Baselines through the same API: ancestral sampling at a temperature, low temperature, greedy, best-of-n."""

from __future__ import annotations

import numpy as np

from ..backends.base import ContinuationRequest, LanguageModel
from ..errors import ConfigError
from .base import Deadline, EvaluatorTracker, MethodSpec, Output, RunOutcome, SampleCall, Sampler
from .config import BestOfNConfig, GreedyConfig, LowTemperatureConfig, SamplingConfig
from .result import Completion, ProgressEvent
from .votes import adaptive_vote_record, round_stop

TemperatureConfig = SamplingConfig | GreedyConfig | LowTemperatureConfig | BestOfNConfig


class TemperatureSampler(Sampler):
    """n independent samples at the config's temperature (0 = greedy) decoded as one batch; the first is returned,
    or with ``n > 1`` the best by the quality evaluator, else by mean base-model log p per token (best-of-n).

    Built without a ``spec``, it runs greedy, best-of-n or plain sampling as the config's temperature and n say."""

    config: TemperatureConfig

    def __init__(
        self,
        model: LanguageModel,
        config: TemperatureConfig | None = None,
        evaluator=None,
        *,
        spec: MethodSpec | None = None,
    ) -> None:
        if spec is None:
            given = config or SamplingConfig()
            spec = _SPECS["greedy" if given.temperature == 0 else "best-of-n" if given.n > 1 else "sample"]
        super().__init__(model, config, evaluator, spec=spec)
        if getattr(self.config, "quality_margin", None) is not None and self.evaluator is None:
            raise ConfigError("quality_margin stops when the best quality score stops improving; give an evaluator")

    @property
    def span_name(self) -> str:
        return f"power_sampling {self.method}"

    def span_attributes(self) -> dict:
        return {"gen_ai.request.temperature": self.config.temperature}

    def run(self, call: SampleCall) -> RunOutcome:
        cfg, prompt = self.config, call.prompt
        request = ContinuationRequest(
            prompt, cfg.max_new_tokens, generated_start=len(prompt), constraint=call.constraint
        )
        conts, completions, stop = self._draw(request, call.rng, call.deadline, call.tracker)
        outputs = [Output(c, np.asarray(cont.logp), cont.stopped) for c, cont in zip(completions, conts)]
        tokens_generated = sum(len(c) for c in conts)
        metadata: dict = {"temperature": cfg.temperature}
        if stop is not None:
            metadata["adaptive_quality" if stop["rule"] == "quality_margin" else "adaptive_vote"] = stop
        by_evaluator = None
        if len(completions) == 1:
            default, rule = 0, "only"
        else:
            scored = [(c.quality_score, i) for i, c in enumerate(completions) if c.quality_score is not None]
            by_evaluator = outputs[max(scored)[1]] if scored else None
            mean_logp = [float(np.mean(c.logp)) if len(c) else -np.inf for c in conts]
            default, rule = int(np.argmax(mean_logp)), "mean_logprob"
        return RunOutcome(
            outputs,
            default,
            rule,
            tokens_generated=tokens_generated,
            backend_calls=stop["rounds"] if stop is not None else 1,
            hit_deadline=any(c.interrupted for c in conts),
            by_evaluator=by_evaluator,
            metadata=metadata,
            done=ProgressEvent("done", tokens_generated=tokens_generated),
        )

    def _draw(self, request, rng, deadline: Deadline, tracker: EvaluatorTracker):
        """The continuations and their completions: all n as one batch, or in batched rounds of ``round_size``
        until the budget is spent or the adaptive rule says stop (``_round_stop``). Returns them and how an
        adaptive run stopped (None otherwise)."""
        cfg = self.config
        adaptive_quality = getattr(cfg, "quality_margin", None) is not None
        adaptive = adaptive_quality or getattr(cfg, "adaptive_vote", False)
        conts, completions = [], []
        rounds, reason, best = 0, "budget", -np.inf
        while len(conts) < cfg.n:
            size = min(cfg.round_size, cfg.n - len(conts)) if adaptive else cfg.n
            drawn = self.model.sample([request] * size, cfg.temperature, rng, deadline=deadline.end)
            rounds += 1
            completions.extend(self._completion(cont, tracker) for cont in drawn)
            conts.extend(drawn)
            if not adaptive:
                return conts, completions, None
            if any(c.interrupted for c in drawn):
                reason = "deadline"
                break
            previous = best
            if adaptive_quality:
                best = max([best] + [c.quality_score for c in completions if c.quality_score is not None])
            why = self._round_stop(completions, cfg.n - len(conts), previous, best)
            if why is not None:
                reason = why
                break
        if not adaptive_quality:
            return (
                conts,
                completions,
                adaptive_vote_record(completions, cfg, stopped_by=reason, budget=cfg.n, rounds=rounds),
            )
        stop = {"stopped_by": reason, "samples_drawn": len(conts), "budget": cfg.n, "rounds": rounds}
        stop.update(rule="quality_margin", margin=cfg.quality_margin, best_quality=float(best))
        return conts, completions, stop

    def _completion(self, cont, tracker: EvaluatorTracker) -> Completion:
        text = self._decode(cont.token_ids)
        complete = cont.stopped or len(cont) >= self.config.max_new_tokens
        score = tracker.score(tuple(cont.token_ids), text) if complete else None
        return Completion(list(cont.token_ids), text, float(cont.logp.sum()), complete, score)

    def _round_stop(self, completions: list[Completion], remaining: int, previous: float, best: float) -> str | None:
        """Why an adaptive run stops after this round, or None to draw on: for a quality selection
        (``quality_margin``), the round did not raise the best quality score above the best before it plus the
        margin (rounds before any complete, scored output never stop it); for a vote (``vote_stop``),
        ``votes.vote_stop_reason``."""
        cfg = self.config
        if remaining <= 0:
            return None
        if cfg.quality_margin is not None:
            return "no_improvement" if np.isfinite(best) and not best > previous + cfg.quality_margin else None
        return round_stop(completions, remaining, cfg)


def _declare(name: str, config_type: type[TemperatureConfig], **fields) -> MethodSpec:
    def build(model: LanguageModel, config: TemperatureConfig, evaluator=None) -> TemperatureSampler:
        return TemperatureSampler(model, config, evaluator, spec=spec)

    spec = MethodSpec(name, config_type, build, **fields)
    return spec


METHODS = (
    _declare(
        "sample",
        SamplingConfig,
        summary="plain ancestral sampling at a temperature",
        temperature="sampling",
        in_default_eval=True,
    ),
    _declare(
        "low-temp",
        LowTemperatureConfig,
        summary="per-token temperature 1/alpha (the MH proposal, not the p^alpha target)",
        in_default_eval=True,
    ),
    _declare("greedy", GreedyConfig, summary="the most likely token at every step", temperature="zero"),
    _declare(
        "best-of-n",
        BestOfNConfig,
        route="best-of-n",
        summary="n samples, the best by the evaluator or by mean log-probability",
        temperature="sampling",
        selects_by_evaluator=True,
        in_default_eval=True,
    ),
)
_SPECS = {spec.name: spec for spec in METHODS}
