"""Samplers: pure algorithms over the backend protocol."""

from .base import Sampler, prompt_ids
from .baselines import TemperatureSampler
from .config import PowerSamplingConfig, SamplingConfig
from .mh import PowerSampler
from .registry import available_methods, build_sampler, register_method
from .result import Completion, ProgressEvent, SampleResult

__all__ = [
    "Completion", "PowerSampler", "PowerSamplingConfig", "ProgressEvent", "SampleResult", "Sampler",
    "SamplingConfig", "TemperatureSampler", "available_methods", "build_sampler", "prompt_ids", "register_method",
    "SMCConfig", "SMCSampler",
]

from .smc import SMCConfig, SMCSampler  # noqa: E402  (last: importing it registers "smc")
