"""Hosted providers: wire formats against a local HTTP server standing in for the remote services (they are outside
the project and unreachable offline), a real OpenAI-compatible server (llama-cpp-python's, on the embedded model),
configuration from environment variables, and the refusal of power sampling."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import needs_module
from powersampling.backends.hosted import HostedChatModel, hosted_model, require_power_sampling
from powersampling.errors import CapabilityError, ConfigError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]


class _ProviderStandIn(BaseHTTPRequestHandler):
    """Answers like each provider; records every request for the assertions."""

    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path == "/v1/chat/completions":
            n = body.get("n", 1)
            answer = {
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": f"{2 + i}"}, "finish_reason": "stop"}
                    for i in range(n)
                ],
                "usage": {"total_tokens": 3},
            }
        elif self.path.startswith("/v1beta/models/") and self.path.endswith(":generateContent"):
            n = body["generationConfig"]["candidateCount"]
            answer = {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": f"{3 + i}"}]}, "finishReason": "STOP"}
                    for i in range(n)
                ]
            }
        elif self.path == "/v1/messages":
            answer = {
                "content": [{"type": "text", "text": "5"}],
                "stop_reason": "end_turn",
                "usage": {"output_tokens": 1},
            }
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    _ProviderStandIn.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProviderStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _ProviderStandIn.seen
    server.shutdown()


def test_openai_sends_the_chat_and_reads_n_choices(stand_in, monkeypatch):
    url, seen = stand_in
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
    model = hosted_model("openai", "gpt-test")
    out = model.generate(MESSAGES, n=3, temperature=0.7, max_tokens=20, seed=4)
    assert [c.text for c in out] == ["2", "3", "4"]
    request = seen[-1]
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"]["messages"] == MESSAGES
    assert request["body"]["max_completion_tokens"] == 20 and request["body"]["seed"] == 4


def test_gemini_maps_roles_and_system_instruction(stand_in, monkeypatch):
    url, seen = stand_in
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "g-test")
    model = hosted_model("gemini", "gemini-test", base_url=f"{url}/v1beta")
    out = model.generate(
        MESSAGES + [{"role": "assistant", "content": "2"}, {"role": "user", "content": "Another"}], n=2
    )
    assert [c.text for c in out] == ["3", "4"]
    body = seen[-1]["body"]
    assert seen[-1]["headers"]["x-goog-api-key"] == "g-test"
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]


def test_anthropic_makes_one_request_per_completion(stand_in, monkeypatch):
    url, seen = stand_in
    monkeypatch.setenv("ANTHROPIC_API_KEY", "a-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    model = hosted_model("anthropic", "claude-test")
    best, scored = model.best_of_n(MESSAGES, 3, score=len)
    assert best.text == "5" and len(scored) == 3 and len(seen) == 3
    assert seen[0]["headers"]["x-api-key"] == "a-test" and seen[0]["headers"]["anthropic-version"]
    assert seen[0]["body"]["system"] == "Be brief." and seen[0]["body"]["messages"] == MESSAGES[1:]


@pytest.mark.parametrize(
    "provider,reason",
    [
        ("openai", "top-20"),
        ("gemini", "top-20"),
        ("anthropic", "no log-probabilities"),
        ("openai-compatible", "not token-id"),
    ],
)
def test_power_sampling_is_refused_with_reason_and_alternatives(provider, reason):
    model = HostedChatModel(provider, "m", api_key="k", base_url="http://127.0.0.1:9")
    with pytest.raises(CapabilityError) as info:
        require_power_sampling(model)
    message = str(info.value)
    assert reason in message and "prefix" in message
    assert "best-of-n" in message and "llama.cpp" in message


def test_missing_configuration_names_the_variable(monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        hosted_model("anthropic", "claude-test")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        hosted_model("openai-compatible", "local")
    with pytest.raises(ConfigError, match="unknown hosted provider"):
        hosted_model("cohere", "x")


@pytest.mark.slow
def test_openai_compatible_against_llama_cpp_server():
    needs_module("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    from powersampling.backends.embedded import embedded_gguf_path
    from test_remote_backend import free_port, start_server, stop_server, wait_for

    port = free_port()
    process = start_server(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(embedded_gguf_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "512",
        ]
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", process)
        model = hosted_model("openai-compatible", "smollm2", base_url=f"http://127.0.0.1:{port}/v1")
        out = model.generate([{"role": "user", "content": "What is 2+2?"}], n=2, max_tokens=12, seed=1)
        assert len(out) == 2 and all(c.text.strip() for c in out)
        assert all(c.finish_reason in ("stop", "length") for c in out)
    finally:
        stop_server(process)
