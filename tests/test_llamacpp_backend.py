"""llama.cpp backend: the embedded GGUF model against transformers and itself.

Tolerances against transformers were measured on the embedded SmolLM2-135M-Instruct Q4_1 file (docs/backends.md):
llama.cpp evaluates the quantized weights with quantized activations, transformers the same weights dequantized to
fp32; per-token log p of sampled tokens differed by mean 0.05-0.06, max 0.18-0.31 nats over 40-48 tokens. Within
llama.cpp, evaluation batches stay below the size where its kernels change, so logits are a pure function of the
token ids however rows are batched: cache reuse, rows decoded side by side and the acceptance ratio are checked for
exact equality with a fresh evaluation.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import needs_module
from powersampling.backends.base import ContinuationRequest

# measured: see test_log_p_agrees_with_transformers
LOGP_TOLERANCE_MAX = 0.4
LOGP_TOLERANCE_MEAN = 0.08


from powersampling.backends.decoding import log_softmax

# the embedded model


def _needs_llama_cpp():
    needs_module("llama_cpp", reason="llama-cpp-python is not installed (pip install 'powersampling[llama]')")


@pytest.fixture(scope="module")
def lm():
    _needs_llama_cpp()
    from powersampling.backends.embedded import embedded_gguf_path
    from powersampling.backends.llamacpp import load_llamacpp

    return load_llamacpp(str(embedded_gguf_path()), n_ctx=1024)


@pytest.fixture(scope="module")
def prompt(lm):
    return lm.tokenizer.chat_prompt([{"role": "user", "content": "List three prime numbers and explain why."}])


@pytest.fixture(scope="module")
def hf_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from powersampling.backends.embedded import embedded_model_dir

    folder = embedded_model_dir()
    return (
        AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(str(folder)),
    )


def fresh_logits(lm, prefix):
    """Logits after ``prefix`` from an emptied cache: one plain evaluation, nothing reused."""
    lm.clear_cache()
    return lm.next_token_logits(prefix)


@pytest.mark.slow
def test_log_p_agrees_with_transformers(lm, prompt, hf_model):
    import torch

    model, _ = hf_model
    (cont,) = lm.sample([ContinuationRequest(prompt, 48, generated_start=len(prompt))], 1.0, np.random.default_rng(0))
    ids = prompt + cont.token_ids
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    positions = np.arange(len(prompt) - 1, len(ids) - 1)
    reference = np.array([log_softmax(logits[i])[t] for i, t in zip(positions, cont.token_ids)])
    diff = np.abs(cont.logp - reference)
    print(
        f"llama.cpp Q4_1 vs transformers fp32, {len(diff)} tokens: max |dlogp| {diff.max():.4f}, mean {diff.mean():.4f}"
    )
    assert diff.max() < LOGP_TOLERANCE_MAX and diff.mean() < LOGP_TOLERANCE_MEAN


@pytest.mark.slow
def test_acceptance_ratio_equals_brute_force_from_full_logits(lm, prompt):
    alpha, temperature = 4.0, 0.25
    rng = np.random.default_rng(3)
    (current,) = lm.sample([ContinuationRequest(prompt, 20)], temperature, rng)
    cut = len(current) // 2
    (proposal,) = lm.sample([ContinuationRequest(prompt + current.token_ids[:cut], 20 - cut)], temperature, rng)
    from_backend = (
        alpha * (proposal.logp.sum() - current.logp[cut:].sum()) + current.logq[cut:].sum() - proposal.logq.sum()
    )

    def brute(tokens, start):
        logp, logq, log_z = [], [], []
        for i in range(start, len(tokens)):
            logits = fresh_logits(lm, prompt + tokens[:i])
            lp = log_softmax(logits)
            logp.append(lp[tokens[i]])
            logq.append(log_softmax(logits / temperature)[tokens[i]])
            log_z.append(np.log(np.sum(np.exp(alpha * lp))))
        return np.array(logp), np.array(logq), np.array(log_z)

    old_p, old_q, old_z = brute(current.token_ids, cut)
    new_p, new_q, new_z = brute(current.token_ids[:cut] + proposal.token_ids, cut)
    brute_force = alpha * (new_p.sum() - old_p.sum()) + old_q.sum() - new_q.sum()
    assert from_backend == pytest.approx(brute_force, abs=1e-9)
    # with q exactly p at temperature 1/alpha, the ratio is a difference of log normalizers
    assert brute_force == pytest.approx(new_z.sum() - old_z.sum(), abs=1e-6)


@pytest.mark.slow
def test_kv_reuse_gives_the_logits_of_a_fresh_evaluation(lm, prompt):
    (cont,) = lm.sample([ContinuationRequest(prompt, 24)], 1.0, np.random.default_rng(5))
    full = prompt + cont.token_ids
    for cut in (len(prompt) + 3, len(prompt) + 17, len(prompt)):
        lm.clear_cache()
        lm.next_token_logits(full)  # the cache holds the whole sequence
        reused_before = lm.reused_tokens
        reused = lm.next_token_logits(full[:cut])  # trimmed at the cut, nothing re-encoded before it
        assert lm.reused_tokens - reused_before == cut - 1
        np.testing.assert_array_equal(reused, fresh_logits(lm, full[:cut]))


@pytest.mark.slow
def test_rows_sharing_a_state_reencode_only_their_suffixes(lm, prompt):
    (state,) = lm.sample([ContinuationRequest(prompt, 30)], 0.25, np.random.default_rng(1))
    cuts = [4, 25, 12, 0]
    requests = [ContinuationRequest(prompt + state.token_ids[:m], 30 - m) for m in cuts]
    lm.clear_cache()
    lm.next_token_logits(prompt + state.token_ids)
    before = lm.prefill_tokens
    conts = lm.sample(requests, 0.25, np.random.default_rng(2))
    assert all(1 <= len(c) <= 30 - m for c, m in zip(conts, cuts))
    # visited from the longest cut down: each row feeds one token again to get its logits, nothing else
    assert lm.prefill_tokens - before == len(cuts)


@pytest.mark.slow
def test_rows_decoded_side_by_side_match_fresh_single_row_evaluation(lm, prompt):
    assert lm.eval_batch >= 16  # the load-time probe: batched, one-token and side-by-side logits are identical
    (state,) = lm.sample([ContinuationRequest(prompt, 12)], 1.0, np.random.default_rng(4))
    other = lm.tokenizer.chat_prompt([{"role": "user", "content": "Name a color."}])
    requests = [
        ContinuationRequest(prompt, 10),
        ContinuationRequest(prompt + state.token_ids[:5], 10),
        ContinuationRequest(other, 10),
        ContinuationRequest(prompt, 10),
    ]
    calls_before = lm.decode_calls
    conts = lm.sample(requests, 1.0, np.random.default_rng(7))
    assert lm.decode_calls - calls_before <= 3 + max(len(c) for c in conts)  # prefill calls, then one per step
    for request, cont in zip(requests, conts):
        for i, token in enumerate(cont.token_ids):
            expected = log_softmax(fresh_logits(lm, list(request.prefix) + cont.token_ids[:i]))[token]
            assert cont.logp[i] == pytest.approx(expected, abs=1e-9)  # float64 rounding of the softmax only


@pytest.mark.slow
def test_more_rows_than_slots_or_cache_cells_run_in_groups(prompt):
    _needs_llama_cpp()
    from powersampling.backends.embedded import embedded_gguf_path
    from powersampling.backends.llamacpp import load_llamacpp

    # the cache fits two rows at a time, so five rows run in three groups; the second group needs the cells that
    # the first group's leftover sequences still hold, so they are evicted
    small = load_llamacpp(str(embedded_gguf_path()), n_ctx=256, n_seq_max=4)
    new = small.n_ctx // 2 - len(prompt)
    assert new > 40
    small.stop_token_ids = frozenset()
    requests = [ContinuationRequest(prompt, new) for _ in range(5)]
    conts = small.sample(requests, 1.0, np.random.default_rng(0))
    assert [len(c) for c in conts] == [new] * 5 and small.cache_evictions >= 1
    for cont in (conts[0], conts[-1]):
        for i in (0, 17, new - 1):
            small.clear_cache()
            expected = log_softmax(small.next_token_logits(prompt + cont.token_ids[:i]))[cont.token_ids[i]]
            assert cont.logp[i] == pytest.approx(expected, abs=1e-9)
    small.close()


@pytest.mark.slow
def test_tokenizer_matches_transformers(lm, hf_model):
    from powersampling.backends.tokenizers import HFTokenizer

    hf = HFTokenizer(hf_model[1])
    messages = [
        {"role": "system", "content": "You plan tasks."},
        {"role": "user", "content": "Plan a trip: café, 3 days."},
    ]
    assert lm.tokenizer.chat_prompt(messages) == hf.chat_prompt(messages)
    text = "Natalia sold 48 clips in April; how many in May?"
    assert lm.tokenizer.encode(text) == hf.encode(text)
    assert lm.tokenizer.decode(hf.encode(text)) == text
    im_end = hf_model[1].convert_tokens_to_ids("<|im_end|>")
    assert im_end in lm.stop_token_ids


@pytest.mark.slow
def test_constraint_mask_renormalizes_log_p_and_log_q(lm, prompt):
    allowed_ids = np.array(lm.tokenizer.encode(" one two three four"))

    class State:
        def allowed_tokens(self):
            mask = np.zeros(lm.vocab_size, dtype=bool)
            mask[allowed_ids] = True
            return mask

        def advance(self, token_id):
            assert token_id in allowed_ids

        def is_finished(self):
            return False

    class OnlyTheseWords:
        def start(self, generated):
            return State()

    (cont,) = lm.sample(
        [ContinuationRequest(prompt, 6, generated_start=len(prompt), constraint=OnlyTheseWords())],
        0.5,
        np.random.default_rng(0),
    )
    assert len(cont) == 6 and set(cont.token_ids) <= set(allowed_ids.tolist())
    logits = fresh_logits(lm, prompt)[allowed_ids]
    first = list(allowed_ids).index(cont.token_ids[0])
    assert cont.logp[0] == pytest.approx(log_softmax(logits)[first], abs=1e-12)
    assert cont.logq[0] == pytest.approx(log_softmax(logits / 0.5)[first], abs=1e-12)


@pytest.mark.slow
def test_deadline_interrupts_and_context_overflow_is_refused(lm, prompt):
    (cont,) = lm.sample([ContinuationRequest(prompt, 50)], 1.0, np.random.default_rng(0), deadline=time.monotonic() - 1)
    # at most the one token whose logits the prefill gave; none when the prompt's uncached part took several calls
    assert cont.interrupted and len(cont) <= 1
    with pytest.raises(ValueError, match="n_ctx"):
        lm.sample([ContinuationRequest(prompt, 5000)], 1.0, np.random.default_rng(0))
    assert lm.context_length == lm.n_ctx == 1024


@pytest.mark.slow
def test_power_sampler_runs_on_llamacpp(lm, prompt):
    from powersampling.samplers import PowerSampler, PowerSamplingConfig

    result = PowerSampler(lm, PowerSamplingConfig(alpha=4.0, n_mcmc=3, block_size=8, max_new_tokens=16, seed=0)).sample(
        prompt
    )
    assert 1 <= len(result.token_ids) <= 16
    assert result.metadata["total_iterations"] > 0 and result.text == lm.tokenizer.decode(result.token_ids)


@pytest.mark.slow
def test_load_model_picks_llamacpp_for_gguf():
    _needs_llama_cpp()
    from powersampling import load_model
    from powersampling.backends.llamacpp import LlamaCppLM

    assert isinstance(load_model(None, n_ctx=256), LlamaCppLM)


def test_a_constraint_without_a_mask_runs_on_llama_cpp(lm, prompt):
    """The backend protocol lets a constraint state answer None ("every token allowed"); llama.cpp used to crash on
    it, which forced the stop-string constraint to build a full-vocabulary mask on every step."""
    from powersampling.backends.constraints import StopStringConstraint

    stop = StopStringConstraint(lm.tokenizer, ["\n"])
    requests = [ContinuationRequest(prompt, 40, generated_start=len(prompt), constraint=stop) for _ in range(3)]
    for cont in lm.sample(requests, 1.0, np.random.default_rng(0)):
        assert cont.stopped or len(cont) == 40
        if cont.stopped and cont.token_ids[-1] not in lm.stop_token_ids:  # ended by the stop string, at once
            assert "\n" in lm.tokenizer.decode(cont.token_ids)
            assert "\n" not in lm.tokenizer.decode(cont.token_ids[:-1])


def test_the_deadline_reaches_the_prefill_and_the_cache_stays_consistent(lm, prompt):
    long_prompt = prompt + [int(t) for t in np.random.default_rng(0).integers(100, 5000, size=6 * lm.eval_batch)]
    calls = lm.decode_calls
    (cut,) = lm.sample([ContinuationRequest(long_prompt, 4)], 1.0, np.random.default_rng(2), deadline=0.0)
    assert cut.interrupted and len(cut) == 0
    assert lm.decode_calls - calls == 1  # the deadline is seen after the first llama_decode call
    # what was fed before the deadline is reused, and the result equals a run from an emptied cache
    (resumed,) = lm.sample([ContinuationRequest(long_prompt, 4)], 1.0, np.random.default_rng(2))
    lm.clear_cache()
    (fresh,) = lm.sample([ContinuationRequest(long_prompt, 4)], 1.0, np.random.default_rng(2))
    assert resumed.token_ids == fresh.token_ids
    np.testing.assert_array_equal(resumed.logp, fresh.logp)
