"""Exact target distributions for models small enough to enumerate, and the statistics to compare a sampler to them.

Used by the test-suite and available to anyone who wants to check a sampler: enumerate every completion of a
``FunctionLM`` (or any model whose ``logits(prefix)`` can be called), form p^alpha exactly, and ask whether a
sampler's empirical distribution is within the spread an exact sampler would show with the same sample count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .backends.decoding import temperature_logprobs


def enumerate_completions(model, prompt: Sequence[int], max_new_tokens: int) -> dict[tuple[int, ...], float]:
    """Every completion (ending in a stop token, or reaching ``max_new_tokens``) with its log p under the model."""
    out: dict[tuple[int, ...], float] = {}

    def walk(generated: tuple[int, ...], logp: float) -> None:
        if len(generated) == max_new_tokens or (generated and generated[-1] in model.stop_token_ids):
            out[generated] = logp
            return
        lp, _ = temperature_logprobs(model.logits(list(prompt) + list(generated)), 1.0)
        for tok in np.flatnonzero(np.isfinite(lp)):
            walk(generated + (int(tok),), logp + float(lp[tok]))

    walk((), 0.0)
    return out


def power_distribution(logps: dict[tuple[int, ...], float], alpha: float) -> dict[tuple[int, ...], float]:
    """p^alpha normalized over the given completions."""
    keys = list(logps)
    w = alpha * np.array([logps[k] for k in keys])
    w = np.exp(w - w.max())
    w /= w.sum()
    return dict(zip(keys, w.tolist()))


def tokenwise_tempered_distribution(model, prompt: Sequence[int], max_new_tokens: int, alpha: float):
    """The distribution of per-token low-temperature sampling (softmax(alpha*logits) at every step): the proposal,
    NOT the power target. Returned to show that a test can tell the two apart."""
    out: dict[tuple[int, ...], float] = {}

    def walk(generated: tuple[int, ...], logq: float) -> None:
        if len(generated) == max_new_tokens or (generated and generated[-1] in model.stop_token_ids):
            out[generated] = float(np.exp(logq))
            return
        _, lq = temperature_logprobs(model.logits(list(prompt) + list(generated)), 1.0 / alpha)
        for tok in np.flatnonzero(np.isfinite(lq)):
            walk(generated + (int(tok),), logq + float(lq[tok]))

    walk((), 0.0)
    return out


def empirical(samples: Iterable[Sequence[int]]) -> dict[tuple[int, ...], float]:
    counts = Counter(tuple(s) for s in samples)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def total_variation(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def exact_sampler_tv_quantile(
    target: dict[tuple[int, ...], float], n_samples: int, quantile: float = 0.99, replicates: int = 2000, seed: int = 0
) -> float:
    """The ``quantile`` of TV(empirical, target) for an exact sampler drawing ``n_samples`` i.i.d. completions:
    the sampling-noise bound a correct sampler stays under (with probability ``quantile``)."""
    rng = np.random.default_rng(seed)
    probs = np.array(list(target.values()))
    counts = rng.multinomial(n_samples, probs, size=replicates)
    tvs = 0.5 * np.abs(counts / n_samples - probs).sum(axis=1)
    return float(np.quantile(tvs, quantile))


def random_table_model(vocab: int = 4, eos: int = 0, max_len: int = 5, scale: float = 0.6, seed: int = 3):
    """A small enumerable ``FunctionLM``: next-token logits random but fixed per prefix, EOS forced once the prefix
    (prompt included) reaches ``max_len`` tokens, so every completion is finite and lengths differ. The test-suite
    and the bias-against-cost benchmark use it as the model whose p^alpha is known exactly."""
    from .backends.function import FunctionLM

    rng = np.random.default_rng(seed)
    table: dict[tuple[int, ...], np.ndarray] = {}

    def next_token_logprobs(prefix):
        if prefix not in table:
            logits = rng.normal(size=vocab) * scale
            if len(prefix) >= max_len:
                logits = np.full(vocab, -np.inf)
                logits[eos] = 0.0
            table[prefix] = logits
        return table[prefix]

    return FunctionLM(vocab, eos, next_token_logprobs, name="random-table")


def mode_hiding_model(seed: int = 0, vocab: int = 4, eos: int = 0, max_len: int = 5, later_scale: float = 0.8):
    """A small enumerable ``FunctionLM`` whose p^alpha mode the per-token low-temperature proposal hides.

    The first generated token is a favourite (p about 0.55-0.7) or, less likely (p about 0.15-0.2), an immediate
    EOS; after any other first token the model is nearly flat (logits ~ N(0, ``later_scale``), EOS 1 lower), so
    every longer completion has small p. Raised to alpha = 4, the one-token completion [EOS] holds most of p^alpha
    (0.64-0.95 for seeds 0-5), while the proposal at temperature 1/alpha starts it with probability about
    (0.18 / 0.64)^4, under 1.2%: a sampler must revisit the first token many times, or propose it from a flatter
    distribution, to find the mode.

    Logits are fixed per prefix by ``seed`` and the prefix (independent of query order); EOS is forced once the
    prefix (prompt included) reaches ``max_len`` tokens. The prompt is assumed to be one token, as in [1].
    """
    if vocab < 3:
        raise ValueError("mode_hiding_model needs a vocabulary of at least 3 tokens (EOS, a favourite, another)")

    def logits(prefix, rng):
        if len(prefix) == 1:  # the first generated token
            favourite = 1 + int(rng.integers(vocab - 1))
            probs = np.empty(vocab)
            probs[favourite] = rng.uniform(0.55, 0.7)
            probs[eos] = rng.uniform(0.15, 0.2)
            others = [t for t in range(vocab) if t not in (favourite, eos)]
            probs[others] = rng.dirichlet(np.ones(len(others))) * (1.0 - probs[favourite] - probs[eos])
            return np.log(probs)
        flat = rng.normal(size=vocab) * later_scale  # EOS a little less likely: no short completion competes
        flat[eos] -= 1.0
        return flat

    return _seeded_table_model(logits, seed, vocab, eos, max_len, f"mode-hiding-{seed}")


def mixed_confidence_model(
    seed: int = 0, vocab: int = 4, eos: int = 0, max_len: int = 6, sure: float = 0.6, sure_scale: float = 4.0
):
    """A small enumerable ``FunctionLM`` whose positions differ in confidence, as a language model's do: after each
    prefix, with probability ``sure`` the next-token logits are ~ N(0, ``sure_scale``) (nearly deterministic, low
    entropy), otherwise ~ N(0, 0.6) (flat, entropy near log ``vocab``). Fixed per prefix by ``seed`` and the prefix;
    EOS is forced once the prefix (prompt included) reaches ``max_len`` tokens. The model on which cut laws that
    follow entropy can differ from uniform ones."""

    def logits(prefix, rng):
        return rng.normal(size=vocab) * (sure_scale if rng.random() < sure else 0.6)

    return _seeded_table_model(logits, seed, vocab, eos, max_len, f"mixed-confidence-{seed}")


def _seeded_table_model(logits, seed: int, vocab: int, eos: int, max_len: int, name: str):
    """A ``FunctionLM`` whose next-token logits are ``logits(prefix, rng)``, with ``rng`` seeded by ``seed`` and the
    prefix (so independent of query order) and each prefix's answer kept; EOS is forced once the prefix (prompt
    included) reaches ``max_len`` tokens."""
    from .backends.function import FunctionLM

    table: dict[tuple[int, ...], np.ndarray] = {}

    def next_token_logprobs(prefix):
        if prefix not in table:
            if len(prefix) >= max_len:
                table[prefix] = np.full(vocab, -np.inf)
                table[prefix][eos] = 0.0
            else:
                table[prefix] = logits(prefix, np.random.default_rng([seed, len(prefix), *prefix]))
        return table[prefix]

    return FunctionLM(vocab, eos, next_token_logprobs, name=name)


def hidden_mode(model, prompt: Sequence[int], max_new_tokens: int, alpha: float) -> dict:
    """p^alpha's mode, its target mass, and the probability the per-token proposal at 1/alpha draws it."""
    target = power_distribution(enumerate_completions(model, prompt, max_new_tokens), alpha)
    proposal = tokenwise_tempered_distribution(model, prompt, max_new_tokens, alpha)
    mode = max(target, key=target.get)
    return {
        "mode": list(mode),
        "target_mass": target[mode],
        "proposal_probability": proposal.get(mode, 0.0),
        "low_temperature_tv": total_variation(proposal, target),
    }


def tiny_random_llama():
    """A 2-layer random Llama with a 6-token vocabulary (token 0 is EOS), built in float32 on the CPU from seed 0:
    the real transformers code paths on a model small enough to enumerate. Weights are scaled up from the init so
    the distribution is far from uniform. Needs torch and transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=6,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=0,
        bos_token_id=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return model.eval()


def sampler_tv(
    method: str,
    model,
    prompt: Sequence[int],
    max_new_tokens: int,
    alpha: float,
    n_samples: int,
    seed: int = 0,
    **params,
) -> dict:
    """Draw ``n_samples`` independent completions with a registered method and measure them against the exact
    p^alpha: the total variation, the decoded tokens per sample, and the 99% TV quantile an exact sampler shows at
    the same sample count (the noise floor)."""
    from .samplers import build_sampler, method_spec

    target = power_distribution(enumerate_completions(model, prompt, max_new_tokens), alpha)
    samples, decoded = [], 0
    spec = method_spec(method)
    if spec.independent_chains:  # independent chains are the rows of one run
        chains = {spec.chains_field: n_samples}
        result = build_sampler(
            method, model, alpha=alpha, max_new_tokens=max_new_tokens, seed=seed, **chains, **params
        ).sample(list(prompt))
        samples = [c.token_ids for c in result.samples]
        decoded = result.metadata["tokens_generated"]
    else:
        sampler_seed = np.random.SeedSequence(seed)
        for child in sampler_seed.spawn(n_samples):
            result = build_sampler(
                method,
                model,
                alpha=alpha,
                max_new_tokens=max_new_tokens,
                seed=int(child.generate_state(1)[0]),
                **params,
            ).sample(list(prompt))
            samples.append(result.token_ids)
            decoded += result.metadata["tokens_generated"]
    return {
        "method": method,
        "params": params,
        "samples": n_samples,
        "tv": total_variation(empirical(samples), target),
        "tokens_per_sample": decoded / n_samples,
        "exact_noise_q99": exact_sampler_tv_quantile(target, n_samples, 0.99, seed=seed),
    }
