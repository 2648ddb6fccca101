"""powersampling: exact power sampling (p^alpha) for language models."""

from .backends import FunctionLM, load_model
from .errors import CapabilityError, ConfigError, ModelLoadError, PowerSamplingError
from .samplers import (
    PowerSampler,
    PowerSamplingConfig,
    SampleResult,
    SamplingConfig,
    TemperatureSampler,
    build_sampler,
)

__version__ = "0.1.0"

__all__ = [
    "CapabilityError", "ConfigError", "FunctionLM", "ModelLoadError", "PowerSampler", "PowerSamplingConfig",
    "PowerSamplingError", "SampleResult", "SamplingConfig", "TemperatureSampler", "build_sampler", "load_model",
]
