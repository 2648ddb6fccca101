"""Prompting and grading per task: few-shot text for base models, the chat template for instruct models.

Stop strings (few-shot prompts end a completion at the next "Question:") are enforced while decoding by
``backends.constraints.StopStringConstraint``, which masks nothing: the target of power sampling becomes p^alpha
over completions that end at the first stop string (the part that gets graded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .datasets import Problem, gsm8k_fewshot_examples, math_fewshot_examples
from .grading import (
    Grade,
    grade_gsm8k,
    grade_math,
    grade_program,
    gsm8k_vote_answer,
    humaneval_program,
    math_vote_answer,
    mbpp_program,
    truncate_at_stops,
)

STYLES = ("auto", "chat", "fewshot")

DEFAULT_MAX_NEW_TOKENS = {"gsm8k": 256, "math500": 512, "humaneval": 384, "mbpp": 384}  # taskbench: its grammar's bound


@dataclass(frozen=True)
class PromptPlan:
    ids: list[int]
    stops: tuple[str, ...]
    style: str  # "chat" or "fewshot"
    text: str  # the prompt as text (for the results file)
    constraint: Any = None  # a token constraint of its own (TaskBench's plan grammar) instead of stop strings


@dataclass(frozen=True)
class ExecLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    unsafe_exec: bool = False  # run generated code without OS isolation when none works (--unsafe-exec)


def resolve_style(style: str, model) -> str:
    if style not in STYLES:
        raise ConfigError(f"unknown prompt style {style!r}; choose one of: {', '.join(STYLES)}")
    if style != "auto":
        return style
    return "chat" if getattr(model.tokenizer, "has_chat_template", False) else "fewshot"


def _chat_ids(model, messages: list[dict[str, str]]) -> list[int]:
    try:
        return list(model.tokenizer.chat_prompt(messages))
    except ValueError as exc:
        raise ConfigError(f"model {model.name!r} cannot format a chat prompt ({exc}); use --style fewshot") from None


def _shots(examples, shots: int | None, default: int):
    k = default if shots is None else shots
    if k < 0:
        raise ConfigError(f"shots must be >= 0 (got {k})")
    return examples[:k]


GSM8K_INSTRUCTION = "Solve the problem step by step. End with the sentence 'So the answer is N.' where N is a number."
MATH_INSTRUCTION = "Solve the problem step by step. Put the final answer in \\boxed{}."
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one ```python code block."
)
MBPP_INSTRUCTION = "Write a Python function for the task. Reply with the code in one ```python code block."


# where a few-shot completion of an answer task ends: the next worked example starts (chat turns end by themselves)
FEWSHOT_STOPS = {"gsm8k": ("Question:", "\n\n"), "math500": ("\nProblem:", "I hope it is correct.")}


def build_prompt(problem: Problem, model, style: str, shots: int | None = None) -> PromptPlan:
    """The prompt for ``problem`` in ``style`` ('chat' or 'fewshot'; resolve 'auto' first)."""
    tok = model.tokenizer
    task = problem.task
    if task == "taskbench":
        return _taskbench_plan(problem, model, style)
    if task == "gsm8k":
        examples = gsm8k_fewshot_examples(problem.fields["fewshot_context"])
        if style == "chat":
            messages = []
            for ex in _shots(examples, shots, 0):
                messages += [
                    {"role": "user", "content": f"{ex.question}\n{GSM8K_INSTRUCTION}"},
                    {"role": "assistant", "content": ex.answer},
                ]
            messages.append({"role": "user", "content": f"{problem.question}\n{GSM8K_INSTRUCTION}"})
            return _chat_plan(model, messages, ())
        text = "".join(f"Question: {ex.question}\nAnswer: {ex.answer}\n\n" for ex in _shots(examples, shots, 8))
        return _text_plan(tok, text + f"Question: {problem.question}\nAnswer:", FEWSHOT_STOPS["gsm8k"])
    if task == "math500":
        examples = math_fewshot_examples(problem.fields["fewshot_context"])
        if style == "chat":
            messages = []
            for ex in _shots(examples, shots, 0):
                messages += [
                    {"role": "user", "content": f"{ex.question}\n\n{MATH_INSTRUCTION}"},
                    {"role": "assistant", "content": ex.answer},
                ]
            messages.append({"role": "user", "content": f"{problem.question}\n\n{MATH_INSTRUCTION}"})
            return _chat_plan(model, messages, ())
        text = "".join(f"Problem:\n{ex.question}\n\nSolution: {ex.answer}\n\n" for ex in _shots(examples, shots, 4))
        return _text_plan(tok, text + f"Problem:\n{problem.question}\n\nSolution:", FEWSHOT_STOPS["math500"])
    if task == "humaneval":
        prompt = problem.fields["prompt"]
        if style == "chat":
            content = f"{HUMANEVAL_INSTRUCTION}\n```python\n{prompt}```"
            return _chat_plan(model, [{"role": "user", "content": content}], ())
        return _text_plan(tok, prompt, ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"))
    if task == "mbpp":
        tests = "\n".join(problem.fields["tests"])
        if style == "chat":
            content = f"{problem.question}\nYour code should pass these tests:\n{tests}\n{MBPP_INSTRUCTION}"
            return _chat_plan(model, [{"role": "user", "content": content}], ())
        fewshot = problem.fields["fewshot_context"] if (shots is None or shots > 0) else ""
        return _text_plan(tok, f"{fewshot}{problem.question}\n```python\n", ("```",))
    raise ConfigError(f"unknown task {task!r}")


def _taskbench_plan(problem: Problem, model, style: str) -> PromptPlan:
    from ..backends.constraints import JsonSchemaConstraint
    from ..planner.prompts import system_prompt, task_prompt
    from ..planner.schema import task_list_schema

    data = problem.fields["data"]
    system = system_prompt(data.spec)
    user = task_prompt(problem.question, data.spec, tools=data.tools)
    constraint = JsonSchemaConstraint.for_model(model, task_list_schema(data.spec))
    if style == "chat":
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        plan = _chat_plan(model, messages, ())
    else:
        plan = _text_plan(model.tokenizer, f"{system}\n\n{user}\nJSON:", ())
    return PromptPlan(plan.ids, (), plan.style, plan.text, constraint)


def _chat_plan(model, messages, stops) -> PromptPlan:
    ids = _chat_ids(model, messages)
    return PromptPlan(ids, tuple(stops), "chat", model.tokenizer.decode(ids))


def _text_plan(tok, text: str, stops) -> PromptPlan:
    return PromptPlan(list(tok.encode(text)), tuple(stops), "fewshot", text)


def answer_extractor(problem: Problem):
    """What a majority vote compares for this task: the GSM8K number, the MATH boxed answer, a TaskBench plan's
    tool calls and links; None for the code tasks (two programs are not one answer by their text)."""
    if problem.task == "gsm8k":
        return gsm8k_vote_answer
    if problem.task == "math500":
        return math_vote_answer
    if problem.task == "taskbench":
        from .taskbench import parse_plan

        spec = problem.fields["data"].spec

        def plan_answer(text: str) -> str | None:
            try:
                nodes, links = parse_plan(text, spec)
            except ValueError:
                return None
            calls = sorted(f"{n['task']}({sorted((a['name'], a['value']) for a in n['arguments'])})" for n in nodes)
            return " ; ".join(calls) + " | " + " ; ".join(sorted(f"{x['source']}>{x['target']}" for x in links))

        return plan_answer
    return None


def quality_evaluator(problem: Problem):
    """The task's own quality score, text -> float in [0, 1], for ``METHOD+quality``: the planner's default tool-plan
    evaluator, which sees the request, the tools and the plan, never the gold graph (TaskBench only)."""
    if problem.task != "taskbench":
        raise ValueError(f"{problem.task} has no quality score")
    from ..planner.quality import PlanQualityEvaluator

    return PlanQualityEvaluator(problem.question, tools=problem.fields["data"].tools)


def grade_tool_plan(problem: Problem, text: str) -> Grade:
    """A TaskBench record: the plan's nodes and links, TaskBench's per-record counts, and the plan's quality
    score (the planner's default evaluator, which sees only the request, the tools and the plan)."""
    from ..planner.quality import PlanQualityEvaluator
    from .taskbench import parse_plan, record_scores

    data, record = problem.fields["data"], problem.fields["record"]
    try:
        nodes, links = parse_plan(text, data.spec)
        valid, detail = True, f"{len(nodes)} tool calls, {len(links)} links"
    except ValueError as exc:  # json.JSONDecodeError is a ValueError: an answer cut off by the token cap
        nodes, links, valid, detail = [], [], False, f"no valid plan: {exc}"
    scores = record_scores(record["task_nodes"], record["task_links"], nodes, links, [t.name for t in data.tools])
    quality = PlanQualityEvaluator(problem.question, tools=data.tools).evaluate_text(text).score if valid else 0.0
    fields = {
        "valid": valid,
        "pred_nodes": nodes,
        "pred_links": links,
        "quality_score": quality,
        "type": record.get("type"),
        "gold_nodes": len(record["task_nodes"]),
        **scores,
    }
    return Grade(scores["exact_match"], None, detail, fields)


def regrade_rows(rows: list[dict], taskbench_problems: Sequence[Problem] = ()) -> int:
    """Grade rows again from their stored text with today's graders, in place; returns how many changed verdict.
    GSM8K and MATH500 rows are graded against their stored reference. TaskBench rows are parsed and scored again
    against the records of ``taskbench_problems`` (the data folder they were run on): the graph metrics and the
    quality score. Only the returned text is graded: a vote's tally and best-of-n's ``candidates_correct`` stay as
    sampled (the other outputs are not stored). Code tasks would need their programs run again, so they are
    refused."""
    graders = {"gsm8k": grade_gsm8k, "math500": grade_math}
    records = {p.problem_id: p for p in taskbench_problems}
    changed = 0
    for row in rows:
        task = row.get("task")
        if task == "taskbench":
            problem = records.get(row.get("problem_id"))
            if problem is None:
                raise ConfigError(
                    f"TaskBench row {row.get('problem_id')} has no record in the data given"
                    + ("" if records else " (regrading TaskBench rows needs --data, the folder they were run on)")
                )
            grade = grade_tool_plan(problem, row["text"])
        elif task in graders and row.get("reference") is not None:
            stops = FEWSHOT_STOPS[task] if row.get("style") == "fewshot" else ()
            grade = graders[task](row["reference"], truncate_at_stops(row["text"], stops))
        else:
            raise ConfigError(
                f"regrading covers gsm8k, math500 and taskbench rows; {row.get('problem_id')} is a {task} row"
            )
        changed += bool(grade.correct) != bool(row["correct"])
        row.update(correct=grade.correct, extracted=grade.extracted, grade_detail=grade.detail, **grade.fields)
    return changed


def grade_completion(problem: Problem, text: str, plan: PromptPlan, limits: ExecLimits = ExecLimits()) -> Grade:
    """Grade a completion; the text is first cut at the prompt's stop strings."""
    graded = truncate_at_stops(text, plan.stops)
    chat = plan.style == "chat"
    if problem.task == "taskbench":
        return grade_tool_plan(problem, text)
    if problem.task == "gsm8k":
        return grade_gsm8k(problem.reference, graded)
    if problem.task == "math500":
        return grade_math(problem.reference, graded)
    if problem.task == "humaneval":
        f = problem.fields
        program = humaneval_program(f["prompt"], graded, f["test"], f["entry_point"], chat=chat)
        return grade_program(program, timeout_s=limits.timeout_s, memory_mb=limits.memory_mb, unsafe=limits.unsafe_exec)
    if problem.task == "mbpp":
        program = mbpp_program(graded, problem.fields["tests"], problem.fields["setup"], chat=chat)
        return grade_program(program, timeout_s=limits.timeout_s, memory_mb=limits.memory_mb, unsafe=limits.unsafe_exec)
    raise ConfigError(f"unknown task {problem.task!r}")
