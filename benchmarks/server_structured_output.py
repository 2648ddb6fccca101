"""Structured output through the server: the JSON-schema validity rate of 20 requests per method (greedy,
low-temp, power) and the latency of a constrained power request against an unconstrained one of the same length.

    PYTHONPATH=src python benchmarks/server_structured_output.py [--embedded]

Default model: a random 2-layer Llama over the SmolLM2 tokenizer (fast; the grammar is what is measured);
``--embedded`` serves the embedded SmolLM2-135M-Instruct instead (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["ok", "color", "n"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedded", action="store_true")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    from powersampling.server import ServerSettings, create_app
    from powersampling.server.background import BackgroundServer

    if args.embedded:
        import powersampling

        model = powersampling.load_model()
    else:
        from test_server_openai import tiny_smol_model

        model = tiny_smol_model()
    name = model.name
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    power = {"n_mcmc": 2, "block_size": 8}
    with BackgroundServer(create_app(model, ServerSettings(request_timeout_s=600))) as server:

        def chat(seed: int, method: str, **fields):
            body = {
                "model": name,
                "messages": [{"role": "user", "content": "Give ok, a color and a number as JSON."}],
                "max_tokens": 40,
                "seed": seed,
                "method": method,
                **fields,
            }
            start = time.perf_counter()
            out = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=600).json()
            return out, time.perf_counter() - start

        for method in ("greedy", "low-temp", "power"):
            valid = finished = 0
            for seed in range(args.requests):
                out, _ = chat(seed, method, response_format=fmt, power_sampling=power if method == "power" else None)
                finished += out["choices"][0]["finish_reason"] == "stop"
                try:
                    jsonschema.validate(json.loads(out["choices"][0]["message"]["content"]), SCHEMA)
                    valid += 1
                except (ValueError, jsonschema.ValidationError):
                    pass
            # a completion the length cap cut is a prefix of a valid one, not a violation of the grammar
            print(f"{method}: {valid}/{args.requests} valid, {finished} finished before max_tokens")
        constrained, free = [], []
        for seed in range(5):
            out, seconds = chat(seed, "power", response_format=fmt, power_sampling=power)
            tokens = out["usage"]["completion_tokens"]
            constrained.append(seconds / max(out["power_sampling"]["tokens_generated"], 1))
            # the same number of new tokens, unconstrained: the stop token is unreachable only by the cap, so
            # compare per decoded token
            out, seconds = chat(seed, "power", max_tokens=tokens, power_sampling=power)
            free.append(seconds / max(out["power_sampling"]["tokens_generated"], 1))
        ratio = statistics.median(constrained) / statistics.median(free)
        print(
            f"power, per decoded token: constrained {1000 * statistics.median(constrained):.2f} ms, "
            f"unconstrained {1000 * statistics.median(free):.2f} ms, ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
