"""powersampling: exact power sampling (p^alpha) for language models.

The public names below are imported on first use, so ``import powersampling`` (and the command line's start-up)
does not pay for numpy, pydantic or torch until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "FunctionLM": "backends.function",
    "load_model": "backends.loading",
    "CapabilityError": "errors",
    "ConfigError": "errors",
    "ModelLoadError": "errors",
    "PowerSamplingError": "errors",
    "PowerSampler": "samplers.mh",
    "PowerSamplingConfig": "samplers.config",
    "SampleResult": "samplers.result",
    "SamplingConfig": "samplers.config",
    "TemperatureSampler": "samplers.baselines",
    "build_sampler": "samplers.registry",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .backends.function import FunctionLM as FunctionLM
    from .backends.loading import load_model as load_model
    from .errors import CapabilityError as CapabilityError
    from .errors import ConfigError as ConfigError
    from .errors import ModelLoadError as ModelLoadError
    from .errors import PowerSamplingError as PowerSamplingError
    from .samplers.baselines import TemperatureSampler as TemperatureSampler
    from .samplers.config import PowerSamplingConfig as PowerSamplingConfig
    from .samplers.config import SamplingConfig as SamplingConfig
    from .samplers.mh import PowerSampler as PowerSampler
    from .samplers.registry import build_sampler as build_sampler
    from .samplers.result import SampleResult as SampleResult


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'powersampling' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
