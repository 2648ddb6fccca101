"""What each method draws from under a token constraint (a grammar's mask), on an enumerable model.

A constraint masks the disallowed tokens and renormalizes p and q over the allowed ones at every step
(``TokenConstraint``). So the target of power sampling (MH) and SMC is the masked model raised to alpha,
prod_t (p(x_t | x_<t) / Z_t(x_<t))^alpha with Z_t the allowed mass, exactly; it is not p^alpha restricted to the
constraint's language and renormalized, which would need the mass of every allowed future. ``sample`` draws the
masked model, ``low-temp`` the masked model tempered per token at 1/alpha. The constraint here forbids a token
right after itself (EOS aside), which makes Z_t depend on the prefix, so the two candidate targets differ by far
more than the sampling noise; each sampler is checked against the enumerated target under the noise bound of
tests/test_exactness.py, and against the other candidate, which it must miss.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from powersampling import PowerSampler, PowerSamplingConfig
from powersampling.backends.decoding import temperature_logprobs
from powersampling.exactness import (
    empirical,
    enumerate_completions,
    exact_sampler_tv_quantile,
    power_distribution,
    random_table_model,
    total_variation,
)
from powersampling.samplers import build_sampler

PROMPT = [1]
MAX_NEW = 4
CHAINS = 3000
EOS = 0


class _NoRepeatState:
    def __init__(self, vocab: int, generated) -> None:
        self.vocab = vocab
        self.last = generated[-1] if generated else None

    def allowed_tokens(self) -> np.ndarray:
        mask = np.ones(self.vocab, dtype=bool)
        if self.last is not None and self.last != EOS:
            mask[self.last] = False
        return mask

    def advance(self, token_id: int) -> None:
        assert self.allowed_tokens()[token_id], f"token {token_id} was not allowed"
        self.last = token_id

    def is_finished(self) -> bool:
        return False


class NoRepeat:
    """A token may not follow itself (EOS is always allowed, so every prefix has a continuation)."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def start(self, generated):
        return _NoRepeatState(self.vocab, list(generated))


def enumerate_masked(model, constraint, temperature: float = 1.0) -> dict[tuple[int, ...], float]:
    """Every completion the constraint allows, with its log-probability under the step-wise masked, renormalized
    model at ``temperature`` (1: the masked model itself)."""
    out: dict[tuple[int, ...], float] = {}

    def walk(generated: tuple[int, ...], logp: float) -> None:
        if len(generated) == MAX_NEW or (generated and generated[-1] == EOS):
            out[generated] = logp
            return
        _, lq = temperature_logprobs(model.logits(PROMPT + list(generated)), temperature)
        allowed = constraint.start(generated).allowed_tokens() & np.isfinite(lq)
        norm = np.logaddexp.reduce(lq[allowed])
        for tok in np.flatnonzero(allowed):
            walk(generated + (int(tok),), logp + float(lq[tok] - norm))

    walk((), 0.0)
    return out


@pytest.fixture(scope="module")
def lm():
    return random_table_model(seed=4)  # a seed where the allowed mass Z_t varies enough to tell the targets apart


@pytest.fixture(scope="module")
def constraint(lm):
    return NoRepeat(lm.vocab_size)


@pytest.fixture(scope="module")
def masked_logp(lm, constraint):
    return enumerate_masked(lm, constraint)


def restricted_power(lm, language, alpha: float) -> dict[tuple[int, ...], float]:
    """p^alpha restricted to the constraint's language and renormalized (the target MH does NOT have)."""
    logp = enumerate_completions(lm, PROMPT, MAX_NEW)
    return power_distribution({k: v for k, v in logp.items() if k in language}, alpha)


def _check(samples, target, other, n):
    emp = empirical(samples)
    bound = exact_sampler_tv_quantile(target, n, quantile=0.999)
    tv = total_variation(emp, target)
    assert tv <= bound, f"TV {tv:.4f} to the masked target above the exact-sampler bound {bound:.4f}"
    miss = total_variation(emp, other)
    assert miss > 3 * bound, f"TV {miss:.4f} to the other candidate target: the check cannot tell them apart"


def test_the_two_candidate_targets_differ(lm, masked_logp):
    masked = power_distribution(masked_logp, 2.0)
    restricted = restricted_power(lm, masked, 2.0)
    assert set(masked) == set(restricted)
    assert total_variation(masked, restricted) > 3 * exact_sampler_tv_quantile(masked, CHAINS, quantile=0.999)


@pytest.mark.parametrize(
    "alpha, cfg",
    [
        # the mask slows mixing at the default proposal temperature 1/alpha: more steps, or a flatter proposal
        (2.0, dict(n_mcmc=32, block_size=2, scan="sorted")),
        (4.0, dict(n_mcmc=32, block_size=1, scan="random", proposal_temperature=1.0)),
        (2.0, dict(n_mcmc=24, block_size=2, scan="random", proposal_temperature=1.0)),
    ],
)
def test_mh_under_a_constraint_draws_the_masked_model_raised_to_alpha(lm, constraint, masked_logp, alpha, cfg):
    target = power_distribution(masked_logp, alpha)
    config = PowerSamplingConfig(alpha=alpha, max_new_tokens=MAX_NEW, n_chains=CHAINS, seed=5, **cfg)
    result = PowerSampler(lm, config).sample(PROMPT, constraint=constraint)
    samples = [c.token_ids for c in result.samples]
    for s in samples:  # every chain's final state is in the language
        assert all(a != b or a == EOS for a, b in itertools.pairwise(s)), s
    _check(samples, target, restricted_power(lm, target, alpha), CHAINS)


def _independent(method, lm, constraint, n, **params):
    out = []
    for child in np.random.SeedSequence(7).spawn(n):
        sampler = build_sampler(method, lm, max_new_tokens=MAX_NEW, seed=int(child.generate_state(1)[0]), **params)
        out.append(sampler.sample(PROMPT, constraint=constraint).token_ids)
    return out


def test_smc_under_a_constraint_draws_the_masked_model_raised_to_alpha(lm, constraint, masked_logp):
    alpha, n = 2.0, 1500
    target = power_distribution(masked_logp, alpha)
    samples = _independent("smc", lm, constraint, n, alpha=alpha, n_particles=16, resample_every=1)
    _check(samples, target, restricted_power(lm, target, alpha), n)


@pytest.mark.parametrize("method, params", [("sample", {}), ("low-temp", {"alpha": 2.0})])
def test_baselines_under_a_constraint_draw_the_masked_model(lm, constraint, method, params):
    """sample: the masked model; low-temp: the masked model tempered per token at 1/alpha (renormalized over the
    allowed tokens at each step), not a power of anything."""
    n = 3000
    tempered = enumerate_masked(lm, constraint, temperature=1 / params.get("alpha", 1.0))
    target = {k: float(np.exp(v)) for k, v in tempered.items()}
    samples = _independent(method, lm, constraint, n, **params)
    emp = empirical(samples)
    bound = exact_sampler_tv_quantile(target, n, quantile=0.999)
    assert total_variation(emp, target) <= bound
