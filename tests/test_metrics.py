"""Prometheus metrics: one registry, no collisions across instances, values that follow real sampler runs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from powersampling import FunctionLM, build_sampler
from powersampling.observability import metrics
from powersampling.server import ServerSettings, create_app


def toy_lm(name: str) -> FunctionLM:
    rng = np.random.default_rng(1)
    table: dict = {}

    def logits(prefix):
        if prefix not in table:
            row = rng.normal(size=6)
            if len(prefix) >= 8:
                row = np.full(6, -np.inf)
                row[0] = 0.0
            table[prefix] = row
        return table[prefix]

    return FunctionLM(6, 0, logits, name=name)


def scrape() -> dict[tuple[str, tuple], float]:
    """Every sample in the exposition, keyed by (sample name, sorted labels), parsed by Prometheus's own parser."""
    text = metrics.exposition()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_many_apps_in_one_process_share_one_registry():
    collectors_before = len(list(metrics.REGISTRY.collect()))
    apps = [create_app(toy_lm("collide"), ServerSettings()) for _ in range(5)]
    assert len(apps) == 5
    assert len(list(metrics.REGISTRY.collect())) == collectors_before


def test_record_sample_follows_a_real_power_sampling_run():
    model = toy_lm("metrics-power")
    result = build_sampler("power", model, alpha=2.0, n_mcmc=4, block_size=3, max_new_tokens=6, seed=5).sample([1, 2])
    before = scrape()
    metrics.record_sample(result, "metrics-power", "library", prompt_tokens=2)
    after = scrape()
    md = result.metadata
    labels = dict(model_name="metrics-power", endpoint="library", method="power")
    for kind, expected in (("prompt", 2), ("proposal", md["tokens_generated"]), ("final", md["final_tokens"])):
        assert (
            value(after, "powersampling_tokens_total", **labels, kind=kind)
            - value(before, "powersampling_tokens_total", **labels, kind=kind)
            == expected
        )
    acc = dict(model_name="metrics-power", endpoint="library")
    assert (
        value(after, "powersampling_acceptance_rate_count", **acc)
        == value(before, "powersampling_acceptance_rate_count", **acc) + 1
    )
    assert value(after, "powersampling_acceptance_rate_sum", **acc) == pytest.approx(
        value(before, "powersampling_acceptance_rate_sum", **acc) + md["acceptance_rate"]
    )
    assert md["cost_multiplier"] > 1  # MH redraws suffixes, so it decodes more than it returns
    assert value(after, "powersampling_cost_multiplier_sum", **labels) == pytest.approx(
        value(before, "powersampling_cost_multiplier_sum", **labels) + md["cost_multiplier"]
    )
    req = dict(model_name="metrics-power", endpoint="library", method="power", route="power", status="ok")
    assert (
        value(after, "powersampling_requests_total", **req) == value(before, "powersampling_requests_total", **req) + 1
    )


def test_baseline_runs_do_not_feed_the_acceptance_histogram():
    result = build_sampler("sample", toy_lm("metrics-plain"), max_new_tokens=5, seed=1).sample([3])
    metrics.record_sample(result, "metrics-plain")
    after = scrape()
    assert value(after, "powersampling_acceptance_rate_count", model_name="metrics-plain", endpoint="library") == 0
    assert (
        value(
            after,
            "powersampling_requests_total",
            model_name="metrics-plain",
            endpoint="library",
            method="sample",
            route="baseline",
            status="ok",
        )
        == 1
    )


def test_record_plan_quality_by_route_and_fallback_reason():
    metrics.record_plan(model_name="metrics-plan", route="power", quality_score=0.8)
    metrics.record_plan(
        model_name="metrics-plan", route="baseline", quality_score=0.5, fallback_reason="GenerationError", latency_s=1.5
    )
    s = scrape()
    assert value(s, "powersampling_plan_quality_score_sum", model_name="metrics-plan", route="power") == pytest.approx(
        0.8
    )
    assert value(s, "powersampling_plan_quality_score_count", model_name="metrics-plan", route="baseline") == 1
    assert (
        value(
            s, "powersampling_fallbacks_total", model_name="metrics-plan", endpoint="library", reason="GenerationError"
        )
        == 1
    )
    assert (
        value(
            s,
            "powersampling_e2e_request_latency_seconds_count",
            model_name="metrics-plan",
            endpoint="library",
            method="none",
            route="baseline",
        )
        == 1
    )


def test_step_timer_observes_one_latency_per_progress_event():
    model = toy_lm("metrics-steps")
    seen = []
    timer = metrics.StepTimer("metrics-steps", "power", forward=seen.append)
    build_sampler("power", model, n_mcmc=3, block_size=2, max_new_tokens=4, seed=2).sample([1], progress=timer)
    s = scrape()
    counted = sum(
        value(s, "powersampling_step_latency_seconds_count", model_name="metrics-steps", method="power", kind=k)
        for k in ("block", "mh_step", "candidate")
    )
    assert counted == sum(1 for e in seen if e.kind != "done") > 0


def test_concurrent_recording_loses_no_increments():
    def work():
        for _ in range(500):
            metrics.record_request(model_name="metrics-threads", endpoint="chat", method="greedy", status="rejected")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (
        value(
            scrape(),
            "powersampling_requests_total",
            model_name="metrics-threads",
            endpoint="chat",
            method="greedy",
            route="baseline",
            status="rejected",
        )
        == 4000
    )


def test_queue_gauges_of_two_executors_add_up():
    a, b = metrics.QueueGauges("metrics-queue"), metrics.QueueGauges("metrics-queue")
    for gauges in (a, b, b):
        gauges.enqueue()
    assert value(scrape(), "powersampling_queue_depth", model_name="metrics-queue") == 3
    a.leave_queue(started=True)
    b.leave_queue(started=False)
    s = scrape()
    assert value(s, "powersampling_queue_depth", model_name="metrics-queue") == 1
    assert value(s, "powersampling_requests_running", model_name="metrics-queue") == 1


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="unknown status"):
        metrics.record_request(model_name="m", endpoint="chat", status="fine")
