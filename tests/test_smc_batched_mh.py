"""Batched MH (``PowerSamplingConfig.proposal_batch``): several cut proposals from one state drawn in one backend
call, used with the exact sequential MH rule. Fewer backend calls and forward passes, the same target.

(Kept next to the SMC tests: both are the "faster samplers" of issue 7.)
"""

from __future__ import annotations

import functools

import numpy as np

from powersampling import FunctionLM, PowerSampler, PowerSamplingConfig
from powersampling.exactness import (
    empirical,
    enumerate_completions,
    exact_sampler_tv_quantile,
    power_distribution,
    total_variation,
)


def table_lm(seed: int = 4, vocab: int = 4, eos: int = 0) -> FunctionLM:
    @functools.cache
    def logits(prefix):
        return np.random.default_rng([seed, len(prefix), *prefix]).normal(size=vocab)

    return FunctionLM(vocab, eos, logits, name=f"table-{seed}")


def test_batched_proposals_cut_backend_calls_and_stay_exact():
    lm = table_lm()
    prompt, max_new, alpha, chains, n_mcmc = [1], 3, 2.0, 600, 12
    target = power_distribution(enumerate_completions(lm, prompt, max_new), alpha)
    bound = exact_sampler_tv_quantile(target, chains, quantile=0.999)
    calls = {}
    for batch in (1, n_mcmc):
        config = PowerSamplingConfig(
            alpha=alpha,
            max_new_tokens=max_new,
            n_mcmc=n_mcmc,
            block_size=1,
            n_chains=chains,
            seed=2,
            proposal_batch=batch,
            scan="random",
        )
        result = PowerSampler(lm, config).sample(prompt)
        tv = total_variation(empirical(c.token_ids for c in result.samples), target)
        assert tv <= bound, f"proposal_batch={batch}: TV {tv:.4f} above the exact-sampler bound {bound:.4f}"
        calls[batch] = result.metadata["backend_calls"]
    # sequential MH needs a call per step and block; batching folds a block's steps into a few calls (an accepted
    # move invalidates the prefetched proposals whose prefix it changed, which are drawn again)
    assert calls[n_mcmc] * 1.5 <= calls[1], calls


def test_batched_proposals_cut_forward_passes_on_a_transformers_model(tiny_hf):
    """On a real engine the proposals of a batch are rows of the same forward passes."""
    from powersampling.backends.hf import TransformersLM

    passes, calls = {}, {}
    for batch in (1, 10):
        lm = TransformersLM(tiny_hf, None, name="tiny")
        lm.stop_token_ids = frozenset()  # equal lengths: the count depends on the batching only
        config = PowerSamplingConfig(
            alpha=4.0, max_new_tokens=12, n_mcmc=10, block_size=4, seed=2, proposal_batch=batch, scan="random"
        )
        result = PowerSampler(lm, config).sample([1, 3])
        assert len(result.token_ids) == 12
        passes[batch], calls[batch] = lm.forward_passes, result.metadata["backend_calls"]
    assert calls[10] * 3 <= calls[1], calls
    assert passes[10] * 2 <= passes[1], passes
