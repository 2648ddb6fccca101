"""benchmarks/gpu_check.py --dry-run: the GPU check's code paths on the CPU, so the script cannot rot between the
runs on a machine with a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    # a separate process: the dry run sets torch's thread count, which must not leak into other tests
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[gpu_check" in done.stderr  # progress goes to stderr
    report = json.loads(out.read_text())
    assert report["complete"] and report["dry_run"] and report["errors"] == []
    settings = report["settings"]
    assert any("one sampler call at a time" in note for note in report["notes"])
    assert report["modules_loaded_outside_gpu_list"] == []

    exact = report["exactness"]
    for dtype in ("float32", "bfloat16"):
        section = exact[dtype]
        assert _positive(section["tv_bound_q999"])
        assert section["proposal_tv"] > 0  # the proposal is a different distribution from the target
        assert len(section["runs"]) == len(settings["exact_settings"])
        for run in section["runs"]:
            assert 0 <= run["tv"] <= 1 and isinstance(run["within_bound"], bool)
            assert run["tv_over_bound"] == run["tv"] / run["tv_bound_q999"]
        variance = section["batch_variance"]
        assert set(variance["max_abs_logprob_diff"]) == {
            "backend_alone",
            "backend_alone_cached",
            "backend_batched",
            "backend_batched_cached",
            "raw_incremental_cache",
        }
        assert 0 <= variance["max_abs_overall"] < 1
    verdict = exact["bf16_verdict"]
    assert isinstance(verdict["bf16_breaks_tv_bound"], bool) and verdict["verdict"]
    assert 0 <= exact["target_tv_bfloat16_vs_float32"] <= 1

    max_new = settings["max_new_tokens"]
    for name in ("qwen2.5-1.5b", "qwen2.5-7b"):
        model = report["speed"][name]
        assert 0 <= model["batch_variance_bf16"]["max_abs_overall"] < 1
        assert model["single"]["prompts_requested"] == 1
        assert model["multi"]["prompts_planned"] == settings["prompts"]  # the dry run's budget pays for all
        for pass_name in ("single", "multi"):
            rows = model[pass_name]["methods"]
            assert list(rows) == ["plain", "mh-random", "mh-sorted", "smc", "scalable"]
            for method, row in rows.items():
                assert row["prompts_done"] == model[pass_name].get("prompts_planned", 1)
                # EOS is off: every method returns full-length completions
                assert row["final_tokens"] == max_new * row["prompts_done"]
                for key in (
                    "wall_s",
                    "tokens_per_s",
                    "wall_ratio_to_plain",
                    "realized_depth",
                    "wall_over_realized_depth",
                ):
                    assert _positive(row[key]), (name, pass_name, method, key, row.get(key))
            assert rows["plain"]["tokens_generated"] == max_new * rows["plain"]["prompts_done"]
            assert rows["plain"]["wall_ratio_to_plain"] == 1.0
            for method in ("mh-random", "mh-sorted"):
                blocks = math.ceil(max_new / settings["block_size"])
                bound = sum(min((b + 1) * settings["block_size"], max_new) for b in range(blocks)) + max_new
                assert rows[method]["depth_bound"] == bound
                assert _positive(rows[method]["wall_over_depth_bound"])
            # a sorted-scan block costs at most its longest proposal: the realized depth stays under the bound
            assert rows["mh-sorted"]["realized_depth"] <= rows["mh-sorted"]["depth_bound"]
