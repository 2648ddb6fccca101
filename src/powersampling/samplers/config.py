"""Validated sampler configuration. Validation happens once, here; samplers trust what they are given."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

QualityEvaluator = Callable[[str], float]


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


class PowerSamplingConfig(_Config):
    """Metropolis-Hastings power sampling (Karan & Du, arXiv 2510.14901), block-wise annealed.

    The target is p(x)^alpha over whole completions. Proposals are drawn at ``proposal_temperature`` (default
    1/alpha, the paper's choice); any other value still gives the exact ratio because log p and log q are kept apart.
    """

    alpha: float = Field(4.0, gt=0, le=64, description="power of the target p^alpha")
    n_mcmc: int = Field(10, ge=1, le=10_000, description="MH steps after each block")
    block_size: int = Field(16, ge=1, description="tokens added per block")
    max_new_tokens: int = Field(96, ge=1, le=1_000_000)
    proposal_temperature: Optional[float] = Field(None, gt=0, le=100)
    n_chains: int = Field(1, ge=1, le=4096, description="independent chains, decoded as batched rows")
    proposal_batch: Optional[int] = Field(
        None, ge=1, description="MH proposals drawn per chain in one batched call (default: n_mcmc)"
    )
    scan: Literal["random", "sorted"] = Field(
        "random",
        description="random: the paper's cut, uniform over the current tokens, one step at a time (proposals for "
        "upcoming steps prefetched in batches); sorted: the block's n_mcmc cuts drawn uniform over the block's "
        "positions and applied from the last position backwards, so all of them are drawn in one batched call",
    )
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    step_timeout_s: Optional[float] = Field(None, gt=0)
    deadline_s: Optional[float] = Field(None, gt=0)
    quality_evaluator: Optional[QualityEvaluator] = Field(None, exclude=True)

    @property
    def effective_proposal_temperature(self) -> float:
        return self.proposal_temperature if self.proposal_temperature is not None else 1.0 / self.alpha

    @property
    def effective_proposal_batch(self) -> int:
        return self.proposal_batch if self.proposal_batch is not None else self.n_mcmc


class SamplingConfig(_Config):
    """Plain decoding baselines: ancestral sampling at a temperature (0 = greedy), and best-of-n."""

    temperature: float = Field(1.0, ge=0, le=100)
    max_new_tokens: int = Field(96, ge=1, le=1_000_000)
    n: int = Field(1, ge=1, le=4096, description="candidates for best-of-n")
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    deadline_s: Optional[float] = Field(None, gt=0)
    quality_evaluator: Optional[QualityEvaluator] = Field(None, exclude=True)

    @model_validator(mode="after")
    def _greedy_has_one_candidate(self):
        if self.temperature == 0 and self.n > 1:
            raise ValueError("best-of-n with temperature 0 would draw n identical greedy candidates; use temperature > 0")
        return self
