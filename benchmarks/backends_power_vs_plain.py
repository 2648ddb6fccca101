"""Power sampling against a plain sample on every local backend, on the embedded model, in one run.

    python benchmarks/backends_power_vs_plain.py [--backends transformers llama.cpp] [--variants random:1 sorted]

Settings: alpha=4, n_mcmc=10, block 16, 96 new tokens (the reference measurement in shared/docs/power-sampling.md:
the authors' implementation took 105 s here against 5.9 s for a plain sample, 17.7x). EOS is ignored so every
sample has exactly 96 tokens and the ratios compare equal lengths. Per backend: wall time and decoded tokens of
each power variant, as ratios to a plain sample on the same backend (timed before and after, to expose machine
noise), and the absolute speed-up over the authors' 105 s. JSON goes to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from powersampling import load_model
from powersampling.backends.loading import llama_cpp_available
from powersampling.samplers import PowerSampler, PowerSamplingConfig, SamplingConfig, TemperatureSampler, prompt_ids

PROMPT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May? Think step by step."
)
AUTHORS_POWER_S, AUTHORS_PLAIN_S = 105.0, 5.9


def local_backends() -> list[str]:
    return ["transformers"] + (["llama.cpp"] if llama_cpp_available() else [])


def measure(backend: str, args) -> dict:
    load_start = time.perf_counter()
    if backend == "llama.cpp":
        lm = load_model(None, backend=backend, n_threads=args.threads)
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        lm = load_model(None, backend=backend)
    load_s = time.perf_counter() - load_start
    lm.stop_token_ids = frozenset()  # equal lengths: every sample decodes exactly max_new_tokens
    ids = prompt_ids(lm, PROMPT)
    clear = getattr(lm, "clear_cache", lambda: None)

    def plain():
        clear()
        cfg = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
        start = time.perf_counter()
        result = TemperatureSampler(lm, cfg).sample(ids)
        return time.perf_counter() - start, result

    plain()  # warm-up
    plain_before, plain_result = plain()
    runs = {}
    for variant in args.variants:
        scan, _, width = variant.partition(":")
        clear()
        cfg = PowerSamplingConfig(
            alpha=args.alpha,
            n_mcmc=args.n_mcmc,
            block_size=args.block_size,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            scan=scan,
            proposal_batch=int(width) if width else None,
        )
        start = time.perf_counter()
        result = PowerSampler(lm, cfg).sample(ids)
        wall = time.perf_counter() - start
        runs[f"power_{scan}" + (f"_batch{width}" if width else "")] = {
            "wall_s": wall,
            "tokens_decoded": result.metadata["tokens_generated"],
            "final_tokens": len(result.token_ids),
            "acceptance_rate": result.metadata["acceptance_rate"],
            "backend_calls": result.metadata["backend_calls"],
            "speedup_vs_authors_105s": AUTHORS_POWER_S / wall,
        }
    plain_after, _ = plain()
    plain_s = float(np.mean([plain_before, plain_after]))
    plain_tokens = len(plain_result.token_ids)
    for run in runs.values():
        run["wall_ratio_vs_plain"] = run["wall_s"] / plain_s
        run["token_ratio_vs_plain"] = run["tokens_decoded"] / plain_tokens
        run["tokens_per_s"] = run["tokens_decoded"] / run["wall_s"]
    report = {
        "model": lm.name,
        "load_s": load_s,
        "plain": {
            "wall_s_before": plain_before,
            "wall_s_after": plain_after,
            "tokens": plain_tokens,
            "tokens_per_s": plain_tokens / plain_s,
        },
        "power": runs,
    }
    lm = None  # free the model before the next backend loads
    gc.collect()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=None, help="default: every installed local backend")
    ap.add_argument("--variants", nargs="+", default=["random:1", "sorted"], help="MH variants as scan[:batch]")
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--n-mcmc", type=int, default=10)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per backend (default: llama.cpp half the CPUs, torch its own choice)",
    )
    ap.add_argument("--out", default="benchmarks/results/backends_power_vs_plain.json")
    args = ap.parse_args()
    backends = args.backends or local_backends()
    results = {}
    for backend in backends:
        print(f"[{backend}] measuring ...", flush=True)
        results[backend] = report = measure(backend, args)
        plain = report["plain"]
        print(
            f"[{backend}] plain: {plain['wall_s_before']:.2f} s / {plain['wall_s_after']:.2f} s "
            f"({plain['tokens']} tokens, {plain['tokens_per_s']:.0f} tok/s)"
        )
        for name, run in report["power"].items():
            print(
                f"[{backend}] {name}: {run['wall_s']:.1f} s, {run['tokens_decoded']} tokens decoded, "
                f"wall x{run['wall_ratio_vs_plain']:.1f}, tokens x{run['token_ratio_vs_plain']:.1f}, "
                f"acceptance {run['acceptance_rate']:.0%}, {run['speedup_vs_authors_105s']:.1f}x faster than "
                "the authors' 105 s"
            )
    if "transformers" in results and "llama.cpp" in results:
        results["llama.cpp_vs_transformers_wall"] = {
            name: results["transformers"]["power"][name]["wall_s"] / run["wall_s"]
            for name, run in results["llama.cpp"]["power"].items()
            if name in results["transformers"]["power"]
        }
    out = {
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "settings": vars(args),
        "reference": {
            "authors_impl_power_s": AUTHORS_POWER_S,
            "authors_impl_plain_s": AUTHORS_PLAIN_S,
            "ratio": AUTHORS_POWER_S / AUTHORS_PLAIN_S,
        },
        "backends": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
