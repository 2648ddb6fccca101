"""Schema fuzzing: schemathesis generates requests from the served OpenAPI document and checks every answer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from conftest import needs_module

needs_module("schemathesis", reason="schemathesis is not installed (test extra)")

from powersampling import FunctionLM
from powersampling.server import ServerSettings, create_app
from powersampling.server.background import BackgroundServer


class _ByteTokenizer:
    """Any text is valid: token id = byte + 1 (0 is EOS), so fuzzed prompts reach the sampler."""

    def encode(self, text):
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 1 for i in ids if i > 0).decode("utf-8", errors="replace")

    def chat_prompt(self, messages):
        # role markers, as a real chat template has: an empty chat is still a prompt
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return self.encode(text)


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
        max_prompt_tokens=1 << 20,  # a prompt's token count is no JSON Schema bound: the 1 MiB body cap rules
    ),
)


def test_schemathesis_checks_all_find_nothing(tmp_path):
    """schemathesis's own CLI, every check, against the served /openapi.json as published (no edits): a
    schema-valid request must be answered, an invalid one refused, every response must match its schema. The
    server's cross-field rules are in the schema, so the generator does not send what the server refuses."""
    with BackgroundServer(APP) as server:
        done = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
                "--checks", "all", "--max-examples", "30", "--seed", "1", "--workers", "1",
                "--no-color", "--continue-on-failure",
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout, done.stdout[-3000:]
