"""docs/samplers.md's "Defaults per entry point" table against the code: the configs, each command's options and
help text, and the server's OpenAPI document."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from powersampling.cli.eval import eval_command
from powersampling.cli.generate import generate
from powersampling.cli.plan import plan_command
from powersampling.eval.benchmarks import get_benchmark
from powersampling.eval.benchmarks.base import BLOCKS_PER_COMPLETION
from powersampling.exactness import random_table_model
from powersampling.planner.generation import RouteSettings
from powersampling.samplers.config import PowerSamplingConfig, default
from powersampling.server import create_app
from powersampling.server.schemas import ENTRY_POINT_DEFAULTS
from powersampling.server.settings import ServerSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "samplers.md"
COLUMNS = ("api", "serve", "plan", "eval")


def _table() -> dict[str, dict[str, str]]:
    text = DOC.read_text()
    section = text.split("## Defaults per entry point", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 1 + len(COLUMNS), row
        table[cells[0].strip("`")] = dict(zip(COLUMNS, cells[1:], strict=True))
    return table


TABLE = _table()


def _number(cell: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?", cell), f"not a number: {cell!r}"
    return float(cell)


def _option(command, name: str):
    return inspect.signature(command).parameters[name].default


def test_the_table_has_the_settings_the_openapi_document_states():
    assert set(ENTRY_POINT_DEFAULTS) <= set(TABLE)
    assert set(TABLE) == {*ENTRY_POINT_DEFAULTS, "max_new_tokens"}


@pytest.mark.parametrize("name", ["alpha", "n_mcmc", "block_size", "max_new_tokens"])
def test_python_api_and_generate(name):
    value = _number(TABLE[name]["api"])
    assert default(PowerSamplingConfig, name) == value
    option = {"n_mcmc": "mcmc_steps"}.get(name, name)
    assert f"default {default(PowerSamplingConfig, name)}" in _option(generate, option).help


def test_serve():
    for name in ENTRY_POINT_DEFAULTS:  # a request that omits them runs the method's config defaults
        assert default(PowerSamplingConfig, name) == _number(TABLE[name]["serve"])
    assert ServerSettings.model_fields["default_max_tokens"].default == _number(TABLE["max_new_tokens"]["serve"])


@pytest.mark.parametrize("name", ENTRY_POINT_DEFAULTS)
def test_plan(name):
    value = getattr(RouteSettings, name)
    assert value == _number(TABLE[name]["plan"])
    option = {"n_mcmc": "mcmc_steps"}.get(name, name)
    assert f"or {value}" in _option(plan_command, option).help


def test_eval():
    assert _option(eval_command, "alpha").default == _number(TABLE["alpha"]["eval"])
    assert _option(eval_command, "n_mcmc").default == _number(TABLE["n_mcmc"]["eval"])
    rule = re.fullmatch(r"ceil\(max_new_tokens / (\d+)\); (\w+) (\d+)", TABLE["block_size"]["eval"])
    assert rule, TABLE["block_size"]["eval"]
    blocks, special, special_block = int(rule[1]), rule[2], int(rule[3])
    assert blocks == BLOCKS_PER_COMPLETION
    assert f"max-new-tokens / {blocks}" in _option(eval_command, "block_size").help
    for cap in (1, 16, 17, 256, 512):
        assert get_benchmark("gsm8k").block_size(cap) == max(1, -(-cap // blocks))
    assert get_benchmark(special).block_size(512) == special_block


def test_openapi_states_both_defaults():
    schema = TestClient(create_app(random_table_model())).get("/openapi.json").json()
    props = schema["components"]["schemas"]["PowerSamplingParams"]["properties"]
    for name in ENTRY_POINT_DEFAULTS:
        serve, plan = _number(TABLE[name]["serve"]), _number(TABLE[name]["plan"])
        description = props[name]["description"]
        assert f"default {serve:g} on /v1/completions" in description, description
        assert f"{plan:g} on /v1/plan" in description, description
