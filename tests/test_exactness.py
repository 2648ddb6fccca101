"""The samplers draw from p^alpha: empirical distributions against the exact one on enumerable models.

Each check draws S independent chains (batched rows) and compares TV(empirical, exact p^alpha) with the 99.9%
quantile of the TV an exact i.i.d. sampler shows at the same S. Per-token low-temperature sampling (the proposal)
must fail the same check, so the test can tell the target from the proposal.
"""

from __future__ import annotations

import pytest

from powersampling import PowerSampler, PowerSamplingConfig
from powersampling.exactness import (
    empirical,
    enumerate_completions,
    exact_sampler_tv_quantile,
    power_distribution,
    random_table_model,
    tokenwise_tempered_distribution,
    total_variation,
)

PROMPT = [1]
MAX_NEW = 4
CHAINS = 3000
NO_ANSWER = dict(answer_extractor=lambda text: None)


def _mh_tv(lm, alpha, **cfg):
    target = power_distribution(enumerate_completions(lm, PROMPT, MAX_NEW), alpha)
    config = PowerSamplingConfig(alpha=alpha, max_new_tokens=MAX_NEW, n_chains=CHAINS, seed=11, **cfg)
    result = PowerSampler(lm, config).sample(PROMPT)
    emp = empirical(c.token_ids for c in result.samples)
    return total_variation(emp, target), exact_sampler_tv_quantile(target, CHAINS, quantile=0.999), target


@pytest.mark.parametrize(
    "alpha, cfg",  # the random scan pinned where it was the default when these were written
    [
        (2.0, dict(n_mcmc=8, block_size=2, scan="random")),
        (4.0, dict(n_mcmc=12, block_size=1, scan="random")),
        (0.5, dict(n_mcmc=8, block_size=4, scan="random")),  # alpha < 1 flattens
        (2.0, dict(n_mcmc=12, block_size=2, proposal_temperature=1.0, scan="random")),  # proposal != 1/alpha
        (3.0, dict(n_mcmc=12, block_size=2, proposal_temperature=0.25, scan="random")),
        (2.0, dict(n_mcmc=8, block_size=2, proposal_batch=1, scan="random")),  # strictly sequential proposals
        (2.0, dict(n_mcmc=8, block_size=2, scan="sorted")),  # one batched call per block
        (4.0, dict(n_mcmc=12, block_size=1, scan="sorted")),
        (3.0, dict(n_mcmc=40, block_size=2, scan="sorted", proposal_temperature=1.0)),
        (2.0, dict(n_mcmc=8, block_size=2, scan="entropy")),  # cuts weighted by next-token entropy
        (4.0, dict(n_mcmc=12, block_size=1, scan="entropy", entropy_floor=0.1)),  # forced EOS: H = 0, floor only
        (0.5, dict(n_mcmc=8, block_size=4, scan="entropy", entropy_floor=0.5)),
        (3.0, dict(n_mcmc=12, block_size=2, scan="entropy", proposal_temperature=1.0)),
        (2.0, dict(n_mcmc=8, block_size=2, scan="entropy", proposal_batch=1)),
        (2.0, dict(n_mcmc=8, block_size=2, scan="sorted-entropy")),  # cut counts follow each position's entropy
        (4.0, dict(n_mcmc=16, block_size=1, scan="sorted-entropy", entropy_floor=0.1)),
        (0.5, dict(n_mcmc=24, block_size=4, scan="sorted-entropy")),
        (4.0, dict(n_mcmc=12, block_size=1, defensive_weight=0.2)),  # mixture proposal, exact log q
        (2.0, dict(n_mcmc=8, block_size=2, scan="entropy", defensive_weight=0.3, defensive_temperature=2.0)),
        # an adaptive vote that never settles (no answers): the chains run in three rounds of 1000
        (2.0, dict(n_mcmc=8, block_size=2, select="majority", vote_stop="posterior", round_size=1000, **NO_ANSWER)),
    ],
)
def test_mh_matches_exact_power_distribution(alpha, cfg):
    lm = random_table_model()
    tv, bound, _ = _mh_tv(lm, alpha, **cfg)
    assert tv <= bound, f"TV {tv:.4f} above the exact-sampler bound {bound:.4f}"


def test_tokenwise_low_temperature_is_not_the_target():
    lm = random_table_model()
    alpha = 2.0
    target = power_distribution(enumerate_completions(lm, PROMPT, MAX_NEW), alpha)
    low_temp = tokenwise_tempered_distribution(lm, PROMPT, MAX_NEW, alpha)
    bound = exact_sampler_tv_quantile(target, CHAINS, quantile=0.999)
    # the check used above would reject per-token low temperature by a wide margin
    assert total_variation(low_temp, target) > 3 * bound


def test_mh_on_a_real_transformers_model_matches_exact(tiny_hf):
    """The full transformers path (batched rows, KV cache pool, cut re-feeding) on a model small enough to enumerate."""
    import numpy as np
    import torch

    from powersampling import FunctionLM
    from powersampling.backends.hf import TransformersLM

    lm = TransformersLM(tiny_hf, None, name="tiny")

    def exact_logits(prefix):
        with torch.no_grad():
            return tiny_hf(torch.tensor([list(prefix)])).logits[0, -1].double().numpy()

    reference = FunctionLM(6, 0, exact_logits)
    prompt, max_new, alpha, chains = [1, 3], 3, 2.0, 1500
    target = power_distribution(enumerate_completions(reference, prompt, max_new), alpha)
    bound = exact_sampler_tv_quantile(target, chains, quantile=0.999)
    for scan, extra in (("random", {}), ("sorted", {}), ("entropy", {}), ("sorted", {"defensive_weight": 0.3})):
        config = PowerSamplingConfig(
            alpha=alpha, max_new_tokens=max_new, n_mcmc=8, block_size=1, n_chains=chains, seed=5, scan=scan, **extra
        )
        result = PowerSampler(lm, config).sample(prompt)
        tv = total_variation(empirical(c.token_ids for c in result.samples), target)
        assert tv <= bound, f"{scan} {extra}: TV {tv:.4f} above {bound:.4f}"
    low_temp = tokenwise_tempered_distribution(reference, prompt, max_new, alpha)
    assert total_variation(low_temp, target) > 2 * bound
    assert np.isclose(sum(target.values()), 1.0)


# The exact one-step kernel of an MH move, built from the sampler's own kernel (accept_step) and cut law over every
# state and every proposal, must leave p^alpha invariant to rounding: a check of the ratio itself, free of noise.


def _suffixes(lm, prefix, generated, limit, temperature, mixture):
    """Every continuation the backend can draw after ``generated`` (up to ``limit`` tokens or a stop), as a
    Continuation with log p, log q (the proposal, a defensive mixture when given) and entropies, and its q."""
    import numpy as np

    from powersampling.backends.base import Continuation
    from powersampling.backends.decoding import log_softmax, next_token_entropy, temperature_logprobs

    out = []

    def walk(tokens, lp, lq, ent):
        if (tokens and tokens[-1] in lm.stop_token_ids) or len(generated) + len(tokens) == limit:
            cont = Continuation(
                list(tokens), np.array(lp), np.array(lq), bool(tokens) and tokens[-1] in lm.stop_token_ids
            )
            cont.entropy = np.array(ent)
            out.append((cont, float(np.exp(sum(lq)))))
            return
        logits = lm.logits(list(prefix) + list(generated) + list(tokens))
        logp, logq = temperature_logprobs(logits, temperature)
        if mixture is not None:
            weight, flat = mixture
            logq = np.logaddexp(np.log1p(-weight) + logq, np.log(weight) + log_softmax(logits / flat))
        h = next_token_entropy(logits[None, :])[0]
        for tok in np.flatnonzero(np.isfinite(logp)):
            walk(tokens + (int(tok),), lp + [logp[tok]], lq + [logq[tok]], ent + [h])

    walk((), [], [], [])
    return out


def _one_step_kernel(lm, alpha, temperature, cuts, *, reverse_cuts="same", mixture=None):
    import math

    import numpy as np

    from powersampling.samplers.mh import ChainState, accept_step

    starts = _suffixes(lm, PROMPT, (), MAX_NEW, temperature, mixture)
    states = [ChainState().with_suffix(0, cont) for cont, _ in starts]
    index = {s.tokens: i for i, s in enumerate(states)}
    kernel = np.zeros((len(states), len(states)))
    for i, state in enumerate(states):
        probs = cuts.probs(state)
        for cut in range(len(state)):
            for cont, q in _suffixes(lm, PROMPT, state.tokens[:cut], MAX_NEW, temperature, mixture):
                ratio_cuts = cuts if reverse_cuts == "same" else reverse_cuts
                _, info = accept_step(state, cut, cont, alpha, 0.0, cuts=ratio_cuts)
                accept = math.exp(min(info.log_accept, 0.0))
                j = index[state.tokens[:cut] + tuple(cont.token_ids)]
                kernel[i, j] += probs[cut] * q * accept
                kernel[i, i] += probs[cut] * q * (1.0 - accept)
    return states, kernel


@pytest.mark.parametrize("floor, mixture", [(0.25, None), (0.05, None), (0.25, (0.3, 1.0))])
def test_entropy_cut_kernel_leaves_p_alpha_invariant_exactly(floor, mixture):
    import numpy as np

    from powersampling.samplers.mh import EntropyCuts

    lm = random_table_model()
    alpha = 1.5
    logp = enumerate_completions(lm, PROMPT, MAX_NEW)
    target = power_distribution(logp, alpha)
    states, kernel = _one_step_kernel(lm, alpha, 1 / alpha, EntropyCuts(floor), mixture=mixture)
    assert len({len(s) for s in states}) > 1, "the check needs states of different lengths (EOS)"
    pi = np.array([target[s.tokens] for s in states])
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi @ kernel, pi, atol=1e-12)


def test_entropy_cuts_without_the_reverse_cut_term_are_biased():
    """The same kernel with the uniform cut's ratio (log n - log n') instead of the entropy law's: p^alpha is no
    longer invariant, so the exact check above can tell the right reverse term from a near miss."""
    import numpy as np

    from powersampling.samplers.mh import EntropyCuts, UniformCuts

    lm = random_table_model()
    alpha = 1.5
    target = power_distribution(enumerate_completions(lm, PROMPT, MAX_NEW), alpha)
    states, kernel = _one_step_kernel(lm, alpha, 1 / alpha, EntropyCuts(0.05), reverse_cuts=UniformCuts())
    pi = np.array([target[s.tokens] for s in states])
    assert np.abs(pi @ kernel - pi).sum() > 1e-3


def test_the_entropy_scan_with_a_full_floor_is_the_random_scan():
    """floor 1 makes the cut uniform: the same seed gives the same chain, draw for draw, as scan=random."""
    lm = random_table_model()
    runs = []
    for scan, extra in (("random", {}), ("entropy", {"entropy_floor": 1.0})):
        config = PowerSamplingConfig(
            alpha=2.0, max_new_tokens=MAX_NEW, n_mcmc=6, block_size=2, n_chains=20, seed=3, scan=scan, **extra
        )
        runs.append([c.token_ids for c in PowerSampler(lm, config).sample(PROMPT).samples])
    assert runs[0] == runs[1]


def test_entropy_scan_is_refused_by_a_backend_without_entropies():
    from powersampling.errors import CapabilityError

    class NoEntropies:  # a backend outside the local decode core: it has no next_token_logprobs
        name, vocab_size, stop_token_ids, tokenizer = "remote-like", 4, frozenset([0]), None

        def sample(self, requests, temperature, rng, *, deadline=None):
            raise AssertionError("never called")

    for params in (dict(scan="entropy"), dict(defensive_weight=0.1)):
        with pytest.raises(CapabilityError, match="local backend"):
            PowerSampler(NoEntropies(), PowerSamplingConfig(**params)).sample([1])


def _fixed_cut_kernels(lm, alpha, temperature):
    """Per cut m, the exact matrix of the fixed-cut MH move (the sorted scan's, no cut term) over every state."""
    import math

    import numpy as np

    from powersampling.samplers.mh import ChainState, accept_step

    states = [ChainState().with_suffix(0, cont) for cont, _ in _suffixes(lm, PROMPT, (), MAX_NEW, temperature, None)]
    index = {s.tokens: i for i, s in enumerate(states)}
    kernels = []
    for cut in range(MAX_NEW):
        kernel = np.zeros((len(states), len(states)))
        for i, state in enumerate(states):
            if cut >= len(state):
                kernel[i, i] = 1.0
                continue
            for cont, q in _suffixes(lm, PROMPT, state.tokens[:cut], MAX_NEW, temperature, None):
                _, info = accept_step(state, cut, cont, alpha, 0.0, cuts=None)
                accept = math.exp(min(info.log_accept, 0.0))
                kernel[i, index[state.tokens[:cut] + tuple(cont.token_ids)]] += q * accept
                kernel[i, i] += q * (1.0 - accept)
        kernels.append(kernel)
    return states, kernels


def _block_kernel(states, kernels, counts_of):
    """The sorted scan's block: cuts applied from the last position back, position m's move repeated counts_of(state)
    [m] times, the count read from the state as it is when position m's turn comes."""
    import numpy as np

    total = np.eye(len(states))
    for m in reversed(range(len(kernels))):
        step = np.zeros_like(total)
        for i, state in enumerate(states):
            step[i] = np.linalg.matrix_power(kernels[m], counts_of(state)[m])[i]
        total = total @ step
    return total


def test_sorted_entropy_block_leaves_p_alpha_invariant_exactly():
    """The sorted-entropy scan's whole block, exactly, for several uniforms: p^alpha is invariant to rounding. The
    near miss, cut counts from entropies normalized by the state's own total (which depends on tokens after the
    cut), is not invariant."""
    import math

    import numpy as np

    from powersampling.samplers.mh import entropy_allocated_cuts

    lm = random_table_model()
    alpha, steps, floor = 1.5, 4, 0.2
    target = power_distribution(enumerate_completions(lm, PROMPT, MAX_NEW), alpha)
    states, kernels = _fixed_cut_kernels(lm, alpha, 1 / alpha)
    pi = np.array([target[s.tokens] for s in states])
    scale = math.log(lm.vocab_size)

    def counts(cuts):
        return np.bincount(cuts, minlength=MAX_NEW)

    for u in (0.05, 0.5, 0.93):
        block = _block_kernel(
            states, kernels, lambda s, u=u: counts(entropy_allocated_cuts(s.entropy, steps, MAX_NEW, floor, scale, u))
        )
        np.testing.assert_allclose(pi @ block, pi, atol=1e-12)

    def normalized_by_the_state(s):
        h = np.zeros(MAX_NEW)
        h[: len(s)] = s.entropy
        rates = steps * (floor / MAX_NEW + (1 - floor) * h / h.sum())
        return np.diff(np.concatenate([[0.0], np.floor(np.cumsum(rates) + 0.5)])).astype(int)

    block = _block_kernel(states, kernels, normalized_by_the_state)
    assert np.abs(pi @ block - pi).sum() > 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_mode_hiding_models_hide_a_heavy_mode(seed):
    """The generator's contract: p^4's mode is the immediate EOS, it holds most of the target, and the per-token
    low-temperature proposal almost never starts it."""
    from powersampling.exactness import hidden_mode, mode_hiding_model

    hidden = hidden_mode(mode_hiding_model(seed), PROMPT, 4, 4.0)
    assert hidden["mode"] == [0]
    assert hidden["target_mass"] > 0.6
    assert hidden["proposal_probability"] < 0.012
    assert hidden["low_temperature_tv"] > 0.5
