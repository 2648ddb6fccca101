"""Shared fixtures: enumerable toy models and a tiny random transformers model."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

from powersampling import FunctionLM

# packages that must be importable in this run (comma-separated top-level names): .ci/run names the optional
# engines it installs, so a broken install fails their tests instead of skipping them
REQUIRED_PACKAGES = {name.strip() for name in os.environ.get("POWERSAMPLING_TEST_REQUIRE", "").split(",") if name}


def needs_module(name: str, reason: str):
    """The module ``name``; skips the test when it is not installed, unless POWERSAMPLING_TEST_REQUIRE names its
    package, where the ImportError fails the test."""
    if name.split(".")[0] in REQUIRED_PACKAGES:
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=reason)


def random_table_lm(vocab: int = 4, eos: int = 0, max_len: int = 5, scale: float = 0.6, seed: int = 3) -> FunctionLM:
    """A FunctionLM whose next-token logits are random but fixed per prefix; EOS is forced once the prefix
    (prompt included) reaches ``max_len`` tokens, so every completion is finite and lengths differ."""
    rng = np.random.default_rng(seed)
    table: dict[tuple[int, ...], np.ndarray] = {}

    def next_token_logprobs(prefix):
        if prefix not in table:
            logits = rng.normal(size=vocab) * scale
            if len(prefix) >= max_len:
                logits = np.full(vocab, -np.inf)
                logits[eos] = 0.0
            table[prefix] = logits
        return table[prefix]

    return FunctionLM(vocab, eos, next_token_logprobs, name="random-table")


@pytest.fixture
def toy_lm() -> FunctionLM:
    return random_table_lm()


@pytest.fixture(scope="session")
def tiny_hf():
    """A 2-layer random Llama with a 6-token vocabulary: real transformers code paths, small enough to enumerate."""
    from powersampling.exactness import tiny_random_llama

    return tiny_random_llama()
