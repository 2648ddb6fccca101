"""One grammar-constrained model call per route, and the seed's ``power_sample`` entry point.

Routes and the samplers behind them:

* ``baseline``: one sample at ``temperature`` (default 1, the plain model);
* ``power``: Metropolis-Hastings power sampling (target: the grammar-masked, step-wise renormalized model raised
  to alpha; proposals at temperature 1/alpha from the same masked model);
* ``best-of-n``: n samples at ``temperature``, the best by the quality evaluator;
* ``smc``: sequential Monte Carlo power sampling, when the installed samplers provide it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..backends.constraints import JsonSchemaConstraint
from ..errors import CapabilityError, ConfigError, PowerSamplingError
from ..samplers import available_methods, build_sampler, prompt_ids
from ..samplers.result import ProgressEvent
from .quality import PlanQualityEvaluator

log = logging.getLogger("powersampling.planner")

ROUTE_METHODS = {"baseline": "sample", "power": "power", "best-of-n": "best-of-n", "smc": "smc"}


class GenerationError(PowerSamplingError):
    """A model call did not give a usable answer (incomplete or invalid output, deadline). ``metadata`` holds the
    sampler's statistics for the failed call."""

    def __init__(self, message: str, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class RouteSettings:
    """Sampler settings for the routes. None leaves the sampler's default."""

    alpha: float = 2.0
    n_mcmc: int = 10
    block_size: int = 32
    temperature: float = 1.0
    best_of_n: int = 4
    n_particles: int | None = None
    seed: int | None = None

    def params_for(self, route: str) -> dict[str, Any]:
        if route == "baseline":
            return {"temperature": self.temperature}
        if route == "power":
            return {"alpha": self.alpha, "n_mcmc": self.n_mcmc, "block_size": self.block_size}
        if route == "best-of-n":
            return {"temperature": self.temperature, "n": self.best_of_n}
        if route == "smc":
            return {"alpha": self.alpha, "n_particles": self.n_particles}
        raise ConfigError(f"unknown route {route!r}; choose one of: {', '.join(ROUTE_METHODS)}")


@dataclass
class GenerationOutcome:
    text: str
    data: Any
    metadata: dict[str, Any] = field(default_factory=dict)


def check_route_available(route: str) -> None:
    if route not in ROUTE_METHODS:
        raise ConfigError(f"unknown route {route!r}; choose one of: {', '.join(ROUTE_METHODS)}")
    if ROUTE_METHODS[route] not in available_methods():
        raise CapabilityError(f"route {route!r} needs the {ROUTE_METHODS[route]!r} sampler, which this installation "
                              "does not provide")


def generate_json(
    model,
    route: str,
    system_prompt: str,
    user_prompt: str,
    response_schema: Mapping[str, Any] | str,
    *,
    max_new_tokens: int,
    settings: RouteSettings | None = None,
    evaluator: Callable[[str], float] | None = None,
    deadline_s: float | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> GenerationOutcome:
    """One constrained model call on ``route``; the parsed JSON or a ``GenerationError``."""
    settings = settings or RouteSettings()
    check_route_available(route)
    constraint = JsonSchemaConstraint.for_model(model, response_schema)
    params = {**settings.params_for(route), "max_new_tokens": max_new_tokens, "seed": settings.seed,
              "deadline_s": deadline_s}
    sampler = build_sampler(ROUTE_METHODS[route], model, evaluator=evaluator, **params)
    ids = prompt_ids(model, user_prompt, system=system_prompt)
    started = time.monotonic()
    result = sampler.sample(ids, constraint=constraint, progress=progress)
    metadata = {**result.metadata, "route": route, "prompt_tokens": len(ids),
                "call_latency_ms": (time.monotonic() - started) * 1000.0}
    tokens = result.token_ids
    finished = bool(tokens) and tokens[-1] in model.stop_token_ids
    if not finished:
        why = metadata.get("stopped_by", "length")
        raise GenerationError(f"the {route} route returned an unfinished answer (stopped by {why}, "
                              f"{len(tokens)} tokens)", metadata)
    try:
        data = json.loads(result.text)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"the {route} route returned invalid JSON despite the grammar: {exc}", metadata) from None
    return GenerationOutcome(result.text, data, metadata)


async def power_sample(
    model,
    system_prompt: str,
    user_prompt: str,
    response_schema: Mapping[str, Any],
    n_mcmc: int = 10,
    alpha: float = 2.0,
    block_size: int = 32,
    quality_evaluator: Callable[[str], float] | None = None,
    *,
    max_new_tokens: int = 512,
    seed: int | None = None,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """Power-sample one JSON answer matching ``response_schema`` (grammar-constrained) and return
    ``{"tasks", "quality_score", "metadata"}``.

    ``tasks`` is the answer's ``"tasks"`` list (or the answer itself when it is a list). ``quality_score`` comes from
    ``quality_evaluator(text)`` when given, else from the default plan evaluator against ``user_prompt``. With an
    evaluator, the returned answer is the best-scoring complete state the chain visited (``metadata.selected_by``
    says so), which trades exactness of the p^alpha draw for quality. An unfinished or invalid answer raises
    ``GenerationError``: no empty plan is passed off as a result.
    """
    settings = RouteSettings(alpha=alpha, n_mcmc=n_mcmc, block_size=block_size, seed=seed)
    outcome = await asyncio.to_thread(
        generate_json, model, "power", system_prompt, user_prompt, response_schema, max_new_tokens=max_new_tokens,
        settings=settings, evaluator=quality_evaluator, deadline_s=deadline_s,
    )
    data = outcome.data
    tasks = data.get("tasks", []) if isinstance(data, dict) else (data if isinstance(data, list) else [])
    metadata = dict(outcome.metadata)
    if quality_evaluator is not None:
        score = outcome.metadata.get("quality_score")
        if score is None:
            try:
                score = float(quality_evaluator(outcome.text))
            except Exception as exc:  # user code: report, do not crash the caller
                log.warning("quality evaluator failed on the final answer: %s", exc)
                metadata["evaluator_error"] = f"{type(exc).__name__}: {exc}"
                score = None
    else:
        report = PlanQualityEvaluator(user_prompt).evaluate_text(outcome.text)
        score = report.score
        metadata["quality_breakdown"] = report.breakdown
    metadata.update({"model": getattr(model, "name", None), "valid_json": True, "schema_constrained": True,
                     "quality_score": score})
    return {"tasks": tasks, "quality_score": score, "metadata": metadata}
