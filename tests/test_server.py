"""The HTTP service against the official OpenAI client, on a live uvicorn server started by each test."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import logging
import socket
import time

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from powersampling import FunctionLM, build_sampler
from powersampling.server import ServerSettings, create_app
from powersampling.server.background import BackgroundServer

KEY = "test-key"


def toy_lm(name: str, *, vocab: int = 8, max_len: int = 12, delay_s: float = 0.0) -> FunctionLM:
    """Logits are a fixed function of the prefix (seeded by it), so two instances are the same model; EOS is
    forced once the prefix reaches ``max_len``. ``delay_s`` per forward call makes a slow model, which also never
    stops before ``max_len`` (a long run for the deadline and disconnect tests, whatever the MH scan)."""

    def logits(prefix):
        if len(prefix) >= max_len:
            row = np.full(vocab, -np.inf)
            row[0] = 0.0
            return row
        row = np.random.default_rng([len(prefix), *prefix]).normal(size=vocab) * 1.5
        if delay_s:
            time.sleep(delay_s)
            row[0] = -np.inf
        return row

    return FunctionLM(vocab, 0, logits, name=name)


def serve(model, **settings):
    return BackgroundServer(create_app(model, ServerSettings(**settings)))


def client(server, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key or "none", max_retries=0, timeout=30)


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def live():
    model = toy_lm("toy-live")
    with serve(model, api_key=KEY) as server:
        server.model = model
        yield server


def test_completion_with_power_sampling_matches_the_library(live):
    params = {"seed": 7, "alpha": 3.0, "n_mcmc": 3, "block_size": 4}
    out = client(live).completions.create(
        model="toy-live", prompt="1 2 3", max_tokens=8, extra_body={"power_sampling": params}
    )
    ps = out.model_extra["power_sampling"]
    local = build_sampler("power", toy_lm("x"), alpha=3.0, n_mcmc=3, block_size=4, max_new_tokens=8, seed=7).sample(
        [1, 2, 3]
    )
    assert out.choices[0].text == local.text
    assert out.usage.prompt_tokens == 3
    assert out.usage.completion_tokens == len(local.token_ids) == ps["final_tokens"]
    assert out.usage.total_tokens == 3 + len(local.token_ids)
    assert out.choices[0].finish_reason == ("stop" if local.metadata["stopped_by"] == "eos" else "length")
    assert ps["method"] == "power" and ps["alpha"] == 3.0 and ps["n_mcmc"] == 3 and ps["seed"] == 7
    assert ps["total_iterations"] == local.metadata["total_iterations"] > 0
    assert ps["tokens_generated"] == local.metadata["tokens_generated"] > ps["final_tokens"]


def test_chat_greedy_via_extra_body(live):
    out = client(live).chat.completions.create(
        model="toy-live",
        messages=[{"role": "system", "content": "4"}, {"role": "user", "content": "1 2"}],
        max_tokens=6,
        extra_body={"method": "greedy"},
    )
    local = build_sampler("greedy", toy_lm("x"), max_new_tokens=6).sample([4, 1, 2])
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == local.text
    assert out.model_extra["power_sampling"]["method"] == "greedy"


def test_models_and_health(live):
    models = client(live).models.list()
    assert [m.id for m in models.data] == ["toy-live"]
    health = httpx.get(live.url + "/health").json()  # no key needed for probes
    assert health["status"] == "ok" and health["queue"]["running"] == 0


def test_streaming_chat_sends_progress_then_the_text(live):
    stream = client(live).chat.completions.create(
        model="toy-live",
        messages=[{"role": "user", "content": "3"}],
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"power_sampling": {"seed": 11, "n_mcmc": 4, "block_size": 3}},
    )
    chunks = list(stream)
    progress = [
        c.model_extra["power_sampling"] for c in chunks if not c.choices and c.model_extra.get("power_sampling")
    ]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    local = build_sampler("power", toy_lm("x"), n_mcmc=4, block_size=3, max_new_tokens=9, seed=11).sample([3])
    assert chunks[0].choices[0].delta.role == "assistant"
    assert progress and all(p["event"] == "progress" for p in progress)
    blocks = [p["block"] for p in progress if p["kind"] == "block"]
    assert blocks == list(range(1, local.metadata["blocks_generated"] + 1))
    assert "".join(texts) == local.text
    assert chunks[-1].usage.completion_tokens == len(local.token_ids)


def test_streaming_completion(live):
    stream = client(live).completions.create(
        model="toy-live",
        prompt="5 1",
        max_tokens=5,
        stream=True,
        extra_body={"method": "sample", "power_sampling": {"seed": 1}},
    )
    chunks = list(stream)
    final = [c for c in chunks if c.choices]
    assert len(final) == 1 and final[0].choices[0].finish_reason in ("stop", "length")
    assert final[0].model_extra["power_sampling"]["method"] == "sample"


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"extra_body": {"power_sampling": {"alpha": 0}}}, "power_sampling.alpha"),
        ({"extra_body": {"power_sampling": {"n_mcmc": 10_000}}}, "power_sampling.n_mcmc"),
        ({"extra_body": {"method": "beam"}}, "method"),
        ({"extra_body": {"power_sampling": {"alpah": 2}}}, "power_sampling.alpah"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"top_p": 0.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"temperature": 5}, "temperature"),
    ],
)
def test_bad_parameters_are_400_with_an_error_object(live, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client(live).completions.create(model="toy-live", prompt="1", **kwargs)
    assert err.value.status_code == 400
    assert err.value.body["type"] == "invalid_request_error"
    assert err.value.body["param"] == param
    assert err.value.body["message"]


def test_bad_prompts_and_unknown_model(live):
    c = client(live)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        c.completions.create(model="toy-live", prompt=[1, 99])
    with pytest.raises(openai.BadRequestError, match="empty"):
        c.completions.create(model="toy-live", prompt="")
    # whitespace is a prompt where the tokenizer reads it; this toy one (ids between spaces) reads nothing there
    with pytest.raises(openai.BadRequestError, match="tokenizes to nothing"):
        c.completions.create(model="toy-live", prompt="   ")
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="toy-live", messages=[])
    with pytest.raises(openai.NotFoundError) as err:
        c.completions.create(model="gpt-4o", prompt="1")
    assert err.value.body["code"] == "model_not_found"


def test_auth(live):
    with pytest.raises(openai.AuthenticationError):
        client(live, key="wrong").completions.create(model="toy-live", prompt="1")
    response = httpx.post(live.url + "/v1/completions", json={"model": "toy-live", "prompt": "1"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_malformed_bodies_are_4xx(live):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body in (b"{", b"[1, 2]", b"null", b'{"model": 3, "prompt": "1"}', "\u00ff".encode("latin-1")):
        response = httpx.post(live.url + "/v1/completions", content=body, headers=headers)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert response.json()["error"]["message"]
    response = httpx.post(live.url + "/v1/completions", content=b"x" * (2 << 20), headers=headers)
    assert response.status_code == 413
    chunked = httpx.post(live.url + "/v1/completions", content=iter([b"x" * 65536] * 40), headers=headers)
    assert chunked.status_code == 413  # no Content-Length: counted while read
    assert httpx.get(live.url + "/v1/nothing", headers=headers).status_code == 404


def test_metrics_scrape_counts_requests_by_outcome():
    with serve(toy_lm("toy-metrics")) as server:
        c = client(server)
        c.completions.create(model="toy-metrics", prompt="1", max_tokens=4, extra_body={"method": "greedy"})
        c.completions.create(model="toy-metrics", prompt="2", max_tokens=4)
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model="toy-metrics", prompt="1", extra_body={"method": "beam"})
        base = dict(model_name="toy-metrics", endpoint="completions")
        assert (
            metric(server, "powersampling_requests_total", **base, method="greedy", route="baseline", status="ok") == 1
        )
        assert metric(server, "powersampling_requests_total", **base, method="power", route="power", status="ok") == 1
        assert metric(server, "powersampling_requests_total", **base, status="invalid") == 1
        assert metric(server, "powersampling_e2e_request_latency_seconds_count", **base, method="power") == 1
        assert metric(server, "powersampling_acceptance_rate_count", **base) == 1
        assert (
            metric(server, "powersampling_tokens_total", **base, method="power", kind="proposal")
            > metric(server, "powersampling_tokens_total", **base, method="power", kind="final")
            > 0
        )
        assert metric(server, "process_resident_memory_bytes") > 0


def test_server_deadline_is_504_with_what_was_reached():
    slow = toy_lm("toy-deadline", max_len=400, delay_s=0.002)
    with serve(slow, request_timeout_s=0.5) as server:
        response = httpx.post(
            server.url + "/v1/completions",
            json={
                "model": "toy-deadline",
                "prompt": "1",
                "max_tokens": 300,
                "power_sampling": {"n_mcmc": 50, "block_size": 50, "seed": 1},
            },
        )
        assert response.status_code == 504
        body = response.json()
        assert body["error"]["code"] == "deadline_exceeded" and body["error"]["type"] == "timeout_error"
        assert body["partial"]["power_sampling"]["stopped_by"] == "deadline"
        assert body["partial"]["usage"]["completion_tokens"] == body["partial"]["power_sampling"]["final_tokens"] > 0
        assert body["partial"]["choices"][0]["text"]
        assert metric(server, "powersampling_requests_total", model_name="toy-deadline", status="timeout") == 1


def test_client_budget_returns_the_best_state_with_200():
    slow = toy_lm("toy-budget", max_len=400, delay_s=0.002)
    with serve(slow) as server:
        started = time.monotonic()
        out = client(server).completions.create(
            model="toy-budget",
            prompt="1",
            max_tokens=300,
            extra_body={"power_sampling": {"n_mcmc": 50, "block_size": 50, "deadline_s": 0.4}},
        )
        assert time.monotonic() - started < 5
        assert out.model_extra["power_sampling"]["stopped_by"] == "deadline"
        assert out.choices[0].finish_reason == "length"


def test_full_queue_answers_429():
    slow = toy_lm("toy-queue", max_len=60, delay_s=0.003)
    with serve(slow, workers=1, max_queue=1) as server:
        body = {
            "model": "toy-queue",
            "prompt": "1",
            "max_tokens": 50,
            "method": "power",
            "power_sampling": {"n_mcmc": 4, "block_size": 25},
        }
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            responses = list(
                pool.map(lambda _: httpx.post(server.url + "/v1/completions", json=body, timeout=60), range(5))
            )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 429, 429, 429]
        refused = [r for r in responses if r.status_code == 429]
        assert all(r.json()["error"]["type"] == "rate_limit_error" and r.headers["retry-after"] for r in refused)
        assert metric(server, "powersampling_requests_total", model_name="toy-queue", status="rejected") == 3
        assert metric(server, "powersampling_queue_depth", model_name="toy-queue") == 0


def _assert_run_stopped(server, model):
    assert wait_until(lambda: httpx.get(server.url + "/health").json()["queue"]["running"] == 0, 5)
    calls = model.forward_calls
    time.sleep(0.3)
    assert model.forward_calls == calls  # the sampler is not still decoding for nobody


def test_client_disconnect_cancels_the_run():
    slow = toy_lm("toy-cancel", max_len=400, delay_s=0.002)
    with serve(slow) as server:
        body = {
            "model": "toy-cancel",
            "prompt": "1",
            "max_tokens": 300,
            "power_sampling": {"n_mcmc": 50, "block_size": 10},
        }
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json=body, timeout=0.5)
        _assert_run_stopped(server, slow)
        assert wait_until(
            lambda: metric(server, "powersampling_requests_total", model_name="toy-cancel", status="cancelled") == 1, 5
        )


def test_stream_disconnect_cancels_the_run():
    slow = toy_lm("toy-cancel-stream", max_len=400, delay_s=0.002)
    with serve(slow) as server:
        body = {
            "model": "toy-cancel-stream",
            "messages": [{"role": "user", "content": "1"}],
            "max_tokens": 300,
            "stream": True,
            "power_sampling": {"n_mcmc": 50, "block_size": 10},
        }
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: ") and '"progress"' in line)
            assert json.loads(first[6:])["power_sampling"]["kind"] in ("block", "mh_step")
        _assert_run_stopped(server, slow)
        assert wait_until(
            lambda: (
                metric(server, "powersampling_requests_total", model_name="toy-cancel-stream", status="cancelled") == 1
            ),
            5,
        )


def test_client_that_leaves_mid_upload_is_cancelled_not_an_error():
    with serve(toy_lm("toy-upload")) as server:
        with socket.create_connection((server.host, server.port)) as conn:
            conn.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"model": "toy-upload", '
            )
            time.sleep(0.2)  # the server reads the headers and the first bytes before the client leaves
        labels = dict(model_name="toy-upload", endpoint="completions")
        assert wait_until(lambda: metric(server, "powersampling_requests_total", **labels, status="cancelled") == 1, 5)
        assert metric(server, "powersampling_requests_total", **labels, status="error") == 0


def _server_tasks(server) -> list[str]:
    """The coroutine names of the tasks alive on the server's event loop."""

    async def names():
        return [task.get_coro().__qualname__ for task in asyncio.all_tasks()]

    return asyncio.run_coroutine_threadsafe(names(), server.server.servers[0].get_loop()).result(5)


def test_disconnected_streams_leave_no_task_behind(caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    slow = toy_lm("toy-stream-tasks", max_len=400, delay_s=0.002)
    with serve(slow) as server:
        body = {
            "model": "toy-stream-tasks",
            "prompt": "1",
            "max_tokens": 300,
            "stream": True,
            "power_sampling": {"n_mcmc": 50, "block_size": 10},
        }
        for _ in range(3):
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
                next(line for line in response.iter_lines() if '"progress"' in line)
            _assert_run_stopped(server, slow)
        assert wait_until(lambda: "Queue.get" not in _server_tasks(server), 5), _server_tasks(server)
        gc.collect()  # a task still pending when collected is reported then
    assert "Task was destroyed but it is pending" not in caplog.text
