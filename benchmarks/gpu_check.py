"""One GPU check of the transformers backend: every method's speed against plain sampling on random-weight models
shaped like Qwen2.5-1.5B and Qwen2.5-7B, and MH's exactness on an enumerable model in float32 and bfloat16, written
to one JSON file (progress lines on stderr).

    bash benchmarks/gpu_check.sh --out $OUT/gpu_check.json          # on the GPU machine (pydantic from .whl/)
    PYTHONPATH=src python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json   # CPU, tiny, < 1 minute

Sections, in the order they run (docs/gpu.md says what every number means):

* ``exactness``: a 2-layer random Llama with a 6-token vocabulary (the test-suite's ``tiny_hf``), in each dtype on
  the device. p^alpha is enumerated from the model evaluated in that dtype, one prefix at a time without a cache;
  MH runs thousands of chains through ``TransformersLM`` (batched rows, prefix KV cache) and its empirical
  distribution is compared with the 99.9% TV quantile of an exact sampler. ``batch_variance`` measures how far the
  backend's next-token log-probs move when the same prefix is evaluated inside a batch or from the KV cache.
* ``speed``: per model, a single-prompt pass and a multi-prompt pass of every method (plain sample, MH random and
  sorted scan, Power-SMC, scalable power sampling) on random prompts, EOS switched off so every method decodes its
  full length. Wall time, decoded tokens per second, the ratio to plain, and for MH the ratio to its sequential
  depth bound.

Only the multi-prompt pass adapts to ``--budget-s``: every method runs the same first ``prompts_planned`` prompts,
as many as the model's share of the time left pays for at the single-pass cost, and no prompt starts after the
budget's end (``prompts_done`` says what ran). Everything else always runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# Qwen2.5 shapes from the published configs (vocabularies differ: 151936 for 1.5B, 152064 for 7B).
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
# the same code paths on a CPU in seconds: two layers, a hundred tokens
DRY_SHAPES: dict[str, dict[str, Any]] = {
    name: dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100 + i,
        tie_word_embeddings=shape["tie_word_embeddings"],
    )
    for i, (name, shape) in enumerate(MODEL_SHAPES.items())
}

METHODS = ("plain", "mh-random", "mh-sorted", "smc", "scalable")

# Sizes: (full run, --dry-run). A flag given on the command line wins over both.
SIZES: dict[str, tuple[Any, Any]] = {
    "max_new_tokens": (96, 8),
    "prompt_tokens": (64, 8),
    "prompts": (16, 2),
    "n_mcmc": (10, 2),
    "block_size": (16, 4),
    "particles": (8, 2),
    "top_k": (8, 2),
    "rollouts": (4, 2),
    # Scalable power sampling decodes 1 + horizon forward passes per token, one token after the other; on a GPU
    # the top_k x rollouts rows of a pass cost about what one row costs, so the horizon alone sets its wall time.
    # 8 instead of the paper-like 16 halves it (96 x 9 passes) and keeps the run inside its five minutes.
    "horizon": (8, 2),
    "chains": (3000, 200),
    "budget_s": (240.0, 60.0),
}

# MH settings checked against the enumerated p^alpha in every dtype, as scan:n_mcmc:block_size
EXACT_SETTINGS = ("random:8:1", "sorted:8:1")
EXACT_PROMPT = [1, 3]

NOTES = [
    "Weights are random (no download): speeds are those of the real shapes, acceptance rates are not those of "
    "trained models.",
    "EOS is switched off (empty stop set), so every method decodes its full max_new_tokens.",
    "The transformers backend decodes one sampler call at a time: the multi-prompt pass runs its prompts one after "
    "another through the same sampler, so its wall time is the sum of single-prompt calls (no batching across "
    "prompts); the rows inside one call (MH proposals, chains, particles, rollouts) are batched.",
    "MH depth_bound (per prompt) = sum over blocks of the block's length limit (the longest proposal: a cut at 0) "
    "+ max_new_tokens (the block extensions); wall_over_depth_bound = MH wall / (plain's seconds per token x "
    "depth_bound). The issue's target is within 1.2x on a GPU.",
    "The multi-prompt pass runs the first prompts_planned of prompts_requested prompts through every method: as "
    "many as the model's share of --budget-s pays for at the single-pass cost.",
    "realized_depth = forward passes the backend made per prompt (a call costs as many passes as its longest "
    "row); wall_over_realized_depth compares the wall time with plain's seconds per forward pass times that depth.",
]


_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[gpu_check {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="torch device (default cuda; cpu with --dry-run)")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: the same code paths in seconds")
    ap.add_argument("--models", nargs="+", choices=list(MODEL_SHAPES), default=list(MODEL_SHAPES))
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="plain always runs: the ratios are to it",
    )
    ap.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=["float32", "bfloat16"],
        help="dtypes of the exactness section",
    )
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-exactness", action="store_true")
    ap.add_argument("--alpha", type=float, default=4.0, help="alpha of the speed section")
    ap.add_argument("--exact-alpha", type=float, default=2.0)
    ap.add_argument("--exact-max-new-tokens", type=int, default=3)
    ap.add_argument(
        "--exact-settings",
        nargs="+",
        default=list(EXACT_SETTINGS),
        metavar="SCAN:N_MCMC:BLOCK",
        help="MH settings of the exactness section (e.g. random:8:2 adds a two-token block)",
    )
    ap.add_argument(
        "--exact-cache-tokens",
        type=int,
        default=256,
        help="prefix-cache pool of the exactness backend. The pool's prefix lookup scans every entry "
        "for every row: thousands of chains against the default 16384-token pool spend their time "
        "in that Python scan, while with a 6-token vocabulary 256 tokens already hold the prefixes "
        "the rows share (the same reused-token count)",
    )
    ap.add_argument("--seed", type=int, default=0)
    for name, (full, dry) in SIZES.items():
        ap.add_argument(
            f"--{name.replace('_', '-')}", type=type(full), default=None, help=f"default {full} ({dry} with --dry-run)"
        )
    args = ap.parse_args(argv)
    for name, (full, dry) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, dry if args.dry_run else full)
    if args.device is None:
        args.device = "cpu" if args.dry_run else "cuda"
    if "plain" not in args.methods:
        args.methods = ["plain", *args.methods]
    return args


class Report:
    """The JSON written after every measurement, so a run cut short keeps what it measured."""

    def __init__(self, path: str, data: dict) -> None:
        self.path, self.data = Path(path), data

    def failed(self, where: str, exc: BaseException) -> None:
        """A part that raised is recorded and the rest still runs: one device session is all a run may get."""
        import traceback

        self.data.setdefault("errors", []).append(
            {
                "where": where,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-8)[-4000:],
            }
        )
        log(f"{where}: FAILED {type(exc).__name__}: {exc}")
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_jsonable))
        tmp.replace(self.path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def environment(device) -> dict:
    import numpy as np
    import pydantic
    import torch
    import transformers

    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "pydantic": pydantic.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        env.update(
            cuda=torch.version.cuda,
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
        )
    return env


def release(device) -> None:
    """Free what a finished (or failed) part left on the device before the next one allocates."""
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# exactness


def tiny_llama(device, dtype):
    """The test-suite's ``tiny_hf`` (``exactness.tiny_random_llama``): built in float32 on the CPU from seed 0, then
    moved, so both dtypes hold the same model up to rounding."""
    from powersampling.exactness import tiny_random_llama

    return tiny_random_llama().to(device=device, dtype=dtype).eval()


class AloneReference:
    """``logits(prefix)`` for the enumerator: the HF model in its own dtype on one prefix, no cache, no batch."""

    def __init__(self, hf_model, stop_token_ids) -> None:
        self.hf_model = hf_model
        self.stop_token_ids = frozenset(stop_token_ids)
        self.device = next(hf_model.parameters()).device

    def logits(self, prefix):
        import torch

        with torch.inference_mode():
            ids = torch.tensor([list(prefix)], device=self.device)
            return self.hf_model(input_ids=ids).logits[0, -1].double().cpu().numpy()


def batch_variance(hf_model, rng, prefix_len: int, trials: int = 4, others: int = 7) -> dict:
    """How far the backend's next-token log-probs for one prefix move from the model evaluated on that prefix
    alone (no batch, no cache): inside a batch of other rows of other lengths (left-padded), from the prefix KV
    cache (only the last token fed), both, and with the raw model fed its last tokens one at a time through a
    cache. Max absolute difference over the vocabulary, and its mean weighted by p."""
    import numpy as np
    import torch
    from transformers.cache_utils import DynamicCache

    from powersampling.backends.base import ContinuationRequest
    from powersampling.backends.decoding import log_softmax
    from powersampling.backends.hf import TransformersLM

    lm = TransformersLM(hf_model, None, name="batch-variance")
    lm.stop_token_ids = frozenset()
    reference = AloneReference(hf_model, ())
    vocab = lm.vocab_size
    worst: dict[str, float] = {}
    weighted: dict[str, float] = {}

    def record(key: str, ref: np.ndarray, got: np.ndarray) -> None:
        diff = np.abs(got - ref)
        p = np.exp(ref)
        worst[key] = max(worst.get(key, 0.0), float(diff.max()))
        weighted[key] = max(weighted.get(key, 0.0), float((p * diff).sum()))

    with torch.inference_mode():
        for _ in range(trials):
            prefix = rng.integers(0, vocab, size=prefix_len).tolist()
            ref = log_softmax(reference.logits(prefix))
            mine = ContinuationRequest(prefix, 1)
            crowd = [
                ContinuationRequest(rng.integers(0, vocab, size=int(n)).tolist(), 1)
                for n in rng.integers(max(1, prefix_len // 2), 2 * prefix_len + 1, size=others)
            ]
            at = int(rng.integers(0, others + 1))
            batch = [*crowd[:at], mine, *crowd[at:]]

            lm.clear_cache()
            record("backend_alone", ref, lm.next_token_logprobs([mine])[0])
            # the call above left the prefix in the pool: the same request now feeds only its last token
            record("backend_alone_cached", ref, lm.next_token_logprobs([mine])[0])
            record("backend_batched_cached", ref, lm.next_token_logprobs(batch)[at])
            lm.clear_cache()
            record("backend_batched", ref, lm.next_token_logprobs(batch)[at])
            lm.clear_cache()

            # raw model: the prompt half at once, then one token per pass through a DynamicCache
            ids = torch.tensor([prefix], device=lm.device)
            split = max(1, prefix_len // 2)
            cache = DynamicCache()
            positions = torch.arange(prefix_len, device=lm.device)[None, :]
            mask = torch.ones(1, prefix_len, dtype=torch.long, device=lm.device)
            logits, cache = lm.forward(ids[:, :split], mask[:, :split], positions[:, :split], cache)
            for t in range(split, prefix_len):
                logits, cache = lm.forward(ids[:, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], cache)
            record("raw_incremental_cache", ref, log_softmax(logits[0].double().cpu().numpy()))
    return {
        "prefix_tokens": prefix_len,
        "trials": trials,
        "batch_rows": others + 1,
        "max_abs_logprob_diff": worst,
        "p_weighted_abs_logprob_diff": weighted,
        "max_abs_overall": max(worst.values()),
    }


def exactness(args, device, report: Report) -> None:
    from powersampling.exactness import total_variation

    section = report.data.setdefault("exactness", {})
    section["settings"] = {
        "model": "random 2-layer Llama, vocab 6, hidden 32, weights x8, seed 0",
        "prompt": EXACT_PROMPT,
        "alpha": args.exact_alpha,
        "max_new_tokens": args.exact_max_new_tokens,
        "chains": args.chains,
        "cache_tokens": args.exact_cache_tokens,
        "tv_bound": "exact_sampler_tv_quantile q=0.999",
        "mh_settings": args.exact_settings,
    }
    targets = {}
    for dtype_name in args.dtypes:
        try:
            target = exactness_dtype(args, device, report, section, dtype_name)
        except Exception as exc:
            report.failed(f"exactness {dtype_name}", exc)
            release(device)
            continue
        targets[dtype_name] = target
    if "float32" in targets and "bfloat16" in targets:
        section["target_tv_bfloat16_vs_float32"] = total_variation(targets["bfloat16"], targets["float32"])
    section["bf16_verdict"] = bf16_verdict(section)
    report.save()


def exactness_dtype(args, device, report: Report, section: dict, dtype_name: str) -> dict:
    """Enumerated p^alpha, MH runs and batch variance in one dtype; returns the target."""
    import numpy as np
    import torch

    from powersampling.backends.hf import TransformersLM
    from powersampling.exactness import (
        empirical,
        enumerate_completions,
        exact_sampler_tv_quantile,
        power_distribution,
        tokenwise_tempered_distribution,
        total_variation,
    )
    from powersampling.samplers import build_sampler

    dtype = getattr(torch, dtype_name)
    model = tiny_llama(device, dtype)
    lm = TransformersLM(model, None, name=f"tiny-{dtype_name}", cache_tokens=args.exact_cache_tokens)
    reference = AloneReference(model, lm.stop_token_ids)
    logps = enumerate_completions(reference, EXACT_PROMPT, args.exact_max_new_tokens)
    target = power_distribution(logps, args.exact_alpha)
    bound = exact_sampler_tv_quantile(target, args.chains, quantile=0.999)
    low_temp = tokenwise_tempered_distribution(reference, EXACT_PROMPT, args.exact_max_new_tokens, args.exact_alpha)
    entry = section.setdefault(dtype_name, {})
    entry.update(completions=len(target), tv_bound_q999=bound, proposal_tv=total_variation(low_temp, target), runs=[])
    for setting in args.exact_settings:
        scan, n_mcmc, block = setting.split(":")
        n_mcmc, block = int(n_mcmc), int(block)
        lm.clear_cache()
        start = time.perf_counter()
        result = build_sampler(
            "power",
            lm,
            alpha=args.exact_alpha,
            max_new_tokens=args.exact_max_new_tokens,
            n_mcmc=n_mcmc,
            block_size=block,
            n_chains=args.chains,
            scan=scan,
            seed=args.seed + 11,
        ).sample(EXACT_PROMPT)
        synchronize(device)
        wall = time.perf_counter() - start
        tv = total_variation(empirical(c.token_ids for c in result.samples), target)
        entry["runs"].append(
            {
                "scan": scan,
                "n_mcmc": n_mcmc,
                "block_size": block,
                "tv": tv,
                "tv_bound_q999": bound,
                "tv_over_bound": tv / bound,
                "within_bound": tv <= bound,
                "acceptance_rate": result.metadata["acceptance_rate"],
                "wall_s": wall,
            }
        )
        log(
            f"exactness {dtype_name} {scan} n_mcmc={n_mcmc} block={block}: TV {tv:.4f} "
            f"(bound {bound:.4f}) in {wall:.1f} s"
        )
        report.save()
    entry["batch_variance"] = batch_variance(model, np.random.default_rng(args.seed), prefix_len=5)
    log(f"exactness {dtype_name}: batch variance max |d log p| {entry['batch_variance']['max_abs_overall']:.3g}")
    report.save()
    del lm, model
    release(device)
    return target


def bf16_verdict(section: dict) -> dict:
    def all_within(name: str) -> bool | None:
        runs = section.get(name, {}).get("runs")
        return None if not runs else all(r["within_bound"] for r in runs)

    f32, bf16 = all_within("float32"), all_within("bfloat16")
    if bf16 is None:
        text = "bfloat16 not measured"
    elif bf16:
        text = "bfloat16 stays within the exact-sampler TV bound"
    elif f32 is False:
        text = "float32 also breaks the bound: the check, not bfloat16, is in question"
    else:
        text = "bfloat16 breaks the TV bound that float32 meets"
    return {
        "float32_within_bound": f32,
        "bfloat16_within_bound": bf16,
        "bf16_breaks_tv_bound": bool(bf16 is False and f32 is not False),
        "verdict": text,
    }


# speed


def qwen_shaped(shape: dict, device, dtype):
    """A random-weight Qwen2 causal LM of the given shape, built on the device, with no EOS."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **shape, max_position_embeddings=32768, eos_token_id=None, bos_token_id=None, pad_token_id=None
    )
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # transformers before 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    return model.to(device=device, dtype=dtype).eval()


def build(method: str, lm, args, max_new_tokens: int | None = None):
    from powersampling.samplers import build_sampler

    common = dict(max_new_tokens=max_new_tokens or args.max_new_tokens, seed=args.seed)
    power = dict(alpha=args.alpha, **common)
    if method == "plain":
        return build_sampler("sample", lm, temperature=1.0, **common)
    if method in ("mh-random", "mh-sorted"):
        return build_sampler(
            "power", lm, n_mcmc=args.n_mcmc, block_size=args.block_size, scan=method.removeprefix("mh-"), **power
        )
    if method == "smc":
        return build_sampler("smc", lm, n_particles=args.particles, **power)
    return build_sampler("scalable-power", lm, top_k=args.top_k, rollouts=args.rollouts, horizon=args.horizon, **power)


def mh_depth_bound(max_new_tokens: int, block_size: int) -> int:
    blocks = math.ceil(max_new_tokens / block_size)
    return sum(min((b + 1) * block_size, max_new_tokens) for b in range(blocks)) + max_new_tokens


def run_method(sampler, lm, prompts, device, deadline: float | None) -> dict:
    """The prompts one after another through one sampler; no new prompt once ``deadline`` (monotonic) is past,
    in case the single pass underestimated the cost."""
    lm.clear_cache()
    row: dict[str, Any] = dict(
        prompts_done=0, wall_s=0.0, tokens_generated=0, final_tokens=0, forward_passes=0, backend_calls=0
    )
    accept = []
    for prompt in prompts:
        if deadline is not None and time.monotonic() > deadline:
            break
        passes = lm.forward_passes
        synchronize(device)
        start = time.perf_counter()
        result = sampler.sample(prompt)
        synchronize(device)
        row["wall_s"] += time.perf_counter() - start
        md = result.metadata
        row["prompts_done"] += 1
        row["tokens_generated"] += md["tokens_generated"]
        row["final_tokens"] += len(result.token_ids)
        row["forward_passes"] += lm.forward_passes - passes
        row["backend_calls"] += md["backend_calls"]
        if "acceptance_rate" in md:
            accept.append(md["acceptance_rate"])
    if accept:
        row["acceptance_rates"] = accept
    return row


def summarize(rows: dict[str, dict], args) -> None:
    """Per-prompt rates and the ratios to plain, in place."""
    plain = rows["plain"]
    if not plain["prompts_done"]:
        return
    plain_per_prompt = plain["wall_s"] / max(1, plain["prompts_done"])
    plain_s_per_token = plain["wall_s"] / max(1, plain["tokens_generated"])
    plain_s_per_pass = plain["wall_s"] / max(1, plain["forward_passes"])
    bound = mh_depth_bound(args.max_new_tokens, args.block_size)
    for method, row in rows.items():
        n = row["prompts_done"]
        if n == 0:
            continue
        row["wall_s_per_prompt"] = row["wall_s"] / n
        row["tokens_per_s"] = row["tokens_generated"] / row["wall_s"]
        row["cost_multiplier"] = row["tokens_generated"] / max(1, row["final_tokens"])
        row["realized_depth"] = row["forward_passes"] / n
        row["ms_per_forward"] = 1000 * row["wall_s"] / max(1, row["forward_passes"])
        row["wall_ratio_to_plain"] = row["wall_s_per_prompt"] / plain_per_prompt
        row["wall_over_realized_depth"] = row["wall_s_per_prompt"] / (plain_s_per_pass * row["realized_depth"])
        if method.startswith("mh-"):
            row["depth_bound"] = bound
            row["wall_over_depth_bound"] = row["wall_s_per_prompt"] / (plain_s_per_token * bound)
        if row.get("acceptance_rates"):
            row["acceptance_rate_mean"] = sum(row["acceptance_rates"]) / len(row["acceptance_rates"])


def run_pass(name: str, pass_name: str, prompts, args, lm, device, report: Report, deadline: float | None):
    entry = report.data["speed"][name].setdefault(pass_name, {"prompts_requested": len(prompts)})
    rows: dict[str, dict] = {}
    entry["methods"] = rows
    for method in args.methods:
        try:
            rows[method] = run_method(build(method, lm, args), lm, prompts, device, deadline)
        except Exception as exc:
            rows[method] = {"prompts_done": 0, "error": f"{type(exc).__name__}: {exc}"}
            report.failed(f"{name} {pass_name} {method}", exc)
            release(device)
            continue
        summarize(rows, args)
        row = rows[method]
        log(
            f"{name} {pass_name} {method}: {row['prompts_done']} prompt(s) in {row['wall_s']:.1f} s, "
            f"{row.get('tokens_per_s', 0):.0f} tok/s, {row.get('wall_ratio_to_plain', float('nan')):.2f}x plain"
            + (f", {row['wall_over_depth_bound']:.2f}x depth bound" if "wall_over_depth_bound" in row else "")
        )
        report.save()
    return rows


def speed_model(name: str, args, device, report: Report, deadline: float, budget_end: float) -> None:
    """Both passes on one model; ``deadline`` ends this model's share of the budget (it sizes the multi-prompt
    pass), ``budget_end`` the whole budget (no prompt starts after it)."""
    import numpy as np
    import torch

    from powersampling.backends.hf import TransformersLM

    shapes = DRY_SHAPES if args.dry_run else MODEL_SHAPES
    entry = report.data["speed"].setdefault(name, {})
    entry["shape"] = shapes[name]
    build_start = time.perf_counter()
    model = qwen_shaped(shapes[name], device, torch.bfloat16)
    synchronize(device)
    entry["build_s"] = time.perf_counter() - build_start
    entry["parameters"] = sum(p.numel() for p in model.parameters())
    entry["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    lm = TransformersLM(model, None, name=name)
    lm.stop_token_ids = frozenset()  # belt and braces: the config has no EOS either
    log(f"{name}: built {entry['parameters'] / 1e9:.2f}B parameters in {entry['build_s']:.1f} s")

    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(0, lm.vocab_size, size=(args.prompts, args.prompt_tokens)).tolist()
    entry["batch_variance_bf16"] = batch_variance(
        model, np.random.default_rng(args.seed + 1), prefix_len=args.prompt_tokens, trials=2
    )
    for method in args.methods:  # warm-up: kernels chosen, caches allocated
        build(method, lm, args, max_new_tokens=min(4, args.max_new_tokens)).sample(prompts[0])
    report.save()

    single = run_pass(name, "single", prompts[:1], args, lm, device, report, deadline=None)
    # Every method gets the same prompts in the multi-prompt pass, as many as the model's share of the budget
    # pays for at the single-pass cost, so the ratios compare like with like.
    round_s = sum(row.get("wall_s", 0.0) for row in single.values())
    affordable = int(max(0.0, deadline - time.monotonic()) // round_s) if round_s > 0 else len(prompts)
    planned = min(len(prompts), affordable)
    entry["multi"] = {"prompts_requested": len(prompts), "prompts_planned": planned, "seconds_per_round": round_s}
    if planned:
        run_pass(name, "multi", prompts[:planned], args, lm, device, report, deadline=budget_end)
    else:
        log(
            f"{name} multi: skipped, {deadline - time.monotonic():.0f} s left of this model's budget share and "
            f"one prompt through every method takes {round_s:.0f} s"
        )
    report.save()
    del lm, model
    release(device)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    import torch

    device = torch.device(args.device)
    if args.dry_run:
        # tiny matrices gain nothing from threads, and on a busy machine each parallel region waits for a second
        # core: 100x slower per forward pass
        torch.set_num_threads(1)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --device cpu (or --dry-run)")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    report = Report(
        args.out,
        {
            "schema": 1,
            "dry_run": args.dry_run,
            "environment": environment(device),
            "settings": settings,
            "notes": NOTES,
            "complete": False,
            "errors": [],
        },
    )
    report.save()
    log(f"device {report.data['environment'].get('gpu', device)}; writing {args.out}")

    if not args.skip_exactness:
        exactness(args, device, report)
    if not args.skip_speed:
        report.data["speed"] = {}
        for i, name in enumerate(args.models):
            left = started + args.budget_s - time.monotonic()
            deadline = time.monotonic() + max(0.0, left) / (len(args.models) - i)
            try:
                speed_model(name, args, device, report, deadline, started + args.budget_s)
            except Exception as exc:
                report.failed(f"speed {name}", exc)
                release(device)
    report.data["modules_loaded_outside_gpu_list"] = sorted(
        m for m in ("fastapi", "xgrammar", "opentelemetry", "networkx", "uvicorn", "starlette") if m in sys.modules
    )
    report.data["total_s"] = time.monotonic() - started
    report.data["complete"] = True
    report.save()
    errors = len(report.data["errors"])
    log(f"done in {report.data['total_s']:.1f} s, {errors} error(s): {args.out}")
    return report.data


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(1 if main()["errors"] else 0)
