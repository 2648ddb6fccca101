"""Build a sampler from a method name and flat parameters (what the CLI, server and planner receive)."""

from __future__ import annotations

from typing import Any, Callable

from ..backends.base import LanguageModel
from ..errors import ConfigError
from .base import Sampler
from .baselines import TemperatureSampler
from .config import PowerSamplingConfig, SamplingConfig
from .mh import PowerSampler

METHODS = ("power", "sample", "low-temp", "greedy", "best-of-n")

_SHARED = {"max_new_tokens", "seed", "deadline_s"}
_PARAMS = {
    "power": set(PowerSamplingConfig.model_fields) - {"quality_evaluator"},
    "sample": _SHARED | {"temperature"},
    "low-temp": _SHARED | {"alpha"},
    "greedy": set(_SHARED),
    "best-of-n": _SHARED | {"temperature", "n"},
}
_ALL_PARAMS = set().union(*_PARAMS.values())

_extra_builders: dict[str, Callable[..., Sampler]] = {}


def register_method(name: str, builder: Callable[..., Sampler], params: set[str]) -> None:
    """Make another sampler available by name (``builder(model, evaluator=..., **params)``)."""
    _extra_builders[name] = builder
    _PARAMS[name] = set(params)
    _ALL_PARAMS.update(params)


def available_methods() -> tuple[str, ...]:
    return tuple(_PARAMS)


def build_sampler(
    method: str, model: LanguageModel, *, evaluator: Callable[[str], float] | None = None, strict: bool = False,
    **params: Any,
) -> Sampler:
    """A sampler for ``method``. Parameters that are None are ignored; parameters that belong to other methods are
    ignored unless ``strict``; unknown names are an error."""
    if method not in _PARAMS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(available_methods())}")
    params = {k: v for k, v in params.items() if v is not None}
    unknown = set(params) - _ALL_PARAMS
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(sorted(unknown))} for method {method!r}")
    foreign = set(params) - _PARAMS[method]
    if strict and foreign:
        raise ConfigError(f"parameter(s) {', '.join(sorted(foreign))} do not apply to method {method!r}")
    mine = {k: v for k, v in params.items() if k in _PARAMS[method]}
    if method in _extra_builders:
        return _extra_builders[method](model, evaluator=evaluator, **mine)
    if method == "power":
        return PowerSampler(model, PowerSamplingConfig(**mine), evaluator=evaluator)
    if method == "low-temp":
        alpha = mine.pop("alpha", PowerSamplingConfig.model_fields["alpha"].default)
        if alpha <= 0:
            raise ConfigError(f"invalid alpha: must be > 0 (got {alpha})")
        return TemperatureSampler(model, SamplingConfig(temperature=1.0 / alpha, **mine), evaluator=evaluator,
                                  method="low-temp")
    if method == "greedy":
        return TemperatureSampler(model, SamplingConfig(temperature=0.0, **mine), evaluator=evaluator, method="greedy")
    if method == "best-of-n":
        mine.setdefault("n", 4)
        return TemperatureSampler(model, SamplingConfig(**mine), evaluator=evaluator, method="best-of-n")
    return TemperatureSampler(model, SamplingConfig(**mine), evaluator=evaluator, method="sample")
