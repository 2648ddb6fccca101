"""The one method registry: every decoding method by name, with its config type, builder and route.

Each built-in sampler module declares its methods in a module-level ``METHODS`` tuple of ``MethodSpec``; the
registry reads the modules listed in ``BUILTIN_MODULES`` (in that order, whatever was imported before) and then any
method added with ``register_method``. The CLI choices, the server's ``method`` values, the planner routes and the
metrics ``route`` labels all come from here.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from ..backends.base import LanguageModel
from ..errors import ConfigError
from .base import MethodSpec, Sampler
from .config import DecodeConfig

BUILTIN_MODULES = ("baselines", "mh", "smc", "scalable")

# Roles methods play outside their own modules (the CLI, the server, the planner and the evaluation harness look
# them up here rather than naming methods): plain sampling at T=1 is the baseline route and the unit of cost;
# best-of-n draws n independent candidates and keeps one, which is also how a vote over a one-sample method runs;
# Metropolis-Hastings power sampling is the method run when a request names none, the route the planner's rollout
# flag turns on and ``power_sample`` runs, and the method whose decoded tokens best-of-n at matched cost spends;
# greedy is what temperature 0 means when a request names no method (as in lm-eval and most frameworks).
PLAIN_METHOD = "sample"
CANDIDATES_METHOD = "best-of-n"
POWER_METHOD = "power"
DEFAULT_METHOD = POWER_METHOD
MATCHED_COST_METHOD = POWER_METHOD
ZERO_TEMPERATURE_METHOD = "greedy"
BASELINE_ROUTE = "baseline"  # the planner route (and metrics label) of every method that only samples

_lock = threading.Lock()
_methods: dict[str, MethodSpec] = {}
_extra: dict[str, MethodSpec] = {}


def _registry() -> dict[str, MethodSpec]:
    if not _methods:
        with _lock:
            if not _methods:
                found: dict[str, MethodSpec] = {}
                for module in BUILTIN_MODULES:
                    for spec in importlib.import_module(f"{__package__}.{module}").METHODS:
                        found[spec.name] = spec
                _methods.update(found)
    return {**_methods, **_extra}


def register_method(spec: MethodSpec) -> None:
    """Make another method available by name everywhere (CLI, server, planner routes, evaluation)."""
    if not spec.name or spec.name in _registry():
        raise ConfigError(f"a method named {spec.name!r} is already registered (or the name is empty)")
    _extra[spec.name] = spec


def method_names() -> tuple[str, ...]:
    return tuple(_registry())


available_methods = method_names


def method_spec(method: str) -> MethodSpec:
    registry = _registry()
    if method not in registry:
        shown = "''" if method == "" else repr(method)
        raise ConfigError(f"unknown method {shown}; choose one of: {', '.join(registry)}")
    return registry[method]


def methods_where(*having: str, **capabilities: Any) -> tuple[str, ...]:
    """The methods whose ``MethodSpec`` fields named in ``having`` are set (true, not None) and whose other fields
    have the given values, in registry order (which is also the order of reports):
    ``methods_where("chains_field")``, ``methods_where(temperature="proposal")``."""
    return tuple(
        spec.name
        for spec in _registry().values()
        if all(getattr(spec, field) for field in having)
        and all(getattr(spec, field) == value for field, value in capabilities.items())
    )


def route_of(method: str) -> str:
    """The planner route (and metrics ``route`` label) a method runs under."""
    return method_spec(method).route


def planner_routes() -> dict[str, str]:
    """Planner route -> the method that serves it: ``baseline`` is plain sampling, every other route is the
    method of the same name."""
    routes = {BASELINE_ROUTE: PLAIN_METHOD}
    routes.update({spec.route: spec.name for spec in _registry().values() if spec.route != BASELINE_ROUTE})
    return routes


def validate_params(method: str, *, strict: bool = False, **params: Any) -> DecodeConfig:
    """The validated config of ``method`` for ``params``, without building a sampler.

    Parameters that are None are ignored (they keep the config's default); parameters that belong to other
    methods are ignored unless ``strict``; names no method knows are an error.
    """
    spec = method_spec(method)
    given = {k: v for k, v in params.items() if v is not None}
    # callables: passed through, not named settings
    extractors = {k: given.pop(k) for k in ("answer_extractor", "parts_extractor") if k in given}
    known = frozenset().union(*(s.config.parameter_names() for s in _registry().values()))
    unknown = set(given) - known
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(sorted(unknown))} for method {method!r}")
    mine = spec.config.parameter_names()
    foreign = set(given) - mine
    if strict and foreign:
        raise ConfigError(f"parameter(s) {', '.join(sorted(foreign))} do not apply to method {method!r}")
    chosen = {k: v for k, v in given.items() if k in mine}
    return spec.config(**chosen, **extractors)


def build_sampler(
    method: str,
    model: LanguageModel,
    *,
    evaluator: Callable[[str], float] | None = None,
    strict: bool = False,
    **params: Any,
) -> Sampler:
    """A sampler for ``method`` (see ``validate_params`` for how parameters are read)."""
    config = validate_params(method, strict=strict, **params)
    return method_spec(method).build(model, config, evaluator)


def one_sample_temperature(method: str, **params: Any) -> float | None:
    """The temperature of a method that returns one sample per call (several of them, for a vote or a selection,
    are best-of-n candidates at this temperature); None for a method that draws several outputs itself or none at
    random (greedy)."""
    config = validate_params(method, **params)
    if "n" in type(config).model_fields or getattr(config, "n", None) != 1:
        return None
    temperature = float(getattr(config, "temperature", 0.0))
    return temperature if temperature > 0 else None
