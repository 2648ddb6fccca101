"""Samplers: pure algorithms over the backend protocol, registered by name in ``registry``."""

from .base import MethodSpec, Sampler, prompt_ids
from .baselines import TemperatureSampler
from .config import (
    BestOfNConfig,
    DecodeConfig,
    GreedyConfig,
    LowTemperatureConfig,
    PowerSamplingConfig,
    SamplingConfig,
    ScalablePowerConfig,
    SMCConfig,
)
from .mh import PowerSampler
from .registry import (
    available_methods,
    build_sampler,
    method_names,
    method_spec,
    planner_routes,
    register_method,
    route_of,
    validate_params,
)
from .result import Completion, ProgressEvent, SampleResult
from .scalable import ScalablePowerSampler
from .smc import SMCSampler

__all__ = [
    "BestOfNConfig",
    "Completion",
    "DecodeConfig",
    "GreedyConfig",
    "LowTemperatureConfig",
    "MethodSpec",
    "PowerSampler",
    "PowerSamplingConfig",
    "ProgressEvent",
    "SMCConfig",
    "SMCSampler",
    "SampleResult",
    "Sampler",
    "SamplingConfig",
    "ScalablePowerConfig",
    "ScalablePowerSampler",
    "TemperatureSampler",
    "available_methods",
    "build_sampler",
    "method_names",
    "method_spec",
    "planner_routes",
    "prompt_ids",
    "register_method",
    "route_of",
    "validate_params",
]
