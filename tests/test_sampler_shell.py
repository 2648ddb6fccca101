"""The sampler shell (``Sampler.sample``): one seed, deadline, selection order and metadata for every method,
and a new method that supplies only its run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from powersampling.backends.base import ContinuationRequest
from powersampling.exactness import random_table_model
from powersampling.samplers import build_sampler
from powersampling.samplers.base import Output, RunOutcome, SampleCall, Sampler, declare_method
from powersampling.samplers.config import BestOfNConfig
from powersampling.samplers.result import Completion

COMMON_KEYS = {
    "method",
    "route",
    "seed",
    "tokens_generated",
    "final_tokens",
    "cost_multiplier",
    "backend_calls",
    "latency_ms",
    "stopped_by",
    "complete",
    "selected_by",
    "quality_score",
    "evaluator_calls",
    "evaluator_errors",
    "constrained",
}


@declare_method("shortest-of-n", BestOfNConfig, summary="n samples, the shortest returned (a test method)")
class ShortestOfN(Sampler):
    """A method written against the shell: it draws n samples and names the shortest as its own pick."""

    def run(self, call: SampleCall) -> RunOutcome:
        cfg = self.config
        request = ContinuationRequest(call.prompt, cfg.max_new_tokens, generated_start=len(call.prompt))
        conts = self.model.sample([request] * cfg.n, cfg.temperature, call.rng, deadline=call.deadline.end)
        outputs = []
        for cont in conts:
            text = self._decode(cont.token_ids)
            score = call.tracker.score(tuple(cont.token_ids), text)
            call.tracker.offer(tuple(cont.token_ids), text, None)
            completion = Completion(list(cont.token_ids), text, float(cont.logp.sum()), cont.stopped, score)
            outputs.append(Output(completion, np.asarray(cont.logp), cont.stopped))
        best = max(range(len(outputs)), key=lambda i: outputs[i].completion.quality_score or -np.inf)
        return RunOutcome(
            outputs,
            default=min(range(len(conts)), key=lambda i: len(conts[i])),
            default_rule="shortest",
            tokens_generated=sum(len(c) for c in conts),
            backend_calls=1,
            by_evaluator=outputs[best] if call.tracker.best_score is not None else None,
            metadata={"lengths": [len(c) for c in conts]},
        )


def test_a_method_that_supplies_only_its_run_gets_the_seed_selection_and_metadata():
    lm = random_table_model(vocab=5, max_len=8)
    result = ShortestOfN(lm, BestOfNConfig(n=6, max_new_tokens=6, seed=3)).sample([1, 2])
    md = result.metadata
    assert set(md) >= COMMON_KEYS and md["method"] == result.method == "shortest-of-n" and md["route"] == "baseline"
    assert md["selected_by"] == "shortest" and len(result.token_ids) == min(md["lengths"])
    assert md["tokens_generated"] == sum(md["lengths"]) and md["seed"] == 3
    again = ShortestOfN(lm, BestOfNConfig(n=6, max_new_tokens=6, seed=3)).sample([1, 2])
    assert again.token_ids == result.token_ids and [c.token_ids for c in again.samples] == [
        c.token_ids for c in result.samples
    ]

    def evaluator(text: str) -> float:
        return float(text.count("3"))

    scored = ShortestOfN(lm, BestOfNConfig(n=6, max_new_tokens=6, seed=3), evaluator).sample([1, 2])
    assert scored.metadata["selected_by"] == "evaluator"
    assert scored.metadata["quality_score"] == max(evaluator(c.text) for c in scored.samples) == evaluator(scored.text)


@pytest.mark.parametrize(
    "method, params",
    [
        ("best-of-n", {"n": 5}),
        ("power", {"n_chains": 5, "n_mcmc": 2, "block_size": 2}),
        ("smc", {"n_particles": 5}),
    ],
)
def test_every_method_selects_in_one_order_and_records_a_vote_without_a_winner(method, params):
    lm = random_table_model(vocab=5, max_len=8)
    common = dict(max_new_tokens=6, seed=0, alpha=1.0, **params)  # alpha: ignored by best-of-n
    voted = build_sampler(method, lm, select="majority", answer_extractor=lambda text: text[:1] or None, **common)
    result = voted.sample([1, 2])
    assert result.metadata["selected_by"] == "majority"
    assert result.metadata["vote"]["winner"] == result.text[:1]
    # an extractor that finds no answer: the vote is held and recorded, and the next rule picks
    no_answers = build_sampler(method, lm, select="majority", answer_extractor=lambda text: None, **common)
    unvoted = no_answers.sample([1, 2])
    assert unvoted.metadata["vote"] == {"votes": {}, "voters": 0, "winner": None}
    plain = build_sampler(method, lm, **common).sample([1, 2])
    assert unvoted.metadata["selected_by"] == plain.metadata["selected_by"] != "majority"
    assert unvoted.token_ids == plain.token_ids


def test_the_shell_does_not_import_the_registry():
    """The registry imports every sampler module; base.py importing it back would make a circle."""
    base = Path(__file__).parents[1] / "src" / "powersampling" / "samplers" / "base.py"
    imported = {node.module for node in ast.walk(ast.parse(base.read_text())) if isinstance(node, ast.ImportFrom)}
    assert "registry" not in imported and not any(m and m.endswith(".registry") for m in imported)


def test_a_declared_sampler_registers_and_builds_by_name():
    """In a child process: registering a method is for the life of the process."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_sampler_shell import ShortestOfN
from powersampling.exactness import random_table_model
from powersampling.samplers import build_sampler, method_names, register_method

register_method(ShortestOfN.spec)
sampler = build_sampler("shortest-of-n", random_table_model(vocab=5, max_len=8), n=3, max_new_tokens=4, seed=1)
result = sampler.sample([1, 2])
assert isinstance(sampler, ShortestOfN) and "shortest-of-n" in method_names(), method_names()
assert result.metadata["method"] == "shortest-of-n" and result.metadata["n"] == 3, result.metadata
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_sampler_class_that_runs_no_method_is_refused():
    class Undeclared(Sampler):
        pass

    with pytest.raises(TypeError, match="declare_method"):
        Undeclared(random_table_model())
