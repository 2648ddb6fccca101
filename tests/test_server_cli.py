"""``powersampling serve`` as users run it: a real process on the embedded model, the OpenAI client against it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from powersampling.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_bad_options_exit_2_with_one_line():
    proc = _cli("serve", "--default-method", "beam")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "unknown method 'beam'" in err
    proc = _cli("serve", "--model", "/nonexistent/model")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "does not exist" in err and "Traceback" not in err


def test_an_address_it_cannot_listen_on_exits_2_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _cli("serve", "--port", str(port))
        _, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err
    assert err.strip().count("\n") == 0 and f"error: cannot listen on 127.0.0.1:{port}: " in err, err
    assert "in use" in err
    proc = _cli("serve", "--host", "256.1.1.1", "--port", "8000")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err
    assert err.strip().count("\n") == 0 and "error: cannot listen on 256.1.1.1:8000: " in err, err


@pytest.mark.slow
def test_serve_embedded_model_answers_the_openai_client():
    port = _free_port()
    proc = _cli(
        "serve",
        "--port",
        str(port),
        "--api-key",
        "k",
        "--log-level",
        "warning",
        env={**os.environ, "POWERSAMPLING_API_KEY": ""},
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=240)
        model = client.models.list().data[0].id
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=12,
            extra_body={"power_sampling": {"n_mcmc": 2, "block_size": 6, "seed": 0}},
        )
        ps = out.model_extra["power_sampling"]
        assert out.choices[0].message.content.strip()
        assert ps["method"] == "power" and ps["total_iterations"] > 0
        assert out.usage.completion_tokens == ps["final_tokens"] <= 12
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
        docs = httpx.get(f"http://127.0.0.1:{port}/docs").text
        assert "/v1/chat/completions" in docs and "<script" not in docs and "https://" not in docs
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
