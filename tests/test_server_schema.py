"""Schema fuzzing: schemathesis generates requests from the app's own OpenAPI document; none may get a 5xx."""

from __future__ import annotations

import numpy as np

from conftest import needs_module

schemathesis = needs_module("schemathesis", reason="schemathesis is not installed (test extra)")
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from powersampling import FunctionLM
from powersampling.server import ServerSettings, create_app


class _ByteTokenizer:
    """Any text is valid: token id = byte + 1 (0 is EOS), so fuzzed prompts reach the sampler."""

    def encode(self, text):
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 1 for i in ids if i > 0).decode("utf-8", errors="replace")

    def chat_prompt(self, messages):
        return [i for m in messages for i in self.encode(m["content"])]


def _toy_lm() -> FunctionLM:
    def logits(prefix):
        if len(prefix) >= 72:
            row = np.full(257, -np.inf)
            row[0] = 0.0
            return row
        return np.random.default_rng([len(prefix), *prefix]).normal(size=257) * 3

    model = FunctionLM(257, 0, logits, name="fuzz")
    model.tokenizer = _ByteTokenizer()
    return model


# tight limits keep every accepted request small: the fuzzer probes validation, not throughput
APP = create_app(
    _toy_lm(),
    ServerSettings(
        max_tokens_limit=32,
        default_max_tokens=8,
        max_n_mcmc=4,
        max_chains=2,
        request_timeout_s=5,
        max_queue=4,
        max_prompt_tokens=2048,
    ),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# valid and deliberately invalid bodies both
schema.config.generation.update(modes=list(schemathesis.GenerationMode))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case):
    # the served model's name, so that fuzzed bodies reach validation and sampling instead of stopping at 404
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = "fuzz"
    case.call_and_validate(checks=[not_a_server_error])
