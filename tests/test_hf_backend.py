"""The transformers backend: log p / log q equal a fresh full forward pass, whatever the cache did."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from powersampling.backends.base import ContinuationRequest
from powersampling.backends.hf import TransformersLM


def _reference(model, prefix, tokens, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([list(prefix) + list(tokens)])).logits[0].double()
    n = len(prefix)
    lp = torch.log_softmax(logits, -1)
    lq = torch.log_softmax(logits / temperature, -1)
    return (
        np.array([lp[n - 1 + i, t].item() for i, t in enumerate(tokens)]),
        np.array([lq[n - 1 + i, t].item() for i, t in enumerate(tokens)]),
    )


@pytest.fixture
def lm(tiny_hf):
    model = TransformersLM(tiny_hf, None, name="tiny")
    model.stop_token_ids = frozenset()  # decode full lengths to exercise the cache
    return model


def test_batched_rows_with_cache_reuse_match_full_forward(lm, tiny_hf):
    rng = np.random.default_rng(0)
    prompts = [[1, 2, 3], [1, 2], [1, 4, 4, 5, 2]]
    first = lm.sample([ContinuationRequest(p, 6) for p in prompts], 0.7, rng)
    # second call: prefixes that share prefixes with the first call's rows (MH cuts), different lengths
    second_prefixes = [prompts[0] + first[0].token_ids[:2], prompts[2] + first[2].token_ids[:5], [1, 2, 3]]
    reused_before = lm.reused_tokens
    second = lm.sample([ContinuationRequest(p, 5) for p in second_prefixes], 0.7, rng)
    assert lm.reused_tokens - reused_before >= len(second_prefixes[0]) + len(second_prefixes[1]) - 2
    for prefixes, conts in ((prompts, first), (second_prefixes, second)):
        for prefix, cont in zip(prefixes, conts):
            ref_p, ref_q = _reference(tiny_hf, prefix, cont.token_ids, 0.7)
            np.testing.assert_allclose(cont.logp, ref_p, atol=2e-4)
            np.testing.assert_allclose(cont.logq, ref_q, atol=2e-4)


def test_a_call_that_continues_the_last_batch_selects_it_whole(lm, tiny_hf):
    """Rows that each extend one of the last call's rows by the token it drew last (repeats allowed, as after SMC
    resampling) feed one token each from the held batch; a call that does not continue it finds those rows in the
    pool; the log-probabilities match a full forward pass either way."""
    rng = np.random.default_rng(1)
    prompts = [[1, 2, 3], [1, 4, 4, 5, 2]]
    first = lm.sample([ContinuationRequest(p, 4) for p in prompts], 0.7, rng)
    resampled = [prompts[1] + first[1].token_ids, prompts[0] + first[0].token_ids, prompts[1] + first[1].token_ids]
    fed_before, reused_before = lm.prefill_tokens, lm.reused_tokens
    second = lm.sample([ContinuationRequest(p, 3) for p in resampled], 0.7, rng)
    assert lm.prefill_tokens - fed_before == len(resampled)  # one token per row
    assert not lm._pool.entries  # selected from the held batch, never split into the pool and stacked back
    assert lm.reused_tokens - reused_before == sum(len(p) - 1 for p in resampled)
    cuts = [resampled[0] + second[0].token_ids[:1], resampled[1][:5]]  # not a continuation: through the pool
    fed_before = lm.prefill_tokens
    third = lm.sample([ContinuationRequest(p, 2) for p in cuts], 0.7, rng)
    assert lm.prefill_tokens - fed_before == 2
    assert len(lm._pool.entries) == len(resampled)  # the held rows moved to the pool for the cuts
    for prefixes, conts in ((resampled, second), (cuts, third)):
        for prefix, cont in zip(prefixes, conts):
            ref_p, ref_q = _reference(tiny_hf, prefix, cont.token_ids, 0.7)
            np.testing.assert_allclose(cont.logp, ref_p, atol=2e-4)
            np.testing.assert_allclose(cont.logq, ref_q, atol=2e-4)


def test_max_new_tokens_stop_tokens_and_greedy(tiny_hf):
    lm = TransformersLM(tiny_hf, None, name="tiny")
    assert lm.stop_token_ids == frozenset({0})
    rng = np.random.default_rng(1)
    conts = lm.sample([ContinuationRequest([1, 2], 30)] * 20, 1.0, rng)
    for c in conts:
        assert len(c) <= 30
        assert (0 in c.token_ids) == c.stopped
        if c.stopped:
            assert c.token_ids.index(0) == len(c) - 1
    g1 = lm.sample([ContinuationRequest([1, 2], 8)], 0.0, rng)[0]
    g2 = lm.sample([ContinuationRequest([1, 2], 8)], 0.0, rng)[0]
    assert g1.token_ids == g2.token_ids
    with torch.no_grad():
        first = int(tiny_hf(torch.tensor([[1, 2]])).logits[0, -1].argmax())
    assert g1.token_ids[0] == first


def test_constraint_mask_is_honoured_and_renormalizes(lm, tiny_hf):
    class OnlyEven:
        def start(self, generated):
            return self

        def allowed_tokens(self):
            return np.array([i % 2 == 0 for i in range(6)])

        def advance(self, token):
            assert token % 2 == 0

        def is_finished(self):
            return False

    rng = np.random.default_rng(2)
    cont = lm.sample([ContinuationRequest([1, 3], 6, generated_start=2, constraint=OnlyEven())], 1.0, rng)[0]
    assert all(t % 2 == 0 for t in cont.token_ids)
    with torch.no_grad():
        logits = tiny_hf(torch.tensor([[1, 3] + cont.token_ids])).logits[0].double()
    logits[:, 1::2] = -float("inf")
    ref = [torch.log_softmax(logits[1 + i], -1)[t].item() for i, t in enumerate(cont.token_ids)]
    np.testing.assert_allclose(cont.logp, ref, atol=2e-4)


def test_seeded_rng_reproduces_and_deadline_interrupts(lm):
    a = lm.sample([ContinuationRequest([1, 2], 10)], 1.0, np.random.default_rng(5))[0]
    lm.clear_cache()
    b = lm.sample([ContinuationRequest([1, 2], 10)], 1.0, np.random.default_rng(5))[0]
    assert a.token_ids == b.token_ids
    cut = lm.sample([ContinuationRequest([1, 2], 40)], 1.0, np.random.default_rng(5), deadline=0.0)[0]
    assert cut.interrupted and len(cut) == 1


def test_cache_pool_respects_its_token_budget(tiny_hf):
    lm = TransformersLM(tiny_hf, None, name="tiny", cache_tokens=40)
    lm.stop_token_ids = frozenset()
    rng = np.random.default_rng(3)
    for start in range(1, 6):
        lm.sample([ContinuationRequest([start, 2, 3], 10)], 1.0, rng)
    assert lm._pool.tokens <= 40


def test_the_context_length_is_the_models_position_limit(tiny_hf):
    from powersampling.backends.base import check_context_length
    from powersampling.errors import ContextLengthError

    lm = TransformersLM(tiny_hf, None, name="tiny")
    assert lm.context_length == 64  # max_position_embeddings of the tiny config
    check_context_length(lm, 60, 4)
    with pytest.raises(ContextLengthError, match="context length of tiny"):
        check_context_length(lm, 60, 5)


def test_a_long_prompt_is_fed_in_parts_that_match_one_pass_and_stop_at_the_deadline(lm, tiny_hf):
    from powersampling.backends.hf import PREFILL_CHUNK

    rng = np.random.default_rng(0)
    prompt = [1] + [int(t) for t in rng.integers(1, 6, size=2 * PREFILL_CHUNK + 100)]
    before = lm.forward_passes
    (cont,) = lm.sample([ContinuationRequest(prompt, 3)], 1.0, np.random.default_rng(1))
    assert lm.forward_passes - before == 3 + 2  # three parts of the prompt, then one pass per further token
    logp, _ = _reference(tiny_hf, prompt, cont.token_ids, 1.0)
    np.testing.assert_allclose(cont.logp, logp, atol=1e-4)

    lm.clear_cache()
    before = lm.forward_passes
    (cut,) = lm.sample([ContinuationRequest(prompt, 3)], 1.0, np.random.default_rng(1), deadline=0.0)
    assert cut.interrupted and len(cut) == 0
    assert lm.forward_passes - before == 1  # the deadline is seen after the first part
    assert lm.sample([ContinuationRequest(prompt, 3)], 1.0, np.random.default_rng(1))[0].token_ids == cont.token_ids
