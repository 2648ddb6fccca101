"""The registry says what each method can do; the CLI, the server, the planner and the harness ask it instead of
testing method names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from powersampling.samplers import method_names, method_spec
from powersampling.samplers.registry import (
    BASELINE_ROUTE,
    CANDIDATES_METHOD,
    DEFAULT_METHOD,
    MATCHED_COST_METHOD,
    PLAIN_METHOD,
    POWER_METHOD,
    ZERO_TEMPERATURE_METHOD,
    methods_where,
    planner_routes,
)


@pytest.mark.parametrize("method", method_names())
def test_capabilities_agree_with_the_config(method):
    spec = method_spec(method)
    fields = spec.config.model_fields
    assert (spec.temperature == "sampling") == ("temperature" in fields)
    if spec.temperature == "proposal":
        assert "proposal_temperature" in fields
    if spec.chains_field is not None:
        assert spec.chains_field in fields
    if spec.independent_chains:
        assert spec.chains_field is not None
    if spec.selects_by_evaluator:
        assert spec.chains_field is not None or "n" in fields


def test_roles_name_registered_methods():
    for method in (PLAIN_METHOD, CANDIDATES_METHOD, POWER_METHOD, DEFAULT_METHOD, MATCHED_COST_METHOD):
        method_spec(method)
    assert method_spec(ZERO_TEMPERATURE_METHOD).temperature == "zero"
    assert planner_routes()[BASELINE_ROUTE] == PLAIN_METHOD


def test_methods_where_reads_fields_in_registry_order():
    names = method_names()
    with_chains = methods_where("chains_field")
    assert with_chains and all(method_spec(m).chains_field for m in with_chains)
    assert list(with_chains) == sorted(with_chains, key=names.index)
    proposal = methods_where(temperature="proposal")
    assert set(proposal) == {m for m in names if method_spec(m).temperature == "proposal"}
    assert methods_where("independent_chains", temperature="sampling") == ()


def test_a_registered_method_gets_the_request_knobs_its_capabilities_name():
    """A method added under a new name, with power sampling's config and capabilities, is served like power: the
    request's temperature is its proposal temperature, chains sets its chains field, and n samples are n chains of
    one run. Nothing outside the registry names it."""
    code = """
import dataclasses
from fastapi.testclient import TestClient
from powersampling import FunctionLM
from powersampling.samplers import method_spec, register_method
from powersampling.server import create_app
import numpy as np

register_method(dataclasses.replace(method_spec("power"), name="my-power", route="my-power"))
client = TestClient(create_app(FunctionLM(4, 0, lambda prefix: np.arange(4.0), name="m")))
body = {"model": "m", "prompt": [1], "max_tokens": 3, "method": "my-power", "n": 3, "seed": 1, "temperature": 0.7,
        "power_sampling": {"n_mcmc": 1, "block_size": 1}}
answer = client.post("/v1/completions", json=body)
assert answer.status_code == 200, answer.text
choices = answer.json()["choices"]
assert len(choices) == 3, choices
md = answer.json()["power_sampling"]
assert md["n_chains"] == 3 and md["proposal_temperature"] == 0.7, md
chains = client.post("/v1/completions", json={**body, "n": 1, "power_sampling": {"chains": 2, "n_mcmc": 1}})
assert chains.status_code == 200, chains.text
zero = client.post("/v1/completions", json={**body, "temperature": 0})
assert zero.status_code == 400 and "proposal temperature" in zero.json()["error"]["message"], zero.text
refused = client.post("/v1/completions", json={**body, "method": "sample", "power_sampling": {"chains": 2}})
assert refused.status_code == 400, refused.text
assert "methods power, smc, my-power, not" in refused.json()["error"]["message"], refused.text
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
