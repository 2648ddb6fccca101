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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import check_context_length
from ..backends.constraints import JsonSchemaConstraint
from ..errors import ConfigError, PowerSamplingError
from ..samplers import build_sampler, method_spec, planner_routes, prompt_ids, validate_params
from ..samplers.registry import POWER_METHOD, route_of
from ..samplers.result import ProgressEvent
from .quality import PlanQualityEvaluator

log = logging.getLogger("powersampling.planner")


class GenerationError(PowerSamplingError):
    """A model call did not give a usable answer (incomplete or invalid output, deadline). ``metadata`` holds the
    sampler's statistics for the failed call."""

    def __init__(self, message: str, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class RouteSettings:
    """Sampler settings of the planner's routes: the planner's own defaults (the ``power_sample`` contract: alpha 2,
    10 MH steps per 32-token block), written here once. None leaves the sampler's default. Every route's
    parameters are validated when the settings are built."""

    alpha: float = 2.0
    n_mcmc: int = 10
    block_size: int = 32
    temperature: float = 1.0
    best_of_n: int = 4
    n_particles: int | None = None
    seed: int | None = None
    # best-of-n by quality score: draw in rounds and stop once a round fails to raise the best score by more than
    # this (samplers.config.BestOfNConfig.quality_margin); None draws all best_of_n plans
    quality_margin: float | None = None

    def __post_init__(self) -> None:
        for route in planner_routes():
            validate_params(route_method(route), **self.params_for(route))

    def params_for(self, route: str) -> dict[str, Any]:
        """The sampler parameters of ``route``: each setting the route's method takes."""
        values = {
            "alpha": self.alpha,
            "n_mcmc": self.n_mcmc,
            "block_size": self.block_size,
            "temperature": self.temperature,
            "n": self.best_of_n,
            "n_particles": self.n_particles,
            "quality_margin": self.quality_margin,
        }
        names = method_spec(route_method(route)).config.parameter_names()
        return {k: v for k, v in values.items() if k in names and v is not None}


def route_method(route: str) -> str:
    """The sampler method a planner route runs."""
    routes = planner_routes()
    if route not in routes:
        raise ConfigError(f"unknown route {route!r}; choose one of: {', '.join(routes)}")
    return routes[route]


@dataclass
class GenerationOutcome:
    text: str
    data: Any
    metadata: dict[str, Any] = field(default_factory=dict)


def generate_json(
    model,
    method: str,
    system_prompt: str,
    user_prompt: str,
    response_schema: Mapping[str, Any] | str,
    *,
    max_new_tokens: int,
    params: Mapping[str, Any] | None = None,
    evaluator: Callable[[str], float] | None = None,
    deadline_s: float | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    label: str | None = None,
    wrap_constraint: Callable[[Any], Any] | None = None,
) -> GenerationOutcome:
    """One grammar-constrained model call with sampler ``method`` (any registered method, with its ``params``);
    the parsed JSON or a ``GenerationError``. ``label`` names the call in messages (the planner passes its route);
    ``wrap_constraint`` may wrap the grammar constraint (``streaming.TaskStream`` watches the answer grow)."""
    label = label or method
    constraint = JsonSchemaConstraint.for_model(model, response_schema)
    if wrap_constraint is not None:
        constraint = wrap_constraint(constraint)
    sampler = build_sampler(
        method,
        model,
        evaluator=evaluator,
        **{**(params or {}), "max_new_tokens": max_new_tokens, "deadline_s": deadline_s},
    )
    ids = prompt_ids(model, user_prompt, system=system_prompt)
    check_context_length(model, len(ids), max_new_tokens)
    started = time.monotonic()
    result = sampler.sample(ids, constraint=constraint, progress=progress)
    metadata = {
        **result.metadata,
        "route": label,
        "prompt_tokens": len(ids),
        "call_latency_ms": (time.monotonic() - started) * 1000.0,
    }
    tokens = result.token_ids
    finished = bool(tokens) and tokens[-1] in model.stop_token_ids
    if not finished:
        why = metadata.get("stopped_by", "length")
        raise GenerationError(
            f"the {label} route returned an unfinished answer (stopped by {why}, {len(tokens)} tokens)", metadata
        )
    try:
        data = json.loads(result.text)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"the {label} route returned invalid JSON despite the grammar: {exc}", metadata) from None
    return GenerationOutcome(result.text, data, metadata)


async def power_sample(
    model,
    system_prompt: str,
    user_prompt: str,
    response_schema: Mapping[str, Any],
    n_mcmc: int = RouteSettings.n_mcmc,
    alpha: float = RouteSettings.alpha,
    block_size: int = RouteSettings.block_size,
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
    route = route_of(POWER_METHOD)
    outcome = await asyncio.to_thread(
        generate_json,
        model,
        POWER_METHOD,
        system_prompt,
        user_prompt,
        response_schema,
        max_new_tokens=max_new_tokens,
        params={**settings.params_for(route), "seed": seed},
        evaluator=quality_evaluator,
        deadline_s=deadline_s,
        label=route,
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
    metadata.update(
        {"model": getattr(model, "name", None), "valid_json": True, "schema_constrained": True, "quality_score": score}
    )
    return {"tasks": tasks, "quality_score": score, "metadata": metadata}
