"""What every sampler returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SampleResult:
    """A completion: ``token_ids`` exclude the prompt and end with the stop id when the model stopped.

    ``logprobs`` are the base model's log p (temperature 1) of each token. ``metadata`` holds the run's measured
    statistics; ``samples`` holds every chain's or candidate's final completion (the first is ``self``'s source
    unless an evaluator picked another).
    """

    token_ids: list[int]
    text: str
    logprobs: np.ndarray
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)
    samples: list[Completion] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "method": self.method, "token_ids": list(self.token_ids), "metadata": self.metadata}


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprob: float
    complete: bool
    quality_score: float | None = None


@dataclass
class ProgressEvent:
    """Sent to a ``progress`` callback while a sampler runs. ``kind`` is 'block', 'mh_step', 'candidate' or 'done'."""

    kind: str
    block: int = 0
    blocks_total: int = 0
    step: int = 0
    steps_total: int = 0
    accepted: int = 0
    proposed: int = 0
    tokens_generated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0
