"""Engine self-tests, run in a child process so that an engine that crashes cannot take the caller down.

A native engine build can die on a CPU it was not built for, or with a kernel bug for some batch shapes: a
segmentation fault or an abort kills the Python process with no exception to catch. So the first time an engine
build meets a model, its self-test (load, the llama.cpp batch-invariance probe, one short decode) runs in a child
``python -m powersampling.backends.selftest``. The outcome is kept in the cache folder under a key made of the
engine's version, its build (the files of its shared libraries: a rebuild gives a new key), the model file and the
thread count, so later loads pay nothing. ``load_model`` consults it before loading llama.cpp in process: a crashed
self-test makes ``backend="auto"`` fall back to transformers with a one-line warning, and an explicitly named
engine fail with a ``ModelLoadError`` that says what crashed and how to rebuild.

Each engine is an ``EngineCheck``: how to tell its version and build, and the ``module:function`` the child runs.
``ENGINES`` holds the built-in ones; a test can put a stand-in there whose child really crashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .embedded import cache_root

SELF_TEST_TIMEOUT_S = 300.0  # a cold 0.5B GGUF load plus the probe takes ~15 s on 2 cores; a hang is a failure
LLAMA_REBUILD_HINT = (
    'rebuild it portably: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir --force-reinstall '
    "--no-deps 'llama-cpp-python>=0.3.36,<0.4'"
)


@dataclasses.dataclass(frozen=True)
class EngineCheck:
    """How to self-test one engine: ``package`` (the distribution whose version is reported), ``target`` (the
    ``module:function`` the child runs as ``function(model_path, threads) -> dict``), ``build`` (a string that
    changes when the engine is rebuilt) and ``rebuild_hint`` (what to tell a user whose build crashed)."""

    name: str
    package: str
    target: str
    build: Callable[[], str]
    rebuild_hint: str = ""

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None


@dataclasses.dataclass(frozen=True)
class SelfTestOutcome:
    """What a self-test found. ``status``: "ok", "crashed" (killed by a signal), "failed" (non-zero exit or an
    exception), "timeout", or "not installed". ``details`` is the child's report (eval_batch, tokens decoded...)."""

    engine: str
    status: str
    message: str
    version: str | None = None
    seconds: float = 0.0
    cached: bool = False
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _library_fingerprint(package_module: str) -> str:
    """Names, sizes and modification times of the shared libraries a package ships: a rebuild changes them."""
    spec = importlib.util.find_spec(package_module)
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    root = Path(next(iter(spec.submodule_search_locations)))
    parts = []
    for lib in sorted(root.rglob("*.so*")):
        stat = lib.stat()
        parts.append(f"{lib.relative_to(root)}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


ENGINES: dict[str, EngineCheck] = {
    "llama.cpp": EngineCheck(
        name="llama.cpp",
        package="llama-cpp-python",
        target="powersampling.backends.selftest:llamacpp_self_test",
        build=lambda: _library_fingerprint("llama_cpp"),
        rebuild_hint=LLAMA_REBUILD_HINT,
    ),
    "transformers": EngineCheck(
        name="transformers",
        package="transformers",
        target="powersampling.backends.selftest:transformers_self_test",
        build=lambda: f"torch {_version('torch')}",
    ),
}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _model_key(model_path: str) -> str:
    p = Path(model_path)
    try:
        stat = p.stat()
        return f"{p.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    except OSError:
        return str(p)


def _cache_file(check: EngineCheck, version: str, model_path: str, threads: int) -> Path:
    key = json.dumps([check.name, version, check.build(), _model_key(model_path), int(threads)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_root() / "selftest" / f"{check.name.replace('/', '_')}-{digest}.json"


def self_test(engine: str, model_path: str, threads: int, *, use_cache: bool = True) -> SelfTestOutcome:
    """The engine's self-test outcome on ``model_path`` with ``threads`` threads: from the cache when this build
    has met this model before, else from a child process (whose outcome is then cached, hangs excepted)."""
    check = ENGINES[engine]
    version = check.version()
    if version is None:
        return SelfTestOutcome(engine, "not installed", f"{check.package} is not installed")
    path = _cache_file(check, version, model_path, threads)
    if use_cache and path.is_file():
        try:
            data = json.loads(path.read_text())
            return dataclasses.replace(SelfTestOutcome(**data), cached=True)
        except (OSError, ValueError, TypeError):
            pass  # a damaged record is measured again
    outcome = _run_child(check, version, model_path, threads)
    if outcome.status != "timeout":
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(outcome.to_json()))
        staging.replace(path)
    return outcome


def _run_child(check: EngineCheck, version: str, model_path: str, threads: int) -> SelfTestOutcome:
    argv = [sys.executable, "-m", "powersampling.backends.selftest", check.target, str(model_path), str(threads)]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=SELF_TEST_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return SelfTestOutcome(
            check.name,
            "timeout",
            f"self-test did not finish in {SELF_TEST_TIMEOUT_S:.0f} s",
            version,
            SELF_TEST_TIMEOUT_S,
        )
    seconds = round(time.monotonic() - start, 2)
    if proc.returncode < 0:
        name = _signal_name(-proc.returncode)
        message = f"{check.name} {version} crashed ({name}) in its self-test on {Path(model_path).name}"
        if check.rebuild_hint:
            message += f"; {check.rebuild_hint}"
        return SelfTestOutcome(check.name, "crashed", message, version, seconds, details={"signal": name})
    report = _last_json_line(proc.stdout)
    if proc.returncode != 0 or report is None:
        why = _last_line(proc.stderr) or f"exit status {proc.returncode}"
        return SelfTestOutcome(
            check.name, "failed", f"{check.name} {version} self-test failed: {why}", version, seconds
        )
    return SelfTestOutcome(check.name, "ok", f"{check.name} {version} works", version, seconds, details=report)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# the children's work: load, probe, decode a few tokens, report


def llamacpp_self_test(model_path: str, threads: int) -> dict:
    """Load the GGUF file the way ``load_model`` does (the batch-invariance probe runs in the constructor), then
    decode a few tokens as two rows side by side."""
    import llama_cpp
    import numpy as np

    from .base import ContinuationRequest
    from .llamacpp import load_llamacpp

    lm = load_llamacpp(model_path, n_threads=threads)
    prompt = lm.tokenizer.encode("The capital of France is")
    requests = [ContinuationRequest(prompt, 4, generated_start=len(prompt))] * 2
    continuations = lm.sample(requests, 1.0, np.random.default_rng(0))
    system_info = llama_cpp.llama_print_system_info()
    lm.close()
    return {
        "eval_batch": lm.eval_batch,
        "tokens_decoded": sum(len(c.token_ids) for c in continuations),
        "system_info": system_info.decode() if isinstance(system_info, bytes) else str(system_info),
    }


def transformers_self_test(model_path: str, threads: int) -> dict:
    """Load the model through ``load_model`` on the transformers backend and decode a few tokens."""
    import numpy as np

    from .base import ContinuationRequest
    from .loading import load_model

    lm = load_model(model_path, backend="transformers", threads=threads)
    prompt = lm.tokenizer.encode("The capital of France is")
    (continuation,) = lm.sample(
        [ContinuationRequest(prompt, 4, generated_start=len(prompt))], 1.0, np.random.default_rng(0)
    )
    return {"tokens_decoded": len(continuation.token_ids)}


def _child_main(argv: list[str]) -> int:
    target, model_path, threads = argv
    module, _, function = target.partition(":")
    report = getattr(importlib.import_module(module), function)(model_path, int(threads))
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
