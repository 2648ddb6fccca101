"""The benchmarks the harness runs, one module each, and the registry that finds them by name.

A benchmark is a ``Benchmark`` subclass decorated with ``@register_benchmark``; nothing else needs editing. The
built-in modules below are imported on the first lookup; a benchmark in another installed package is found through
the ``powersampling.benchmarks`` entry-point group (``name = "package.module:Class"``), and one in any module
imported before the lookup (a test module, a script) by its decorator alone.
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import entry_points

from ...errors import ConfigError
from .base import STYLES, Benchmark, BenchmarkPrompt, ExecLimits, resolve_style

BUILTIN_MODULES = ("gsm8k", "math500", "humaneval", "mbpp", "taskbench", "bfcl")
ENTRY_POINT_GROUP = "powersampling.benchmarks"

_lock = threading.RLock()
_classes: dict[str, type[Benchmark]] = {}
_discovered = False


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make ``cls`` runnable by its ``name`` (``powersampling eval --task NAME``)."""
    if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
        raise TypeError(f"{cls!r} is not a Benchmark subclass")
    if not cls.name or not cls.name.strip() or "," in cls.name:
        raise ConfigError(f"benchmark class {cls.__qualname__} needs a name without commas")
    with _lock:
        known = _classes.get(cls.name)
        if known is not None and known is not cls:
            raise ConfigError(f"a benchmark named {cls.name!r} is already registered ({known.__module__})")
        _classes[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        for module in BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{module}")
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            loaded = entry.load()
            if isinstance(loaded, type):
                register_benchmark(loaded)
        _discovered = True


def benchmark_names() -> tuple[str, ...]:
    _discover()
    return tuple(_classes)


def get_benchmark(name: str) -> Benchmark:
    _discover()
    if name not in _classes:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(_classes)}")
    return _classes[name]()


__all__ = [
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "STYLES",
    "Benchmark",
    "BenchmarkPrompt",
    "ExecLimits",
    "benchmark_names",
    "get_benchmark",
    "register_benchmark",
    "resolve_style",
]
