"""Validated sampler configuration: one pydantic type per method, and every default written once, here.

Validation happens once, when a config is built; samplers trust what they are given. The field sets form a small
hierarchy so the settings methods share are declared once: ``DecodeConfig`` (length, seed, deadline, evaluator)
for every method, ``PowerTargetConfig`` adds the power ``alpha`` for the methods aiming at p^alpha.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

PARTS_RULES = ("coverage", "consensus")  # selections that compare answers made of parts (samplers.base.parts_choice)

QualityEvaluator = Callable[[str], float]
AnswerExtractor = Callable[[str], str | None]
PartsExtractor = Callable[[str], Sequence[str] | None]


def _raise_config_error(exc: ValidationError, owner: str) -> None:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or owner
        got = err.get("input")
        parts.append(f"{field}: {err['msg']}" + (f" (got {got!r})" if not isinstance(got, dict) else ""))
    raise ConfigError(f"invalid {owner}: " + "; ".join(parts)) from None


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            _raise_config_error(exc, type(self).__name__)

    def replace(self, **changes: Any):
        """A copy with some fields changed, validated again."""
        return type(self)(**{**self.__dict__, **changes})

    @classmethod
    def parameter_names(cls) -> frozenset[str]:
        """The parameters a caller may set by name (the evaluator is passed separately)."""
        return frozenset(cls.model_fields) - {"quality_evaluator", "answer_extractor", "parts_extractor"}


class DecodeConfig(_Config):
    """What every method has: a length cap, a seed, an overall deadline and an optional quality evaluator."""

    max_new_tokens: int = Field(96, ge=1, le=1_000_000, description="generated tokens at most")
    seed: int | None = Field(None, ge=0, lt=2**63, description="None: fresh entropy, recorded in metadata")
    deadline_s: float | None = Field(
        None, gt=0, le=86_400, description="overall time limit (a day at most); the best so far is returned"
    )
    quality_evaluator: QualityEvaluator | None = Field(None, exclude=True)
    select: Literal["default", "majority", "coverage", "consensus"] = Field(
        "default",
        description="which of a run's outputs (best-of-n candidates, MH chains, SMC particles) is "
        "returned: the method's own rule, the answer most of them agree on (majority vote; ties to the highest "
        "mean log-probability), the answer that contains the most of the others' answer parts (coverage), or "
        "the one whose parts agree best with theirs (consensus: F1); the last two need a parts_extractor (see "
        "samplers.base.parts_choice)",
    )
    answer_extractor: AnswerExtractor | None = Field(
        None, exclude=True, description="text -> answer for the majority vote (default: the last number)"
    )
    parts_extractor: PartsExtractor | None = Field(
        None,
        exclude=True,
        description="text -> the parts of its answer (e.g. one per tool call), for coverage and consensus",
    )

    @model_validator(mode="after")
    def _parts_rules_need_parts(self):
        if self.select in PARTS_RULES and self.parts_extractor is None:
            raise ValueError(
                f"select={self.select!r} compares answers made of parts (such as tool calls); it needs a "
                "parts_extractor (text -> list of parts), which the evaluation harness gives for benchmarks whose "
                "answers have parts"
            )
        return self


def low_temperature(alpha: float) -> float:
    """1/alpha: the temperature at which each token is drawn from p^alpha of the next-token distribution alone.
    It is low-temp's temperature and the default proposal temperature of power, smc (at the current alpha_t) and
    scalable-power: the paper's choice for MH, and the one that minimizes Power-SMC's per-token weight variance."""
    return 1.0 / alpha


class PowerTargetConfig(DecodeConfig):
    """Methods built around the power distribution p^alpha."""

    alpha: float = Field(4.0, gt=0, le=64, description="power of the target p^alpha (alpha < 1 flattens)")


class _TemperatureConfig(DecodeConfig):
    temperature: float = Field(1.0, ge=0, le=100, description="sampling temperature (0: greedy)")


class SamplingConfig(_TemperatureConfig):
    """Plain ancestral sampling at a temperature (no truncation)."""

    @property
    def n(self) -> int:
        return 1


class GreedyConfig(DecodeConfig):
    """The most likely token at every step."""

    @property
    def temperature(self) -> float:
        return 0.0

    @property
    def n(self) -> int:
        return 1


class LowTemperatureConfig(PowerTargetConfig):
    """Per-token temperature 1/alpha: the MH proposal, not the p^alpha target."""

    @property
    def temperature(self) -> float:
        return low_temperature(self.alpha)

    @property
    def n(self) -> int:
        return 1


class AdaptiveVoteConfig(DecodeConfig):
    """A majority vote over independent outputs (best-of-n's candidates, MH's chains) that may stop drawing them
    early: the outputs are drawn in rounds of ``round_size`` and ``samplers.votes.vote_stop_reason`` decides after
    each round."""

    vote_stop: Literal["fixed", "unbeatable", "posterior"] = Field(
        "fixed",
        description="with select='majority': 'fixed' draws the whole budget; 'unbeatable' draws in rounds of "
        "round_size and stops once the leading answer's votes exceed the runner-up's plus the outputs left; "
        "'posterior' also stops once P(leader's share > runner-up's) >= vote_confidence under a Beta(leader+1, "
        "runner-up+1) posterior (see samplers.votes)",
    )
    round_size: int = Field(
        2, ge=1, le=4096, description="outputs (samples, chains) drawn per round of an adaptive selection"
    )
    vote_confidence: float = Field(
        0.95, gt=0.5, lt=1, description="posterior probability that the leader leads, for vote_stop='posterior'"
    )

    @model_validator(mode="after")
    def _adaptive_vote_needs_a_vote(self):
        if self.vote_stop != "fixed" and self.select != "majority":
            raise ValueError(f"vote_stop={self.vote_stop!r} stops a majority vote early; it needs select='majority'")
        return self

    @property
    def adaptive_vote(self) -> bool:
        return self.vote_stop != "fixed"


class BestOfNConfig(_TemperatureConfig, AdaptiveVoteConfig):
    """n samples at a temperature, one returned: the best by the evaluator, else by mean log p per token."""

    n: int = Field(4, ge=1, le=4096, description="candidates (with an adaptive vote: the most drawn)")
    quality_margin: float | None = Field(
        None,
        ge=0,
        description="with a quality evaluator: draw in rounds of round_size and stop once a round fails to raise "
        "the best quality score by more than this margin (None: draw all n)",
    )

    @model_validator(mode="after")
    def _greedy_has_one_candidate(self):
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                "best-of-n with temperature 0 would draw n identical greedy candidates; use temperature > 0"
            )
        if self.quality_margin is not None and self.select != "default":
            raise ValueError(f"quality_margin stops a selection by quality score; select={self.select!r} is not one")
        return self


class DefensiveProposalConfig(PowerTargetConfig):
    """A proposal that cannot hide a mode: every token from (1 - w) q_T + w q_flat, where q_T is the model at the
    proposal temperature and q_flat at ``defensive_temperature`` (default 1: p itself). log q is the mixture's, so
    MH ratios and SMC weights stay exact; any token p allows keeps proposal probability >= w p_flat."""

    defensive_weight: float = Field(
        0.0, ge=0, le=1, description="share of the flat component in each token's proposal (0: off)"
    )
    defensive_temperature: float = Field(
        1.0, gt=0, le=100, description="temperature of the flat component (1: the model itself)"
    )


class PowerSamplingConfig(DefensiveProposalConfig, AdaptiveVoteConfig):
    """Metropolis-Hastings power sampling (Karan & Du, arXiv 2510.14901), block-wise annealed.

    The target is p(x)^alpha over whole completions. Proposals are drawn at ``proposal_temperature`` (default
    1/alpha, the paper's choice); any other value still gives the exact ratio because log p and log q are kept apart.
    """

    n_mcmc: int = Field(10, ge=1, le=10_000, description="MH steps after each block")
    block_size: int = Field(16, ge=1, le=100_000, description="tokens added per block")
    proposal_temperature: float | None = Field(None, gt=0, le=100, description="default 1/alpha")
    n_chains: int = Field(
        1, ge=1, le=4096, description="independent chains, decoded as batched rows (an adaptive vote: the most it runs)"
    )
    proposal_batch: int | None = Field(
        None, ge=1, description="MH proposals drawn per chain in one batched call (default: n_mcmc)"
    )
    scan: Literal["random", "sorted", "entropy", "sorted-entropy"] = Field(
        "sorted",
        description="sorted (default; mixes as well per step and better per decoded token, benchmarks/"
        "bias_vs_cost.py): the block's n_mcmc cuts spread evenly over the block's positions (stratified) and applied "
        "from the last position backwards, all drawn in one batched call; random: the paper's cut, uniform over "
        "the current tokens, one step at a time (proposals for upcoming steps prefetched in batches); entropy: "
        "like random, but the cut drawn with probability entropy_floor / n + (1 - entropy_floor) H_m / sum H "
        "(H_m the next-token entropy at position m), the reverse cut's probability in the ratio (local backends); "
        "sorted-entropy: the sorted scan with position m's share of the n_mcmc cuts scaled by entropy_floor + "
        "(1 - entropy_floor) H_m / log(vocabulary size), so confident completions get fewer proposals (exact; local "
        "backends)",
    )
    entropy_floor: float = Field(
        0.25,
        gt=0,
        le=1,
        description="entropy scans: share of the uniform cut in the cut law (entropy: 1 is the random scan; "
        "sorted-entropy: the cut rate of a position whose next-token entropy is 0, relative to the sorted scan's)",
    )
    stop_after_rejections: int | None = Field(
        None,
        ge=1,
        description="random and entropy scans: end a block's MH steps once this many proposals in a row were "
        "rejected (saves the proposals not yet drawn; NOT exactly p^alpha: the number of steps then depends on the "
        "chain; bias measured in benchmarks/bias_vs_cost.py). None: every block runs n_mcmc steps",
    )
    step_timeout_s: float | None = Field(None, gt=0, description="limit per batched proposal call")

    @model_validator(mode="after")
    def _early_stop_needs_sequential_steps(self):
        if self.stop_after_rejections is not None and self.scan in ("sorted", "sorted-entropy"):
            raise ValueError(
                "stop_after_rejections needs scan=random or scan=entropy (the sorted scan draws a block's proposals "
                "in one call, so stopping early saves nothing)"
            )
        return self

    @property
    def effective_proposal_temperature(self) -> float:
        return self.proposal_temperature if self.proposal_temperature is not None else low_temperature(self.alpha)

    @property
    def effective_proposal_batch(self) -> int:
        return self.proposal_batch if self.proposal_batch is not None else self.n_mcmc


class SMCConfig(DefensiveProposalConfig):
    """Power-SMC: N particles, proposal temperature (default 1/alpha), adaptive systematic resampling."""

    n_particles: int = Field(8, ge=1, le=4096, description="particles, decoded as the rows of one batch")
    proposal_temperature: float | None = Field(
        None, gt=0, le=100, description="default 1/alpha_t (1/alpha once annealing is over)"
    )
    ess_threshold: float = Field(
        0.5, ge=0, le=1, description="resample when ESS < ess_threshold * n_particles (0: never, 1: at every check)"
    )
    anneal_tokens: int = Field(
        0, ge=0, le=1_000_000, description="alpha rises linearly from 1 to alpha over the first k tokens (0: off)"
    )
    resample_every: int = Field(
        4,
        ge=1,
        le=1_000_000,
        description="tokens decoded per backend call between weight updates / ESS checks (exact for any value; "
        "larger is fewer calls but more weight degeneracy between checks)",
    )
    return_particles: bool = Field(False, description="all final particles in samples, weights in metadata")

    def alpha_at(self, tokens: int) -> float:
        """Exponent of the intermediate target after ``tokens`` decode steps."""
        if self.anneal_tokens == 0 or tokens >= self.anneal_tokens:
            return self.alpha
        return 1.0 + (self.alpha - 1.0) * tokens / self.anneal_tokens

    def proposal_temperature_at(self, tokens: int) -> float:
        """Temperature for a chunk ending at ``tokens``: 1/alpha_t there minimizes the per-token weight variance
        for that chunk's target (the Power-SMC result), unless the user fixed a temperature."""
        if self.proposal_temperature is not None:
            return self.proposal_temperature
        return low_temperature(self.alpha_at(tokens))


class ScalablePowerConfig(PowerTargetConfig):
    """Scalable power sampling: each token from p^alpha times a rollout estimate of its future (no MCMC)."""

    top_k: int = Field(8, ge=1, le=4096, description="candidate tokens per position (the most likely ones)")
    rollouts: int = Field(4, ge=1, le=1024, description="continuations drawn after each candidate")
    horizon: int | None = Field(16, ge=1, description="tokens per rollout at most (None: to the end)")
    jackknife: bool = Field(True, description="remove the ratio estimator's first-order bias")
    entropy_threshold: float | None = Field(
        None, ge=0, description="below this next-token entropy (nats) a token is drawn at 1/alpha, no rollouts"
    )
    proposal_temperature: float | None = Field(
        None, gt=0, le=100, description="rollouts' temperature (default 1/alpha)"
    )

    @property
    def effective_proposal_temperature(self) -> float:
        return self.proposal_temperature if self.proposal_temperature is not None else low_temperature(self.alpha)


def default(config: type[_Config], field: str) -> Any:
    """A config field's default, for signatures and help texts that show it without writing it again."""
    return config.model_fields[field].default


DEFAULT_ALPHA: float = default(PowerTargetConfig, "alpha")
DEFAULT_N_MCMC: int = default(PowerSamplingConfig, "n_mcmc")
