"""The executor on BFCL's multi-turn environments: fed the gold calls it reproduces the ground-truth states (BFCL's
own state checker and multi-turn checker judge), and every scoring starts from the entry's initial state."""

from __future__ import annotations

import pytest

from conftest import needs_module

needs_module("bfcl_eval", "pip install --no-deps bfcl-eval==2026.3.23")

from powersampling.agents import Executor
from powersampling.agents.bfcl import (
    Environment,
    call_text,
    check_multi_turn,
    compare_states,
    ground_truth_instances,
    load_multi_turn,
    parse_call,
)
from powersampling.agents.loop import result_text, run_calls


@pytest.fixture(scope="module")
def entries():
    return {item.id: item for item in load_multi_turn("multi_turn_base")}


def gold_decoded(item) -> list[list[list[str]]]:
    methods = Environment(item).methods
    return [[[call_text(*parse_call(text, methods)) for text in turn]] if turn else [] for turn in item.ground_truth]


# 0: file system and posting; 173: travel and tickets, where a gold call passes the string "ticket_001" to an
# integer parameter (BFCL runs it as Python does: the environment answers "not found"); 60: trading
@pytest.mark.parametrize("entry_id", ["multi_turn_base_0", "multi_turn_base_173", "multi_turn_base_60"])
def test_the_executor_replays_the_gold_calls_into_the_ground_truth_states(entries, entry_id):
    item = entries[entry_id]
    env = Environment(item)
    executor = Executor(env.tools(), max_concurrency=1, validate_arguments=False)
    decoded = []
    for turn, gold in enumerate(item.ground_truth, start=1):
        calls = [parse_call(text, env.methods) for text in gold]
        results = run_calls(executor, calls)
        assert [r.tool for r in results] == [name for name, _ in calls] and all(r.status == "ok" for r in results)
        assert compare_states(env.instances, ground_truth_instances(item, turn)) == {"valid": True}
        decoded.append([[call_text(name, arguments) for name, arguments in calls]])
    assert check_multi_turn(item, decoded) == {"valid": True}


def test_a_wrong_call_changes_the_state_and_the_checker_says_so(entries):
    item = entries["multi_turn_base_0"]
    env = Environment(item)
    executor = Executor(env.tools(), max_concurrency=1, validate_arguments=False)
    run_calls(executor, [("mkdir", {"dir_name": "elsewhere"})])
    assert not compare_states(env.instances, ground_truth_instances(item, 1))["valid"]
    decoded = gold_decoded(item)
    decoded[0] = [["mkdir(dir_name='elsewhere')"]]
    verdict = check_multi_turn(item, decoded)
    assert not verdict["valid"] and verdict["error_type"] == "multi_turn:instance_state_mismatch"


def test_scoring_is_isolated_between_samples(entries):
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    item = entries["multi_turn_base_0"]
    gold, wrong = gold_decoded(item), gold_decoded(item)
    wrong[0] = [["mkdir(dir_name='elsewhere')"]]
    # isolated: the same correct answers scored twice, after a wrong one, are correct both times
    assert [check_multi_turn(item, d)["valid"] for d in (wrong, gold, gold)] == [False, True, True]
    # what isolation prevents: under one reused model name BFCL's cached instances carry the wrong sample's state
    # into the next scoring, and the correct answers are judged wrong
    reused = "powersampling_reused_name_test"
    try:
        assert check_multi_turn(item, wrong, model_name=reused)["valid"] is False
        assert check_multi_turn(item, gold, model_name=reused)["valid"] is False
    finally:
        for key in [k for k in vars(multi_turn_utils) if k.startswith(reused)]:
            del vars(multi_turn_utils)[key]
    cached = [k for k in vars(multi_turn_utils) if k.startswith("powersampling")]
    assert cached == []  # isolated scorings leave no instances behind


def test_gold_calls_parse_with_positional_arguments_and_bad_ones_are_refused(entries):
    methods = Environment(entries["multi_turn_base_0"]).methods
    assert parse_call("sort('final_report.pdf')", methods) == ("sort", {"file_name": "final_report.pdf"})
    assert parse_call("ls(a=True)", methods) == ("ls", {"a": True})
    for bad in ("sort(", "os.system('x')", "nope()", "sort(*x)", "sort(name=open('f'))"):
        with pytest.raises(ValueError):
            parse_call(bad, methods)


def test_the_agent_loop_runs_a_models_calls_in_the_environment_and_feeds_back_the_results(entries):
    from powersampling.agents.loop import AgentLoop
    from test_server_openai import tiny_smol_model

    item = next(i for i in entries.values() if i.entry["involved_classes"] == ["TradingBot"])
    env = Environment(item)
    executor = Executor(env.tools(), max_concurrency=1, validate_arguments=False)
    # a random tiny model: "required" makes its one step a call (under "auto" it would mostly write text)
    loop = AgentLoop(tiny_smol_model(), executor, method="sample", max_steps=1, max_calls=1, choice="required")
    system = loop.messages[0]["content"]
    assert "You can call these tools" in system and all(f"- {name}(" in system for name in executor.tools)
    (step,) = loop.user_turn(item.entry["question"][0], seed=0)
    assert step.complete and len(step.calls) == 1 and step.calls[0]["name"] in env.methods
    (result,) = step.results
    assert result.tool == step.calls[0]["name"] and result.status in ("ok", "error")
    assert [m["role"] for m in loop.messages] == ["system", "user", "assistant", "tool"]
    assert loop.messages[-1]["content"] == result_text(result)
    decoded = [[[call_text(step.calls[0]["name"], step.calls[0]["arguments"])]]] + [[] for _ in item.ground_truth[1:]]
    verdict = check_multi_turn(item, decoded)  # the checker executes what the model called; the gold needs more
    assert verdict["valid"] is False and verdict["error_type"].startswith("multi_turn:")
