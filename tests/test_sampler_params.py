"""One mapping from a request's public knobs to config fields (samplers.params), used by the CLI and the server,
and request schema bounds that are the config's own."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from powersampling.samplers import method_names, method_spec, validate_params
from powersampling.samplers.params import KnobError, config_bounds, knob_params
from powersampling.server import create_app
from powersampling.server.schemas import PowerSamplingParams
from test_server import toy_lm


def test_each_knob_sets_the_field_the_method_config_has():
    assert knob_params("power", chains=3, temperature=0.5) == {"n_chains": 3, "proposal_temperature": 0.5}
    assert knob_params("smc", chains=3, temperature=0.5) == {"n_particles": 3, "proposal_temperature": 0.5}
    assert knob_params("scalable-power", temperature=0.7) == {"proposal_temperature": 0.7}
    assert knob_params("best-of-n", temperature=0.7, n=3) == {"temperature": 0.7, "n": 3}
    assert knob_params("greedy", temperature=0) == {}
    extract = knob_params("best-of-n", select="majority", answer_regex=r"= (\d+)")["answer_extractor"]
    assert extract("2 + 2 = 4, so 3 + 3 = 6.") == "6" and extract("no answer") is None
    for method in method_names():  # every mapping validates as the method's config
        validate_params(method, strict=True, **knob_params(method, temperature=0.5, strict=False))


@pytest.mark.parametrize(
    "method, knobs, knob, words",
    [
        ("sample", {"chains": 2}, "chains", "applies to methods power, smc"),
        ("power", {"n": 2}, "n", "applies to best-of-n"),
        ("power", {"temperature": 0}, "temperature", "must be > 0"),
        ("power", {"temperature": 0.5, "proposal_temperature": 0.3}, "temperature", "same setting"),
        ("greedy", {"temperature": 0.5}, "temperature", "no temperature other than 0"),
        ("low-temp", {"temperature": 0.5}, "temperature", "set alpha"),
        ("best-of-n", {"answer_regex": "x"}, "answer_regex", "majority vote"),
        ("best-of-n", {"select": "majority", "answer_regex": "("}, "answer_regex", "not a valid regular expression"),
    ],
)
def test_a_knob_that_does_not_apply_is_an_error_naming_it(method, knobs, knob, words):
    with pytest.raises(KnobError) as caught:
        knob_params(method, **knobs)
    assert caught.value.knob == knob and words in str(caught.value)
    assert f"--{knob}" in caught.value.for_param(f"--{knob}") and f"--{knob}" not in str(caught.value)


def test_without_strict_a_knob_the_method_lacks_is_left_out_but_a_bad_value_is_not():
    assert knob_params("sample", chains=2, strict=False) == {}
    assert knob_params("low-temp", temperature=0.5, strict=False) == {}
    with pytest.raises(KnobError):
        knob_params("power", temperature=0, strict=False)


def test_the_server_schema_bounds_are_the_configs():
    chains_bounds = {config_bounds("n_chains")["le"], config_bounds("n_particles")["le"]}
    assert len(chains_bounds) == 1
    for name, info in PowerSamplingParams.model_fields.items():
        field = "n_chains" if name == "chains" else name
        if not any(field in method_spec(m).config.model_fields for m in method_names()):
            continue
        schema_bounds = {
            key: getattr(m, key) for m in info.metadata for key in ("gt", "ge", "lt", "le") if hasattr(m, key)
        }
        assert schema_bounds == config_bounds(field), name


def test_the_server_takes_what_the_config_takes_and_names_the_knob_it_refuses():
    cap = config_bounds("top_k")["le"]
    with TestClient(create_app(toy_lm("toy-params"))) as http:
        body = {"model": "toy-params", "prompt": "1 2", "max_tokens": 2, "method": "scalable-power"}
        ok = http.post("/v1/completions", json={**body, "power_sampling": {"top_k": 100, "rollouts": 1, "seed": 0}})
        assert ok.status_code == 200, ok.text
        over = http.post("/v1/completions", json={**body, "power_sampling": {"top_k": cap + 1}})
        assert over.status_code == 400 and "top_k" in over.text
        chains = http.post("/v1/completions", json={**body, "method": "sample", "power_sampling": {"chains": 2}})
        error = chains.json()["error"]
        assert chains.status_code == 400 and error["param"] == "power_sampling.chains"
        assert error["message"].startswith("power_sampling.chains applies to methods power, smc")
