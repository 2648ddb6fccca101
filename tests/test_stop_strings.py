"""Stop strings end a completion the way a stop token does, for every method: the target becomes p^alpha over the
completions that end at the first occurrence of a stop string (or a stop token, or the length cap).

The exact targets here are enumerated with the rule written from the text alone (the completion's decoded text
contains a stop string and the text one token shorter does not), independently of the constraint's windowed
check, and compared with each sampler's empirical distribution under the same noise bound as
tests/test_exactness.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from powersampling import FunctionLM, PowerSampler, PowerSamplingConfig
from powersampling.backends.constraints import StopStringConstraint
from powersampling.backends.decoding import temperature_logprobs
from powersampling.exactness import (
    empirical,
    exact_sampler_tv_quantile,
    power_distribution,
    total_variation,
)
from powersampling.samplers import build_sampler

PROMPT = [1]
MAX_NEW = 4
CHAINS = 3000
# FunctionLM's text is its token ids joined by spaces: "2 3" and "3 1" span two tokens, "3 3 3" three
STOPS = ("2 3", "3 1", "3 3 3")


def _ends_at_stop(tokenizer, generated, stops) -> bool:
    text = tokenizer.decode(generated)
    before = tokenizer.decode(generated[:-1])
    return any(s in text for s in stops) and not any(s in before for s in stops)


def enumerate_with_stops(model, prompt, max_new, stops, tokenizer=None, temperature: float = 1.0):
    """Every completion, ending at a stop token, the first stop string, or ``max_new`` tokens, with its log
    probability under the model at ``temperature`` (1: the model itself)."""
    tokenizer = tokenizer or model.tokenizer
    out: dict[tuple[int, ...], float] = {}

    def walk(generated: tuple[int, ...], logp: float) -> None:
        if generated and (generated[-1] in model.stop_token_ids or _ends_at_stop(tokenizer, generated, stops)):
            out[generated] = logp
            return
        if len(generated) == max_new:
            out[generated] = logp
            return
        _, lq = temperature_logprobs(model.logits(list(prompt) + list(generated)), temperature)
        for tok in np.flatnonzero(np.isfinite(lq)):
            walk(generated + (int(tok),), logp + float(lq[tok]))

    walk((), 0.0)
    return out


def table_lm(seed: int = 7, eos_penalty: float = 0.5) -> FunctionLM:
    """Fixed random logits per prefix, EOS made rarer: under p^2 most of the mass ends at a stop string, a tenth at
    EOS, the rest at the length cap, so all three endings are tested."""

    @functools.cache
    def logits(prefix):
        row = np.random.default_rng([seed, len(prefix), *prefix]).normal(size=4) * 0.6
        row[0] -= eos_penalty
        return row

    return FunctionLM(4, 0, logits, name="stop-table")


@pytest.fixture(scope="module")
def lm():
    return table_lm()


@pytest.fixture(scope="module")
def target_logp(lm):
    logp = enumerate_with_stops(lm, PROMPT, MAX_NEW, STOPS)
    p2 = power_distribution(logp, 2.0)
    by_stop = {s: sum(v for k, v in p2.items() if _ends_at_stop(lm.tokenizer, k, (s,))) for s in STOPS}
    assert by_stop["2 3"] > 0.1 and by_stop["3 1"] > 0.1 and by_stop["3 3 3"] > 0, by_stop
    assert sum(v for k, v in p2.items() if k[-1] == 0) > 0.05
    return logp


def _tv(samples, target, n):
    return total_variation(empirical(samples), target), exact_sampler_tv_quantile(target, n, quantile=0.999)


@pytest.mark.parametrize(
    "alpha, cfg",
    [
        (2.0, dict(n_mcmc=16, block_size=2, scan="sorted")),
        (4.0, dict(n_mcmc=16, block_size=2, scan="sorted")),
        (2.0, dict(n_mcmc=12, block_size=2, scan="random")),
    ],
)
def test_power_sampling_with_stop_strings_matches_exact(lm, target_logp, alpha, cfg):
    target = power_distribution(target_logp, alpha)
    constraint = StopStringConstraint(lm.tokenizer, STOPS)
    config = PowerSamplingConfig(alpha=alpha, max_new_tokens=MAX_NEW, n_chains=CHAINS, seed=11, **cfg)
    result = PowerSampler(lm, config).sample(PROMPT, constraint=constraint)
    tv, bound = _tv((c.token_ids for c in result.samples), target, CHAINS)
    assert tv <= bound, f"TV {tv:.4f} above the exact-sampler bound {bound:.4f}"


def test_the_check_tells_the_stop_target_from_the_unstopped_one(lm, target_logp):
    """Without the stop strings the same sampler draws from another target, which the check above rejects."""
    target = power_distribution(target_logp, 2.0)
    config = PowerSamplingConfig(alpha=2.0, max_new_tokens=MAX_NEW, n_chains=CHAINS, seed=11, n_mcmc=16, block_size=2)
    free = PowerSampler(lm, config).sample(PROMPT)
    tv, bound = _tv((c.token_ids for c in free.samples), target, CHAINS)
    assert tv > 3 * bound


def _independent_runs(method, model, n, constraint_of, seed=0, **params):
    """``n`` independent runs of ``method``, each from its own seed, under a fresh stop-string constraint."""
    out = []
    for child in np.random.SeedSequence(seed).spawn(n):
        sampler = build_sampler(method, model, max_new_tokens=MAX_NEW, seed=int(child.generate_state(1)[0]), **params)
        result = sampler.sample(PROMPT, constraint=constraint_of())
        assert result.metadata["stopped_by"] == ("eos" if len(result.token_ids) < MAX_NEW else "length") or (
            _ends_at_stop(model.tokenizer, result.token_ids, STOPS) or result.token_ids[-1] == 0
        )
        out.append(result.token_ids)
    return out


@pytest.mark.parametrize(
    "method, params, n",
    [
        ("sample", {}, 3000),
        ("low-temp", {"alpha": 2.0}, 3000),
        ("smc", {"alpha": 2.0, "n_particles": 16, "resample_every": 1}, 1500),
        ("scalable-power", {"alpha": 2.0, "top_k": 4, "rollouts": 1, "horizon": None}, 1500),
    ],
)
def test_other_methods_honour_stop_strings(lm, target_logp, method, params, n):
    """Plain sampling draws the model cut at the first stop, low temperature the per-token tempered model cut
    there; SMC with 16 particles and scalable power with whole-future rollouts reach p^alpha within sampling noise
    (as they do without stop strings, tests/test_scalable.py)."""
    if method == "sample":
        target = power_distribution(target_logp, 1.0)
    elif method == "low-temp":
        tempered = enumerate_with_stops(lm, PROMPT, MAX_NEW, STOPS, temperature=1 / params["alpha"])
        target = {k: float(np.exp(v)) for k, v in tempered.items()}
    else:
        target = power_distribution(target_logp, params["alpha"])
    samples = _independent_runs(method, lm, n, lambda: StopStringConstraint(lm.tokenizer, STOPS), **params)
    tv, bound = _tv(samples, target, n)
    assert tv <= bound, f"{method}: TV {tv:.4f} above the exact-sampler bound {bound:.4f}"


def test_the_transformers_path_honours_stop_strings(tiny_hf):
    """Batched rows, the KV cache pool and cut re-feeding on a real transformers model small enough to enumerate;
    the stop string is read through FunctionLM's id-joining tokenizer (the tiny model has no text vocabulary)."""
    import torch

    from powersampling.backends.hf import TransformersLM

    lm = TransformersLM(tiny_hf, None, name="tiny")

    def exact_logits(prefix):
        with torch.no_grad():
            return tiny_hf(torch.tensor([list(prefix)])).logits[0, -1].double().numpy()

    reference = FunctionLM(6, 0, exact_logits)
    prompt, max_new, alpha, chains, stops = [1, 3], 3, 2.0, 1000, ("2 2", "5")
    logp = enumerate_with_stops(reference, prompt, max_new, stops)
    assert any(k[-1] == 5 and len(k) < max_new for k in logp)
    target = power_distribution(logp, alpha)
    bound = exact_sampler_tv_quantile(target, chains, quantile=0.999)
    constraint = StopStringConstraint(reference.tokenizer, stops)
    config = PowerSamplingConfig(alpha=alpha, max_new_tokens=max_new, n_mcmc=8, block_size=1, n_chains=chains, seed=5)
    result = PowerSampler(lm, config).sample(prompt, constraint=constraint)
    tv = total_variation(empirical(c.token_ids for c in result.samples), target)
    assert tv <= bound, f"TV {tv:.4f} above {bound:.4f}"


def test_a_stop_string_ends_the_run_and_is_reported_as_a_stop(lm):
    constraint = StopStringConstraint(lm.tokenizer, STOPS)
    for method in ("power", "smc", "scalable-power", "sample", "greedy"):
        for seed in range(30):
            result = build_sampler(method, lm, max_new_tokens=MAX_NEW, seed=seed).sample(PROMPT, constraint=constraint)
            if _ends_at_stop(lm.tokenizer, result.token_ids, STOPS):
                break
        else:
            pytest.fail(f"{method}: no run ended at a stop string")
        assert result.metadata["stopped_by"] == "eos" and result.metadata["complete"], method
        text, found = constraint.truncate(result.text)
        assert found and not any(s in text for s in STOPS) and result.text.startswith(text), method


def test_a_stop_string_across_real_tokens_finishes_at_the_token_that_completes_it():
    """The SmolLM2 tokenizer: "\\n\\nQuestion:" spans several tokens, and the state finishes exactly at the token
    whose text completes it, whatever token boundaries the text has; the text before it is what is returned."""
    from powersampling.backends.tokenizers import HFTokenizer
    from test_planner_helpers import smol_tokenizer

    tok = HFTokenizer(smol_tokenizer())
    text = "The answer is 42. Thé café\n\nQuestion: what next?"
    ids = tok.encode(text)
    constraint = StopStringConstraint(tok, ["\n\nQuestion:", "never"])
    state = constraint.start([])
    finished_at = None
    for i, token in enumerate(ids):
        state.advance(token)
        if state.is_finished():
            finished_at = i
            break
    assert finished_at is not None
    assert "\n\nQuestion:" in tok.decode(ids[: finished_at + 1])
    assert "\n\nQuestion:" not in tok.decode(ids[:finished_at])
    assert constraint.truncate(tok.decode(ids[: finished_at + 1])) == ("The answer is 42. Thé café", True)
    # restarted from any cut, the rule is the same
    assert not constraint.start(ids[:finished_at]).is_finished()
    assert constraint.start(ids[: finished_at + 1]).is_finished()
