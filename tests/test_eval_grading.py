"""Graders on real benchmark records (gold answers pass, corrupted answers fail) and on hand-made cases."""

from __future__ import annotations

import re

import pytest

from powersampling.errors import ConfigError
from powersampling.eval import load_problems
from powersampling.eval.grading import (
    extract_code,
    extract_gsm8k_answer,
    grade_gsm8k,
    grade_math,
    grade_program,
    humaneval_program,
    math_answers_equal,
    mbpp_program,
    normalize_math,
    truncate_at_stops,
)


@pytest.fixture(scope="module")
def gsm8k():
    return load_problems("gsm8k", limit=60)


@pytest.fixture(scope="module")
def math500():
    return load_problems("math500")


def _grade(program: str):
    # these tests are about grading: they use OS isolation where it works and run without it where it does not
    # (the sandbox itself, and the refusal without isolation, are tested in test_eval_sandbox.py)
    return grade_program(program, unsafe=True)


def test_datasets_have_their_published_sizes():
    assert [len(load_problems(t)) for t in ("gsm8k", "math500", "humaneval", "mbpp")] == [1319, 500, 164, 500]
    assert load_problems("gsm8k", limit=2, offset=5)[0].index == 5
    with pytest.raises(ConfigError, match="unknown task"):
        load_problems("gpqa")
    with pytest.raises(ConfigError, match="past the end"):
        load_problems("humaneval", offset=164)


# GSM8K


@pytest.mark.parametrize(
    "text, number",
    [
        ("So the answer is 9 * $2 = $18.", "18"),  # the answer sentence works the calculation out
        ("The answer is 16 - 3 - 4 = 9 eggs. 9 x 2 = 18", "9"),  # only the answer sentence's own chain counts
        ("answer is -3 - 2 = -5.", "-5"),
        ("So the answer is 1,000.", "1,000"),
        ("the answer is 12. 12 = 3 * 4", "12"),  # a new sentence is not the answer's calculation
        ("the answer is 2 hours = 120 minutes", "2"),  # words break the chain
    ],
)
def test_the_answer_sentence_gives_the_number(text, number):
    assert extract_gsm8k_answer(text)[0] == number


def test_gsm8k_gold_solutions_pass_and_off_by_one_fails(gsm8k):
    for p in gsm8k:
        assert grade_gsm8k(p.reference, p.fields["solution"]).correct, p.problem_id
        wrong = str(int(p.reference) + 1)
        assert not grade_gsm8k(p.reference, f"Some work. So the answer is {wrong}.").correct
    # the few-shot answer style, without '####'
    first = gsm8k[0]
    assert first.reference == "18"
    assert grade_gsm8k("18", "She sells 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. So the answer is 18.").correct


@pytest.mark.parametrize(
    "text, expected, rule",
    [
        ("#### 1,234", "1,234", "####"),
        ("so 3 + 4 = 7. The answer is $1,234.00.", "1,234.00", "answer is"),
        ("The answer is 18. Then 5 more people came.", "18", "answer is"),
        ("the final answer: 42", "42", "answer is"),
        ("We get \\boxed{-7}", "-7", "boxed"),
        ("He has 5 apples and buys 3, so 8", "8", "last number"),
        ("I do not know", None, "no number"),
    ],
)
def test_gsm8k_extraction(text, expected, rule):
    assert extract_gsm8k_answer(text) == (expected, rule)


def test_gsm8k_numeric_comparison():
    assert grade_gsm8k("1234", "The answer is 1,234.").correct
    assert grade_gsm8k("18", "The answer is $18.00").correct
    assert not grade_gsm8k("18", "The answer is 17, not 18... wait").correct  # the stated answer wins
    assert not grade_gsm8k("18", "no idea").correct
    assert grade_gsm8k("-3", "The answer is -3.").correct


# MATH500


def test_math500_gold_boxes_pass_and_other_problems_answers_fail(math500):
    for p in math500[:120]:
        assert grade_math(p.reference, p.fields["solution"]).correct, p.problem_id
    # pair each problem with a later problem whose answer is numerically different
    checked = 0
    for p, q in zip(math500[:60], math500[200:260]):
        if re.fullmatch(r"-?\d+", p.reference) and re.fullmatch(r"-?\d+", q.reference) and p.reference != q.reference:
            assert not grade_math(p.reference, f"Thus $\\boxed{{{q.reference}}}$.").correct
            checked += 1
    assert checked >= 10


def test_math500_reference_comes_from_the_solution_box_not_the_garbled_field(math500):
    assert math500[0].reference == "\\left( 3, \\frac{\\pi}{2} \\right)"


@pytest.mark.parametrize("use_math_verify", [True, False])
@pytest.mark.parametrize(
    "gold, pred, equal",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}", True),
        ("\\frac{2}{3}", "\\frac{3}{2}", False),
        ("5", "x = 5", True),
        ("10\\%", "10", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("3\\pi", "9.42", False),
        ("\\text{(B)}", "(B)", True),
        ("7", "8", False),
    ],
)
def test_math_equivalence_both_paths(gold, pred, equal, use_math_verify):
    assert math_answers_equal(gold, pred, use_math_verify=use_math_verify)[0] is equal


def test_math_verify_handles_tuples():
    assert math_answers_equal("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)")[0]
    assert not math_answers_equal("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi)")[0]


def test_math_extraction_uses_last_box_and_minerva_sentence():
    g = grade_math("4", "First \\boxed{3}, no wait: \\boxed{4}.")
    assert g.correct and g.extracted == "4"
    assert grade_math("\\frac{1}{4}", "Final Answer: The final answer is $\\frac14$. I hope").correct
    g = grade_math("4", "the answer is four")
    assert not g.correct and g.extracted is None
    assert normalize_math("\\left(1,2\\right)") == "(1,2)"


# code


def test_truncate_and_extract_code():
    assert truncate_at_stops("abc\n\nQuestion: x", ("Question:", "\n\n")) == "abc"
    assert truncate_at_stops("abc", ("zzz",)) == "abc"
    reply = "Sure!\n```python\ndef f():\n    return 1\n```\nand\n```\nother\n```"
    assert extract_code(reply) == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("def g(): pass") == "def g(): pass"
    assert extract_code("```python\ndef h():\n    return 2") == "def h():\n    return 2"  # unterminated block


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail():
    problems = load_problems("humaneval", limit=4)
    for p in problems:
        f = p.fields
        good = humaneval_program(f["prompt"], p.reference, f["test"], f["entry_point"], chat=False)
        assert _grade(good).correct, p.problem_id
        bad = humaneval_program(f["prompt"], "    return None\n", f["test"], f["entry_point"], chat=False)
        assert not _grade(bad).correct, p.problem_id
        chat_reply = f"Here it is:\n```python\n{f['prompt']}{p.reference}```\nHope this helps."
        restated = humaneval_program(f["prompt"], chat_reply, f["test"], f["entry_point"], chat=True)
        assert _grade(restated).correct, p.problem_id


def test_a_candidate_that_exits_early_does_not_pass():
    p = load_problems("humaneval", limit=1)[0]
    f = p.fields
    cheat = "    import sys\n    sys.exit(0)\n"
    program = humaneval_program(f["prompt"], cheat + p.reference, f["test"], f["entry_point"], chat=False)
    # the function only exits when called, i.e. inside check(): the program never reaches its end, so
    # the wrapper never reports the pass token
    assert not _grade(program).correct
    assert not _grade("import os\nos._exit(0)\n" + program).correct


def test_mbpp_reference_solutions_pass_and_swapped_solutions_fail():
    problems = load_problems("mbpp", limit=5)
    for p, other in zip(problems, problems[1:] + problems[:1]):
        f = p.fields
        assert _grade(mbpp_program(p.reference, f["tests"], f["setup"], chat=False)).correct, p.problem_id
        assert not _grade(mbpp_program(other.reference, f["tests"], f["setup"], chat=False)).correct
        reply = f"```python\n{p.reference}\n```"
        assert _grade(mbpp_program(reply, f["tests"], f["setup"], chat=True)).correct
