"""Engine stand-ins whose self-tests really die: a segmentation fault through ctypes, an abort, an exception.

``install(kind)`` puts one in place of the llama.cpp engine check, for a test process or a CLI run like
``python -c "import crashing_engine; crashing_engine.install('segfault'); from powersampling.cli import main; main()"``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from pathlib import Path

from powersampling.backends import loading, selftest
from powersampling.backends.embedded import cache_root


def segfault(model_path: str, threads: int) -> dict:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a native kernel fault would
    return {}


def abort(model_path: str, threads: int) -> dict:
    os.abort()


def raise_error(model_path: str, threads: int) -> dict:
    raise RuntimeError("the stand-in engine refuses this model")


def works(model_path: str, threads: int) -> dict:
    return {"eval_batch": 8, "threads": threads}


def share_converted_models(cache: Path) -> None:
    """Point ``cache``/models at the real cache's converted models: a test that isolates the self-test records
    need not convert the embedded model again (about 15 s)."""
    real = cache_root() / "models"
    real.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(real, target_is_directory=True)


def install(kind: str, build: str | None = None) -> selftest.EngineCheck:
    """Replace the llama.cpp engine by a stand-in whose self-test child runs ``kind`` (the installed
    llama-cpp-python, or torch where it is absent, provides the version). Only the self-test is stood in: a stand-in
    that passes would let ``load_model`` go on to the real engine."""
    package = "llama-cpp-python" if selftest._version("llama-cpp-python") else "torch"
    check = dataclasses.replace(
        selftest.ENGINES["llama.cpp"],
        package=package,
        target=f"crashing_engine:{kind}",
        build=lambda: build or f"stand-in {kind}",  # each kind is its own build, so the cache tells them apart
    )
    selftest.ENGINES["llama.cpp"] = check
    loading.llama_cpp_available = lambda: True  # the stand-in plays the installed engine
    return check
