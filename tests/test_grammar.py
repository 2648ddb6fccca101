"""The xgrammar JSON-schema constraint: states from any prefix, masks that only admit valid JSON, and a random
model that still produces schema-valid plans on every route (the output-length bound makes it always finish)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from powersampling.backends.base import ContinuationRequest
from powersampling.backends.constraints import JsonSchemaConstraint
from powersampling.errors import CapabilityError, ConfigError
from powersampling.planner.schema import TaskListSpec, max_output_tokens, parse_task_list, task_list_schema
from powersampling.samplers import build_sampler, prompt_ids
from test_planner_helpers import smol_tokenizer

SPEC = TaskListSpec(
    min_tasks=2,
    max_tasks=3,
    max_dependencies=2,
    description_max_chars=24,
    tools=("Image Search", "Translator"),
    ask_atomic=True,
)


@pytest.fixture(scope="module")
def tiny_smol():
    """A random 2-layer Llama over the real SmolLM2 tokenizer: real transformers code, arbitrary logits."""
    from test_server_openai import tiny_smol_model

    return tiny_smol_model()


def _constraint():
    tok = smol_tokenizer()
    return JsonSchemaConstraint(tok, task_list_schema(SPEC), vocab_size=len(tok), stop_token_ids=[2])


def test_state_from_any_prefix_matches_step_by_step_advance():
    tok = smol_tokenizer()
    constraint = _constraint()
    text = (
        '{"tasks": [{"id": 1, "description": "Find cat photos", "call": {"tool": "Image Search", "arguments": {}}, '
        '"dependencies": [], "atomic": true}, {"id": 2, "description": "Translate captions", "call": {"tool": '
        '"Translator", "arguments": {}}, "dependencies": [1], "atomic": true}]}'
    )
    ids = tok.encode(text, add_special_tokens=False)
    walker = constraint.start([])
    for cut, token in enumerate(ids):
        fresh = constraint.start(ids[:cut])
        np.testing.assert_array_equal(fresh.allowed_tokens(), walker.allowed_tokens())
        assert walker.allowed_tokens()[token]
        walker.advance(token)
    assert np.flatnonzero(walker.allowed_tokens()).tolist() == [2]  # complete: only the stop token
    assert not walker.is_finished()
    walker.advance(2)
    assert walker.is_finished() and not walker.allowed_tokens().any()
    assert constraint.accepts(ids) and not constraint.accepts(ids[:-3])


def test_schema_rules_are_enforced_and_bad_prefixes_rejected():
    tok = smol_tokenizer()
    constraint = _constraint()
    for bad in (
        '{"tasks": [{"id": 2',
        '{"tasks": [{"id": 1, "description": "   spaces first"',
        '{"tasks": [{"id": 1, "description": "Find cat photos", "call": {"tool": "Web"',
        '{"tasks": [{"id": 1, "description": "Find cat photos", "call": {"tool": "Translator", "arguments": '
        '{}}, "dependencies": [1',
    ):
        with pytest.raises(ValueError, match="does not match"):
            constraint.start(tok.encode(bad, add_special_tokens=False))
    with pytest.raises(ConfigError):
        JsonSchemaConstraint(tok, {"type": "array", "items": {"enum": []}}, vocab_size=len(tok), stop_token_ids=[2])


def test_compiled_grammars_are_cached():
    a, b = _constraint(), _constraint()
    assert a.compiled is b.compiled


def test_model_without_hf_tokenizer_is_refused(toy_lm):
    with pytest.raises(CapabilityError):
        JsonSchemaConstraint.for_model(toy_lm, {"type": "object"})


@pytest.mark.parametrize(
    "method,params",
    [
        ("sample", {"temperature": 1.0}),
        ("power", {"alpha": 2.0, "n_mcmc": 1, "block_size": 48}),
        ("best-of-n", {"n": 2, "temperature": 1.0}),
    ],
)
def test_random_model_gives_schema_valid_output_on_every_route(tiny_smol, method, params):
    # small bounds keep the random model's (always maximal) strings short
    spec = TaskListSpec(
        min_tasks=2,
        max_tasks=2,
        description_min_chars=4,
        description_max_chars=10,
        task_types=("search", "write"),
        tools=SPEC.tools,
        ask_atomic=False,
    )
    constraint = JsonSchemaConstraint.for_model(tiny_smol, task_list_schema(spec))
    bound = max_output_tokens(spec)
    sampler = build_sampler(method, tiny_smol, max_new_tokens=bound, seed=0, **params)
    result = sampler.sample(prompt_ids(tiny_smol, "Plan something"), constraint=constraint)
    assert result.token_ids[-1] == 2, "the answer always finishes within the bound"
    assert len(result.token_ids) <= bound
    tasks = parse_task_list(result.text, spec)
    assert len(tasks) == 2 and all(t["tool"] in {tool.name for tool in spec.tools} for t in tasks)
    assert tasks[1]["dependencies"] in ([], [1])
    json.loads(result.text)


def test_masked_logprobs_are_renormalized_over_allowed_tokens(tiny_smol):
    """Under a mask, log p of each drawn token is the model's log-probability renormalized over allowed tokens."""
    import torch

    constraint = JsonSchemaConstraint.for_model(tiny_smol, task_list_schema(SPEC))
    ids = prompt_ids(tiny_smol, "Plan")
    cont = tiny_smol.sample(
        [ContinuationRequest(ids, 12, generated_start=len(ids), constraint=constraint)], 1.0, np.random.default_rng(0)
    )[0]
    with torch.no_grad():
        logits = tiny_smol.hf_model(torch.tensor([ids + cont.token_ids])).logits[0].double()
    for i, token in enumerate(cont.token_ids):
        allowed = torch.as_tensor(constraint.start(cont.token_ids[:i]).allowed_tokens())
        row = logits[len(ids) - 1 + i].masked_fill(~allowed, float("-inf"))
        assert cont.logp[i] == pytest.approx(float(torch.log_softmax(row, -1)[token]), abs=2e-4)
