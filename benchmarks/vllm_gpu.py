"""Power sampling against plain sampling on the vLLM backend, over a batch of prompts, in one command.

    python benchmarks/vllm_gpu.py [--model PATH] [--prompts 64] [--max-new-tokens 256] [--out FILE.json]

Sized for one H200 in under five minutes with engine start (defaults: the embedded SmolLM2-135M-Instruct, 64
prompts, 256 new tokens, alpha 4, MH with 4 steps after each 64-token block, SMC with 8 particles). Every method
draws one completion per prompt; the prompts run concurrently (one thread each) and the vLLM backend decodes all
their rows in shared engine steps, so each method is measured as a batch, the way a server would run it.

Methods: ``plain`` (temperature 1), ``power-sorted`` and ``power-random`` (MH, the two scans), ``smc`` (when the
SMC sampler is registered). Reported per method: wall time, tokens decoded (every draw, MH proposals and SMC
particles included), final tokens, decoded and final tokens/s, wall time and token count relative to plain,
acceptance rate, engine steps and scoring-prefill tokens (the backend's log p pass). EOS is ignored by default so
every completion has exactly ``--max-new-tokens`` tokens and the ratios compare equal lengths.

A time budget (``--budget-s``, default 270 s from the start, engine load included) is checked before each method:
a method whose predicted wall time (plain's wall time x its expected token ratio) does not fit is skipped and
named in the report; a watchdog writes what has been measured and exits 3 if the budget is overrun by 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
    "did Natalia sell altogether in April and May?",
    "A baker makes 3 batches of 24 muffins and sells all but 7. How many muffins did she sell?",
    "Tom reads 12 pages on Monday and twice as many on Tuesday. How many pages has he read in total?",
    "A train travels 180 km in 2 hours and then 150 km in 3 hours. What is its average speed for the whole trip?",
    "Sara has 5 boxes with 14 pencils each. She gives away 23 pencils. How many pencils does she have left?",
    "The sum of three consecutive integers is 72. What is the largest of them?",
    "A shirt costs $40 and is discounted by 15%. What is the sale price?",
    "If 4 workers build a wall in 9 days, how many days do 6 workers need at the same rate?",
    "A rectangle has a perimeter of 30 cm and a length of 9 cm. What is its area?",
    "John is twice as old as Mary. In 5 years the sum of their ages will be 40. How old is Mary now?",
    "A tank holds 250 liters and leaks 8 liters per hour. How many liters are left after 12 hours?",
    "What is the remainder when 2^10 is divided by 7?",
    "A class has 18 girls and 12 boys. What fraction of the class are boys, in lowest terms?",
    "A car uses 6 liters of fuel per 100 km. How much fuel does it need for 350 km?",
    "Lisa saves $15 a week. How many weeks does she need to save $200?",
    "The angles of a triangle are in the ratio 2:3:4. What is the largest angle in degrees?",
]


def prompts_text(n: int) -> list[str]:
    return [f"{QUESTIONS[i % len(QUESTIONS)]} Think step by step. (Problem {i + 1})" for i in range(n)]


def expected_token_ratio(method: str, args) -> float:
    """Tokens decoded per final token, ignoring EOS: what a method costs relative to plain sampling."""
    if method in ("power-sorted", "power-random"):
        blocks = -(-args.max_new_tokens // args.block_size)
        # after block k, each of n_mcmc proposals regenerates k*block/2 tokens on average (uniform cut)
        return 1.0 + args.n_mcmc * (blocks + 1) / 4.0
    if method == "smc":
        return float(args.particles)
    return 1.0


def build(method: str, lm, args, seed: int):
    from powersampling.samplers import build_sampler

    common = {"max_new_tokens": args.max_new_tokens, "seed": seed}
    if method == "plain":
        return build_sampler("sample", lm, temperature=1.0, **common)
    if method.startswith("power-"):
        return build_sampler(
            "power",
            lm,
            alpha=args.alpha,
            n_mcmc=args.n_mcmc,
            block_size=args.block_size,
            scan=method.split("-", 1)[1],
            **common,
        )
    if method == "smc":
        return build_sampler(
            "smc", lm, alpha=args.alpha, n_particles=args.particles, resample_every=args.block_size, **common
        )
    raise ValueError(method)


def run_method(method: str, lm, prompt_ids: list[list[int]], args) -> dict:
    samplers = [build(method, lm, args, args.seed + i) for i in range(len(prompt_ids))]
    steps0, scored0 = lm.engine_steps, lm.scored_tokens
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(prompt_ids)) as pool:
        results = list(pool.map(lambda job: job[0].sample(job[1]), zip(samplers, prompt_ids)))
    wall = time.perf_counter() - start
    decoded = sum(int(r.metadata.get("tokens_generated", len(r.token_ids))) for r in results)
    final = sum(len(r.token_ids) for r in results)
    rates = [r.metadata["acceptance_rate"] for r in results if "acceptance_rate" in r.metadata]
    return {
        "wall_s": wall,
        "tokens_decoded": decoded,
        "final_tokens": final,
        "decoded_tokens_per_s": decoded / wall,
        "final_tokens_per_s": final / wall,
        "acceptance_rate": float(np.mean(rates)) if rates else None,
        "engine_steps": lm.engine_steps - steps0,
        "scoring_prefill_tokens": lm.scored_tokens - scored0,
        "example": results[0].text[:300],
    }


def machine_info() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
    except Exception:  # the report is still useful without it
        pass
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except Exception:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--n-mcmc", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=["plain", "power-sorted", "power-random", "smc"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-eos", action="store_true", help="let completions stop at EOS (lengths then differ)")
    ap.add_argument("--budget-s", type=float, default=270.0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / torch.compile (faster start)")
    ap.add_argument("--out", default="benchmarks/results/vllm_gpu.json")
    args = ap.parse_args()
    started = time.perf_counter()

    report: dict = {"settings": vars(args), "machine": machine_info(), "results": {}, "skipped": {}}

    def write() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))

    def watchdog() -> None:
        report["aborted"] = f"over the time budget ({args.budget_s:.0f} s + 30 s); partial results"
        write()
        print(report["aborted"], flush=True)
        os._exit(3)

    timer = threading.Timer(args.budget_s + 30.0, watchdog)
    timer.daemon = True
    timer.start()

    from powersampling.backends.vllm_backend import load_vllm
    from powersampling.samplers import available_methods, prompt_ids

    model = args.model
    if model is None:
        from powersampling.backends.embedded import embedded_model_dir

        model = str(embedded_model_dir())
    engine_kwargs = {
        "dtype": args.dtype,
        "tensor_parallel_size": args.tensor_parallel_size,
        "enforce_eager": args.enforce_eager,
        "seed": args.seed,
    }
    if args.gpu_memory_utilization is not None:
        engine_kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    if args.max_model_len is not None:
        engine_kwargs["max_model_len"] = args.max_model_len
    t = time.perf_counter()
    lm = load_vllm(model, **engine_kwargs)
    report["load_s"] = time.perf_counter() - t
    report["model"] = lm.name
    if not args.keep_eos:
        lm.stop_token_ids = frozenset()
    ids = [prompt_ids(lm, text) for text in prompts_text(args.prompts)]
    report["prompt_tokens"] = [len(p) for p in ids]

    warm = argparse.Namespace(**{**vars(args), "max_new_tokens": 8})
    run_method("plain", lm, ids[: min(4, len(ids))], warm)

    plain_wall = None
    for method in args.methods:
        if method == "smc" and "smc" not in available_methods():
            report["skipped"][method] = "the SMC sampler is not registered in this version"
            continue
        left = args.budget_s - (time.perf_counter() - started)
        predicted = plain_wall * expected_token_ratio(method, args) if plain_wall else 0.0
        if left <= 0 or predicted > left:
            report["skipped"][method] = f"predicted {predicted:.0f} s, {max(left, 0):.0f} s of the budget left"
            continue
        result = run_method(method, lm, ids, args)
        report["results"][method] = result
        if method == "plain":
            plain_wall = result["wall_s"]
        print(
            f"{method}: {result['wall_s']:.1f} s, {result['tokens_decoded']} tokens decoded "
            f"({result['decoded_tokens_per_s']:.0f}/s), {result['final_tokens']} final "
            f"({result['final_tokens_per_s']:.0f}/s)"
            + (f", acceptance {result['acceptance_rate']:.0%}" if result["acceptance_rate"] is not None else ""),
            flush=True,
        )
        write()
    plain = report["results"].get("plain")
    if plain:
        for result in report["results"].values():
            result["wall_ratio_vs_plain"] = result["wall_s"] / plain["wall_s"]
            result["token_ratio_vs_plain"] = result["tokens_decoded"] / max(1, plain["tokens_decoded"])
    report["total_s"] = time.perf_counter() - started
    timer.cancel()
    write()
    print(f"load {report['load_s']:.0f} s, total {report['total_s']:.0f} s; written {args.out}")


if __name__ == "__main__":
    main()
