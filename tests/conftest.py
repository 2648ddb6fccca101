"""Shared fixtures: enumerable toy models and a tiny random transformers model."""

from __future__ import annotations

import importlib
import os

import pytest

from powersampling import FunctionLM
from powersampling.exactness import random_table_model

# packages that must be importable in this run (comma-separated top-level names): .ci/run names the optional
# engines it installs, so a broken install fails their tests instead of skipping them
REQUIRED_PACKAGES = {name.strip() for name in os.environ.get("POWERSAMPLING_TEST_REQUIRE", "").split(",") if name}


def needs_module(name: str, reason: str):
    """The module ``name``; skips the test when it is not installed, unless POWERSAMPLING_TEST_REQUIRE names its
    package, where the ImportError fails the test."""
    if name.split(".")[0] in REQUIRED_PACKAGES:
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=reason)


@pytest.fixture
def toy_lm() -> FunctionLM:
    return random_table_model()


@pytest.fixture(scope="session")
def tiny_hf():
    """A 2-layer random Llama with a 6-token vocabulary: real transformers code paths, small enough to enumerate."""
    from powersampling.exactness import tiny_random_llama

    return tiny_random_llama()
