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
from pathlib import Path

from ...errors import ConfigError
from ..datasets import Problem
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


def load_problems(
    task: str,
    limit: int | None = None,
    offset: int = 0,
    *,
    data: str | Path | None = None,
    categories: str | None = None,
) -> list[Problem]:
    """The first ``limit`` problems of the benchmark ``task`` after ``offset``, in the dataset's own order.
    ``data`` is the folder of a benchmark that reads its files from one; ``categories`` (comma-separated) selects
    the categories of a benchmark that has them (``Benchmark.categories``)."""
    benchmark = get_benchmark(task)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (got {limit})")
    if offset < 0:
        raise ConfigError(f"offset must be >= 0 (got {offset})")
    benchmark.check_data_argument(None if data is None else Path(data))
    folder = None if data is None else Path(data)
    if categories is None:
        problems = benchmark.load(folder)
    elif not benchmark.categories:
        raise ConfigError(f"--categories is for benchmarks that have categories; {task} has none")
    else:
        problems = benchmark.load(folder, categories)
    if offset >= len(problems):
        raise ConfigError(f"offset {offset} is past the end of {task} ({len(problems)} problems)")
    end = None if limit is None else offset + limit
    return problems[offset:end]


__all__ = [
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "STYLES",
    "Benchmark",
    "BenchmarkPrompt",
    "ExecLimits",
    "benchmark_names",
    "get_benchmark",
    "load_problems",
    "register_benchmark",
    "resolve_style",
]
