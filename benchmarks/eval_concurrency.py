"""Problems in flight: `powersampling eval --concurrency N` against a local server process, N = 1, 4, 8.

The server is the vLLM-wire stand-in of the test-suite (tests/test_remote_backend.py run as a script: a tiny random
Llama behind FastAPI, full-vocabulary log-probabilities); the model is reached through the remote backend with the
test-suite's 40-token word tokenizer. The wall time of the same evaluation (GSM8K prompts, sample and power) is
measured at each N, and the rows are checked to be the same as the sequential run's.

Usage: python benchmarks/eval_concurrency.py [--problems 16] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    import powersampling as ps
    from powersampling.eval.results import read_rows
    from powersampling.eval.runner import run_eval
    from test_remote_backend import free_port, start_server, stop_server, wait_for
    from test_remote_cli import WORDS

    port = free_port()
    server = start_server([sys.executable, str(TESTS / "test_remote_backend.py"), str(port)])
    rows_by_level, walls = {}, {}
    try:
        wait_for(f"http://127.0.0.1:{port}/raw-full/v1/models", server)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = _word_tokenizer(Path(tmp) / "tokenizer", WORDS)
            lm = ps.load_model(f"http://127.0.0.1:{port}/raw-full", tokenizer=str(tokenizer))
            for level in [int(x) for x in args.levels.split(",")]:
                out = Path(tmp) / f"n{level}"
                started = time.perf_counter()
                run_eval(
                    "gsm8k",
                    ["sample", "power"],
                    args.problems,
                    lm,
                    out,
                    alpha=2.0,
                    n_mcmc=4,
                    block_size=4,
                    max_new_tokens=16,
                    seed=0,
                    style="fewshot",
                    shots=0,
                    concurrency=level,
                    progress=False,
                    write_report=False,
                )
                walls[level] = time.perf_counter() - started
                rows_by_level[level] = [
                    (r["problem_id"], r["method"], r["text"]) for r in read_rows(out / "results.jsonl")
                ]
                print(f"concurrency {level}: {walls[level]:.1f} s", file=sys.stderr)
    finally:
        stop_server(server)
    first = min(walls)
    result = {
        "problems": args.problems,
        "methods": ["sample", "power"],
        "wall_s": {str(k): v for k, v in walls.items()},
        "speedup_vs_1": {str(k): walls[first] / v for k, v in walls.items()},
        "same_rows_as_sequential": all(rows == rows_by_level[first] for rows in rows_by_level.values()),
        "server": "tests/test_remote_backend.py stand-in (tiny random Llama, vLLM wire format), same machine",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_concurrency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def _word_tokenizer(folder: Path, words: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from test_remote_backend import STOP

    vocab = {"<eos>": STOP, "<bos>": 1, "<unk>": 2} | {w: i for i, w in enumerate(words, start=3)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    ).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
