"""Model access: token ids in, next-token log-probabilities and sampled continuations out (names imported on first
use: a backend's engine loads only when that backend is used)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Continuation": "base",
    "ContinuationRequest": "base",
    "LanguageModel": "base",
    "TokenConstraint": "base",
    "Tokenizer": "base",
    "FunctionLM": "function",
    "load_model": "loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'powersampling.backends' has no attribute {name!r}")
