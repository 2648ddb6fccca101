"""``load_model``: one entry point from a path (or nothing, for the embedded model) to a backend."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path

from ..errors import ModelLoadError
from .embedded import EMBEDDED_MODEL_NAME, cache_root, convert_gguf, embedded_gguf_path, embedded_model_dir
from .selftest import SelfTestOutcome, self_test

log = logging.getLogger("powersampling.backends")

BACKENDS = ("auto", "transformers", "llama.cpp", "vllm", "remote")
REMOTE_API_KEY_ENV = "POWERSAMPLING_REMOTE_API_KEY"


# Model names of hosted chat APIs (provider:model). They are refused: they return at most the top 20
# log-probabilities per token (Anthropic none) and continue chat messages, not token-id prefixes, so no method here
# can get the log p, log q and cut-point proposals it decodes with (docs/backends.md, "Hosted chat APIs").
HOSTED_CHAT_PROVIDERS = ("openai", "gemini", "anthropic")


def is_url(path) -> bool:
    """True for an ``http://`` or ``https://`` address (a served model), False for a local path."""
    return isinstance(path, str) and path.strip().lower().startswith(("http://", "https://"))


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def load_model(
    path: str | None = None, *, backend: str = "auto", device: str = "cpu", threads: int | None = None, **kwargs
):
    """Load a model for sampling.

    ``path`` is a local transformers folder or a GGUF file; None means the embedded SmolLM2-135M-Instruct.
    ``backend="auto"`` picks llama.cpp for GGUF files when llama-cpp-python is installed and its self-test on the
    file passes (``choose_gguf_engine``), transformers otherwise;
    ``backend="vllm"`` runs a transformers folder on the vLLM engine (``pip install 'powersampling[vllm]'``).

    ``path`` may also be a server URL (``http://`` or ``https://``): ``backend="remote"`` (which ``"auto"`` picks
    for a URL) connects a ``RemoteLM`` to a vLLM or SGLang server. It needs ``tokenizer=``, a local transformers
    tokenizer folder (or a .gguf file) matching the served model, for text prompts, the stop tokens and the
    vocabulary size; ``api=`` (auto, vllm, sglang), ``approximate=``, ``api_key=`` and RemoteLM's other keyword
    arguments pass through. ``api_key`` defaults to the environment variable ``POWERSAMPLING_REMOTE_API_KEY``.

    ``threads``: CPU threads of a local engine (llama.cpp's ``n_threads``, torch's ``set_num_threads`` for
    transformers); None keeps each engine's default.
    """
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    provider = path.split(":", 1)[0].strip().lower() if isinstance(path, str) and ":" in path else None
    if provider in HOSTED_CHAT_PROVIDERS:
        raise ModelLoadError(
            f"{path!r} names a hosted chat API, which cannot run here: it returns at most the top 20 "
            "log-probabilities per token and cannot continue a token prefix; serve the model with vLLM or SGLang "
            "(--model http://host:port) or use a local model"
        )
    if threads is not None and int(threads) < 1:
        raise ModelLoadError(f"threads must be >= 1, got {threads}")
    url = is_url(path)
    if backend == "remote" or (backend == "auto" and url):
        if not url:
            got = "no model" if path is None else repr(path)
            raise ModelLoadError(
                f"the remote backend needs a server URL as the model (--model http://host:port), got {got}"
            )
        return _load_remote(path.strip(), **kwargs)
    if url:
        raise ModelLoadError(
            f"{path!r} is a server URL, which only the remote backend loads; backend {backend!r} needs a local model"
        )
    if kwargs.get("tokenizer") is not None:
        raise ModelLoadError(
            "a tokenizer is only given for a remote model (a server URL); a local model brings its own"
        )
    kwargs.pop("tokenizer", None)
    if backend == "vllm":
        from .vllm_backend import load_vllm

        folder = embedded_model_dir() if path is None else Path(path).expanduser()
        if not folder.exists():
            raise ModelLoadError(f"model path {path!r} does not exist")
        return load_vllm(str(folder), name=EMBEDDED_MODEL_NAME if path is None else None, **kwargs)
    if path is None:
        gguf = embedded_gguf_path()
        if _gguf_runs_on_llamacpp(gguf, backend, device, threads):
            return _load_llamacpp(threads, gguf, name=EMBEDDED_MODEL_NAME, **kwargs)
        return _load_transformers(threads, embedded_model_dir(), device=device, name=EMBEDDED_MODEL_NAME, **kwargs)
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model path {path!r} does not exist")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelLoadError(f"{path!r} is a file but not a .gguf model; pass a GGUF file or a model folder")
        if _gguf_runs_on_llamacpp(p, backend, device, threads):
            return _load_llamacpp(threads, p, **kwargs)
        converted = cache_root() / "models" / f"{p.stem}-{p.stat().st_size}"
        folder = converted if (converted / "config.json").is_file() else convert_gguf(p, converted)
        return _load_transformers(threads, folder, device=device, name=p.stem, **kwargs)
    if backend == "llama.cpp":
        raise ModelLoadError(f"the llama.cpp backend needs a .gguf file, got folder {path!r}")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{path!r} is not a transformers model folder (no config.json)")
    return _load_transformers(threads, p, device=device, **kwargs)


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    """Which engine runs a local GGUF model and why; ``fallback`` is set when a preferred engine was passed over
    because its self-test did not pass (``load_model`` logs it as one warning line)."""

    engine: str
    reason: str
    self_test: SelfTestOutcome | None = None
    fallback: str | None = None


def choose_gguf_engine(
    gguf: Path, *, backend: str = "auto", device: str = "cpu", threads: int | None = None
) -> EngineChoice:
    """The engine for a GGUF file: llama.cpp when named, or, for ``auto`` on the CPU, when llama-cpp-python is
    installed and its self-test on this file passed (run once per build, model and thread count in a child
    process, see ``selftest``); transformers otherwise. A named llama.cpp whose self-test did not pass is a
    ``ModelLoadError`` that says what happened."""
    if backend == "transformers":
        return EngineChoice("transformers", "named with --backend transformers")
    if backend == "auto" and device != "cpu":
        return EngineChoice("transformers", f"device {device!r}: the llama.cpp backend runs on the CPU")
    if not llama_cpp_available():
        if backend == "llama.cpp":
            raise ModelLoadError("the llama.cpp backend needs llama-cpp-python: pip install 'powersampling[llama]'")
        return EngineChoice("transformers", "llama-cpp-python is not installed (pip install 'powersampling[llama]')")
    from .llamacpp import default_threads

    outcome = self_test("llama.cpp", str(gguf), threads or default_threads())
    if outcome.ok:
        how = "named with --backend llama.cpp" if backend == "llama.cpp" else "llama-cpp-python is installed"
        return EngineChoice("llama.cpp", f"{how}, and its self-test on this model passed", outcome)
    if backend == "llama.cpp":
        raise ModelLoadError(outcome.message)
    return EngineChoice(
        "transformers", f"the llama.cpp self-test did not pass ({outcome.status})", outcome, fallback=outcome.message
    )


def _gguf_runs_on_llamacpp(gguf: Path, backend: str, device: str, threads: int | None) -> bool:
    choice = choose_gguf_engine(gguf, backend=backend, device=device, threads=threads)
    if choice.fallback:
        log.warning("%s; using transformers instead", choice.fallback)
    return choice.engine == "llama.cpp"


def _load_transformers(
    threads: int | None, folder: Path, *, device: str, name: str | None = None, dtype=None, **kwargs
):
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .hf import TransformersLM

    hf_logging.disable_progress_bar()
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device)
    except Exception as exc:
        raise ModelLoadError(f"could not load transformers model from {folder}: {exc}") from exc
    return TransformersLM(model, tokenizer, name=name or folder.name, **kwargs)


def _load_llamacpp(threads: int | None, path: Path, **kwargs):
    try:
        from .llamacpp import load_llamacpp
    except ImportError as exc:
        raise ModelLoadError(f"the llama.cpp backend is not available: {exc}") from exc
    if threads is not None:
        kwargs["n_threads"] = int(threads)
    return load_llamacpp(str(path), **kwargs)


def _load_remote(url: str, *, tokenizer=None, api_key: str | None = None, **kwargs):
    import httpx

    from .remote import RemoteLM

    if tokenizer is None:
        raise ModelLoadError(
            "a remote model needs the served model's tokenizer for text prompts: pass "
            "--tokenizer FOLDER (CLI) or tokenizer= (Python), a local tokenizer folder or .gguf file"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if api_key is None:
        api_key = os.environ.get(REMOTE_API_KEY_ENV) or None
    try:
        return RemoteLM(url, tokenizer=tokenizer, api_key=api_key, **kwargs)
    except httpx.HTTPError as exc:
        raise ModelLoadError(f"could not talk to {url}: {_first_line(exc)}") from exc


def load_tokenizer(path):
    """A transformers tokenizer from a local folder or a .gguf file (its embedded vocabulary)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"tokenizer path {str(path)!r} does not exist")
    if p.is_file() and p.suffix != ".gguf":
        raise ModelLoadError(f"tokenizer {str(path)!r} is a file but not a .gguf model; pass a tokenizer folder")
    try:
        if p.is_file():
            return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        return AutoTokenizer.from_pretrained(str(p))
    except Exception as exc:
        raise ModelLoadError(f"could not load a tokenizer from {str(path)!r}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
