"""The entropy scans, the defensive mixture and the adaptive MH budget through the server's power_sampling fields:
the real app behind FastAPI's TestClient."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from powersampling.server import ServerSettings, create_app
from test_server import toy_lm


@pytest.fixture(scope="module")
def http():
    with TestClient(create_app(toy_lm("toy-adaptive"), ServerSettings())) as client:
        yield client


def _completion(method: str, **power_sampling):
    body = {"model": "toy-adaptive", "prompt": "1 2", "max_tokens": 4, "method": method}
    return {**body, "power_sampling": {"seed": 0, "n_mcmc": 3, "block_size": 2, **power_sampling}}


@pytest.mark.parametrize(
    "method, fields",
    [
        ("power", dict(scan="entropy", entropy_floor=0.5)),
        ("power", dict(scan="sorted-entropy")),
        ("power", dict(scan="random", stop_after_rejections=2)),
        ("power", dict(defensive_weight=0.2, defensive_temperature=2.0)),
    ],
)
def test_the_new_mh_fields_are_served(http, method, fields):
    answer = http.post("/v1/completions", json=_completion(method, **fields))
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"] is not None


@pytest.mark.parametrize(
    "fields, fragment",
    [
        (dict(scan="entropic"), "scan"),
        (dict(scan="sorted", stop_after_rejections=2), "scan=random or scan=entropy"),
        (dict(defensive_weight=2.0), "defensive_weight"),
    ],
)
def test_bad_values_are_a_400_naming_them(http, fields, fragment):
    answer = http.post("/v1/completions", json=_completion("power", **fields))
    assert answer.status_code == 400, answer.text
    assert fragment in answer.text
