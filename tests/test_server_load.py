"""A bounded load test on loopback: many concurrent clients, every request answered (200) or refused (429), none
lost, queue drained afterwards, memory flat across rounds."""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from powersampling import FunctionLM
from powersampling.server import ServerSettings, create_app
from powersampling.server.background import BackgroundServer

CLIENTS = 48
REQUESTS_PER_CLIENT = 2
ROUNDS = 3


def _model() -> FunctionLM:
    def logits(prefix):
        time.sleep(0.0005)  # a model that takes time, so the queue actually fills
        if len(prefix) >= 14:
            row = np.full(8, -np.inf)
            row[0] = 0.0
            return row
        return np.random.default_rng([len(prefix), *prefix]).normal(size=8)

    return FunctionLM(8, 0, logits, name="toy-load")


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count(samples, name: str, **labels) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
    )


async def _round(url: str) -> collections.Counter:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def one_client(i: int) -> list[int]:
            codes = []
            for j in range(REQUESTS_PER_CLIENT):
                body = {
                    "model": "toy-load",
                    "prompt": f"{i % 7 + 1} {j + 1}",
                    "max_tokens": 10,
                    "power_sampling": {"n_mcmc": 2, "block_size": 5, "seed": i * 10 + j},
                }
                if (i + j) % 3 == 0:
                    body["stream"] = True
                response = await http.post("/v1/completions", json=body)
                if response.status_code == 200 and body.get("stream"):
                    assert response.text.rstrip().endswith("data: [DONE]"), response.text[-200:]
                elif response.status_code == 200:
                    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
                else:
                    assert response.json()["error"]["type"] == "rate_limit_error", response.text
                codes.append(response.status_code)
            return codes

        results = await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
    return collections.Counter(code for codes in results for code in codes)


def test_concurrent_clients_are_answered_or_refused_and_none_is_lost():
    with BackgroundServer(create_app(_model(), ServerSettings(workers=2, max_queue=6))) as server:
        rss = []
        totals = collections.Counter()
        for _ in range(ROUNDS):
            codes = asyncio.run(_round(server.url))
            assert set(codes) <= {200, 429}, codes
            assert sum(codes.values()) == CLIENTS * REQUESTS_PER_CLIENT
            assert codes[200] >= 8  # the workers and the queue were used, not everything refused
            totals.update(codes)
            samples = _samples(server.url)
            rss.append(_count(samples, "process_resident_memory_bytes"))
        samples = _samples(server.url)
        base = dict(model_name="toy-load", endpoint="completions")
        assert _count(samples, "powersampling_requests_total", **base, status="ok") == totals[200]
        assert _count(samples, "powersampling_requests_total", **base, status="rejected") == totals[429]
        assert _count(samples, "powersampling_requests_total", **base) == ROUNDS * CLIENTS * REQUESTS_PER_CLIENT
        assert _count(samples, "powersampling_queue_depth", model_name="toy-load") == 0
        assert _count(samples, "powersampling_requests_running", model_name="toy-load") == 0
        health = httpx.get(server.url + "/health").json()["queue"]
        assert health["waiting"] == 0 and health["running"] == 0
        # memory is bounded: after the first round warmed everything up, later rounds add (almost) nothing
        assert rss[-1] - rss[0] < 32 * 2**20, rss
