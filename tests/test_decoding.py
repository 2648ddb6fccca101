"""The decode core shared by the local backends: the draw, the mask policy and the row rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from powersampling import FunctionLM
from powersampling.backends.base import ContinuationRequest
from powersampling.backends.decoding import common_prefix_length, draw, log_softmax


def _draw_many(logits: np.ndarray, temperature: float, draws: int, seed: int = 0):
    batch = np.repeat(np.atleast_2d(logits), draws, axis=0)
    return draw(batch, temperature, np.random.default_rng(seed).random(draws))


def test_draw_follows_the_tempered_distribution_over_the_full_vocabulary():
    logits = np.array([2.0, 1.0, 0.0, -1.0, -np.inf, -3.0])
    temperature = 0.5
    tokens, logp, logq = _draw_many(logits, temperature, 20000)
    counts = np.bincount(tokens, minlength=len(logits))
    expected = np.exp(log_softmax(logits / temperature))
    assert counts[4] == 0  # -inf is impossible
    # binomial standard error at 20000 draws is below 0.0036 for every token
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.015)
    assert counts[5] > 0 or expected[5] < 1e-4  # no truncation of the tail
    for token, lp, lq in zip(tokens[:200], logp, logq):
        assert lp == pytest.approx(log_softmax(logits)[token], abs=1e-12)
        assert lq == pytest.approx(log_softmax(logits / temperature)[token], abs=1e-12)


def test_draw_takes_each_row_from_its_own_distribution():
    logits = np.array([[3.0, 0.0, -1.0, -np.inf], [-2.0, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    temperature = 0.7
    rng = np.random.default_rng(1)
    counts = np.zeros_like(logits)
    for _ in range(4000):
        tokens, logp, logq = draw(logits, temperature, rng.random(3))
        counts[np.arange(3), tokens] += 1
        for row, token in enumerate(tokens):
            assert logp[row] == pytest.approx(log_softmax(logits[row])[token], abs=1e-12)
            assert logq[row] == pytest.approx(log_softmax(logits[row] / temperature)[token], abs=1e-12)
    expected = np.array([np.exp(log_softmax(row / temperature)) for row in logits])
    np.testing.assert_allclose(counts / 4000, expected, atol=0.03)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_draw_greedy_and_all_masked(as_tensor):
    wrap = torch.tensor if as_tensor else np.array
    tokens, logp, logq = draw(wrap([[0.0, 3.0, 1.0]]), 0.0, np.zeros(1))
    assert tokens == [1] and logq == [0.0] and logp[0] == pytest.approx(log_softmax([0.0, 3.0, 1.0])[1])
    with pytest.raises(ValueError, match="disallowed"):
        draw(wrap(np.full((1, 3), -np.inf)), 1.0, np.zeros(1))


def test_the_inverse_cdf_gives_each_token_its_interval_and_never_a_zero_weight_token():
    # two equal tokens, then impossible ones: u below 1/2 is token 0, from 1/2 on token 1, and a uniform at the
    # very top of [0, 1) (whose product with the total can round up to it) still lands on token 1
    logits = np.array([[0.0, 0.0, -np.inf, -np.inf]] * 4)
    uniforms = np.array([0.0, 0.4999, 0.5, np.nextafter(1.0, 0.0)])
    tokens, logp, _ = draw(logits, 1.0, uniforms)
    assert tokens == [0, 0, 1, 1] and np.allclose(logp, np.log(0.5))


def test_the_accelerator_path_draws_the_same_tokens_as_the_cpu_path():
    """The torch implementation (used for tensors on an accelerator) against the numpy one, on the same uniforms;
    here both run on the CPU, which exercises the torch code path without a GPU."""
    from powersampling.backends.decoding import _draw_numpy, _draw_torch

    rng = np.random.default_rng(5)
    logits = rng.normal(size=(64, 300)) * 3
    logits[:, ::7] = -np.inf
    uniforms = rng.random(64)
    for temperature in (0.0, 0.25, 1.0, 2.0):
        a = _draw_numpy(logits, temperature, uniforms)
        b = _draw_torch(torch.from_numpy(logits), temperature, uniforms)
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], atol=1e-12)
        np.testing.assert_allclose(a[2], b[2], atol=1e-12)


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([5], [4]) == 0


class _NoMaskState:
    """A constraint state in the protocol's own terms: None means every token is allowed."""

    def __init__(self, finish_after: int) -> None:
        self.left = finish_after

    def allowed_tokens(self):
        return None

    def advance(self, token_id: int) -> None:
        self.left -= 1

    def is_finished(self) -> bool:
        return self.left <= 0


class _NoMask:
    def start(self, generated):
        return _NoMaskState(3 - len(generated))


class _ShortMask:
    """A grammar-like mask over a vocabulary shorter than the model's: tokens past it are disallowed."""

    def start(self, generated):
        return self

    def allowed_tokens(self):
        return np.array([False, True, True])

    def advance(self, token_id: int) -> None:
        pass

    def is_finished(self) -> bool:
        return False


def _flat_lm(vocab: int = 5) -> FunctionLM:
    return FunctionLM(vocab, 0, lambda prefix: np.zeros(vocab))


def test_a_constraint_state_without_a_mask_allows_every_token_and_can_finish_the_row():
    lm = _flat_lm()
    requests = [ContinuationRequest([1], 10, generated_start=1, constraint=_NoMask()) for _ in range(200)]
    conts = lm.sample(requests, 1.0, np.random.default_rng(0))
    drawn = {t for c in conts for t in c.token_ids}
    assert drawn == {0, 1, 2, 3, 4}
    for c in conts:  # three tokens unless the stop token came first
        assert c.stopped and (len(c) == 3 or c.token_ids[-1] == 0)


def test_a_mask_shorter_than_the_vocabulary_disallows_the_rest():
    lm = _flat_lm()
    requests = [ContinuationRequest([1], 4, generated_start=1, constraint=_ShortMask()) for _ in range(50)]
    conts = lm.sample(requests, 1.0, np.random.default_rng(0))
    assert {t for c in conts for t in c.token_ids} == {1, 2}
    # renormalized over the allowed tokens: two equal choices
    assert all(np.allclose(c.logp, np.log(0.5)) for c in conts)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_draw_from_a_defensive_mixture_reports_the_mixture_log_q(as_tensor):
    logits = np.array([3.0, 1.0, 0.0, -np.inf, -2.0])
    temperature, weight, flat = 0.25, 0.3, 1.0
    mixture = (1 - weight) * np.exp(log_softmax(logits / temperature)) + weight * np.exp(log_softmax(logits / flat))
    draws = 20000
    batch = np.repeat(logits[None, :], draws, axis=0)
    tokens, logp, logq = draw(
        torch.tensor(batch) if as_tensor else batch,
        temperature,
        np.random.default_rng(0).random(draws),
        mixture=(weight, flat),
    )
    counts = np.bincount(tokens, minlength=len(logits))
    assert counts[3] == 0
    np.testing.assert_allclose(counts / draws, mixture, atol=0.015)
    for token, lp, lq in zip(tokens[:100], logp, logq):
        assert lq == pytest.approx(np.log(mixture[token]), abs=1e-12)
        assert lp == pytest.approx(log_softmax(logits)[token], abs=1e-12)
    with pytest.raises(ValueError, match="temperature above 0"):
        draw(batch[:1], 0.0, np.zeros(1), mixture=(weight, flat))


def test_decode_reports_next_token_entropies_when_asked():
    table = {(1,): np.array([0.0, 2.0, 1.0]), (1, 1): np.array([5.0, -np.inf, 0.0]), (1, 2): np.array([0.0, 0, 0])}
    lm = FunctionLM(3, 0, lambda prefix: table.get(prefix, np.array([0.0, -np.inf, -np.inf])))

    def entropy(logits):
        lp = log_softmax(logits)
        ok = np.isfinite(lp)
        return float(-(np.exp(lp[ok]) * lp[ok]).sum())

    rng = np.random.default_rng(0)
    asked, plain = lm.sample([ContinuationRequest([1], 3, entropy=True), ContinuationRequest([1], 3)], 1.0, rng)
    assert plain.entropy is None
    assert len(asked.entropy) == len(asked)
    prefix = (1,)
    for token, h in zip(asked.token_ids, asked.entropy):
        assert h == pytest.approx(entropy(lm.logits(list(prefix))), abs=1e-12)
        prefix += (token,)


def test_the_accelerator_draw_matches_the_numpy_draw_for_a_mixture():
    """The torch arithmetic (used for logits on an accelerator) gives the numpy draw's tokens and log q; run here on
    CPU tensors, where ``draw`` itself would take the numpy path."""
    from powersampling.backends.decoding import _draw_numpy, _draw_torch, next_token_entropy

    logits = np.random.default_rng(3).normal(size=(64, 50)) * 3
    logits[:, 7] = -np.inf
    uniforms = np.random.default_rng(4).random(64)
    for mixture in (None, (0.3, 1.0), (1.0, 2.0)):
        expected = _draw_numpy(logits, 0.25, uniforms, mixture)
        got = _draw_torch(torch.tensor(logits), 0.25, uniforms, mixture)
        assert got[0] == expected[0]
        np.testing.assert_allclose(got[1], expected[1], atol=1e-12)
        np.testing.assert_allclose(got[2], expected[2], atol=1e-12)
    np.testing.assert_allclose(next_token_entropy(torch.tensor(logits)), next_token_entropy(logits), atol=1e-12)
