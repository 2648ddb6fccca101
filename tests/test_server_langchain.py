"""LangChain's ``ChatOpenAI(...).with_structured_output(PydanticModel)`` against a real server started here, in
json_schema and function-calling modes, under power sampling: the object it returns is valid because the grammar
admits nothing else. No network: LangChain counts no tokens on this path (no tiktoken download)."""

from __future__ import annotations

from typing import Literal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from conftest import needs_module
from test_server import KEY, serve
from test_server_openai import tiny_smol_model

langchain_openai = needs_module(
    "langchain_openai", reason="langchain-openai is not installed (pip install 'powersampling[clients]')"
)


class Alarm(BaseModel):
    """An alarm to set."""

    minutes: int = Field(ge=0, le=99, description="minutes from now")
    label: Literal["wake", "nap", "tea"]
    loud: bool


def power_chat_requests(server) -> float:
    """Power-sampled chat requests answered ok, summed over every series (the registry is the process's: other
    tests' servers add series of their own)."""
    text = httpx.get(server.url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "powersampling_requests_total"
        and s.labels.get("method") == "power"
        and s.labels.get("status") == "ok"
        and s.labels.get("endpoint") == "chat"
    )


POWER = {"method": "power", "power_sampling": {"alpha": 4.0, "n_mcmc": 2, "block_size": 16}}


@pytest.fixture(scope="module")
def smol():
    with serve(tiny_smol_model(), api_key=KEY) as server:
        yield server


@pytest.mark.parametrize("mode", ["json_schema", "function_calling"])
def test_with_structured_output_returns_a_valid_object_under_power_sampling(smol, mode):
    llm = langchain_openai.ChatOpenAI(
        base_url=smol.url + "/v1",
        api_key=KEY,
        model="tiny-smol",
        max_tokens=64,
        seed=11,
        max_retries=0,
        timeout=180,
        extra_body=POWER,
    )
    structured = llm.with_structured_output(Alarm, method=mode, include_raw=True)
    powered = power_chat_requests(smol)
    out = structured.invoke("Set an alarm for tea in ten minutes.")
    assert out["parsing_error"] is None, out
    alarm = out["parsed"]
    assert isinstance(alarm, Alarm) and 0 <= alarm.minutes <= 99
    raw = out["raw"]
    assert raw.response_metadata["finish_reason"] == ("tool_calls" if mode == "function_calling" else "stop")
    assert power_chat_requests(smol) == powered + 1
    if mode == "function_calling":
        assert [c["name"] for c in raw.tool_calls] == ["Alarm"]
