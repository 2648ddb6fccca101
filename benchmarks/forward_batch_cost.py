"""What one decode step costs for 1, 4 and 8 rows on this machine: the floor under batched proposals and particles.

    python benchmarks/forward_batch_cost.py [--threads 1] [--steps 40] [--context 60]

On a GPU a decode step costs about the same for 1 or 16 rows; on a CPU it does not, and that ratio bounds what SMC
(8 particles decoded as 8 rows) and MH's batched proposals can reach against a plain sample. Measures the embedded
model's forward pass through transformers with a KV cache, one new token per row per step, in process CPU time
(less sensitive to other jobs than wall time), twice. Prints the per-step cost and its ratio to one row.
"""

from __future__ import annotations

import argparse
import time

import torch


def step_cost(model, rows: int, steps: int, context: int) -> float:
    """Mean CPU seconds of one cached decode step over ``rows`` rows after a ``context``-token prefill."""
    ids = torch.randint(100, 1000, (rows, context))
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        token = ids[:, -1:]
        started = time.process_time()
        for _ in range(steps):
            cache = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).past_key_values
        return (time.process_time() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--context", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from powersampling import load_model

    model = load_model(None, backend="transformers").hf_model
    for _ in range(2):
        one, four, eight = (step_cost(model, rows, args.steps, args.context) for rows in (1, 4, 8))
        print(
            f"decode step, CPU time: 1 row {one * 1000:.1f} ms, 4 rows {four * 1000:.1f} ms ({four / one:.2f}x), "
            f"8 rows {eight * 1000:.1f} ms ({eight / one:.2f}x)"
        )


if __name__ == "__main__":
    main()
