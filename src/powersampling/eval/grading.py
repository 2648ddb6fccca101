"""Graders: GSM8K final number, MATH500 boxed answer (symbolic equivalence), HumanEval/MBPP by running tests.

Every grader returns a ``Grade`` that says what was extracted and why the verdict is what it is, so a surprising
accuracy can be traced to individual answers in the results file.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from ..sandbox import run_python
from .datasets import last_boxed


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None
    detail: str
    fields: dict = field(default_factory=dict)  # task-specific results stored in the row (TaskBench's counts)


def truncate_at_stops(text: str, stops: list[str] | tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        i = text.find(stop)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


# GSM8K

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"


def _to_decimal(s: str) -> Decimal | None:
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


_ANSWER_IS = re.compile(rf"answer\s*(?:is|:)\s*:?\s*\\?\(?\s*(?:\\boxed\{{)?\s*({_NUM})", flags=re.IGNORECASE)
# what may follow the number in the answer sentence: an arithmetic chain whose result is the answer ("9 * 2 = 18")
_CHAIN = re.compile(rf"(?:\s*(?:[-+*/×÷x]|=)\s*(?:{_NUM}))+")


def extract_gsm8k_answer(text: str) -> tuple[str | None, str]:
    """(number, rule): '#### N', then the last 'the answer is N' (or, when N starts a calculation written out
    there, its result: 'the answer is 9 * 2 = 18' gives 18), then the last \\boxed{N}, then the last number."""
    clean = text.replace("$", "").replace("**", "")
    m = re.search(rf"####\s*({_NUM})", clean)
    if m:
        return m.group(1), "####"
    found = list(_ANSWER_IS.finditer(clean))
    if found:
        last = found[-1]
        chain = _CHAIN.match(clean, last.end())
        if chain and "=" in chain.group(0):
            return re.findall(_NUM, chain.group(0).rsplit("=", 1)[1])[-1], "answer is ... = N"
        return last.group(1), "answer is"
    boxed = last_boxed(clean)
    if boxed is not None:
        nums = re.findall(_NUM, boxed)
        if nums:
            return nums[-1], "boxed"
    nums = re.findall(_NUM, clean)
    if nums:
        return nums[-1], "last number"
    return None, "no number"


def gsm8k_vote_answer(text: str) -> str | None:
    """The extracted number in a canonical form, so that 1,000 and 1000.00 are the same vote."""
    answer, _ = extract_gsm8k_answer(text)
    value = _to_decimal(answer) if answer is not None else None
    return None if value is None else format(value.normalize(), "f")


def grade_gsm8k(reference: str, text: str) -> Grade:
    answer, rule = extract_gsm8k_answer(text)
    if answer is None:
        return Grade(False, None, "no number in the answer")
    pred, gold = _to_decimal(answer), _to_decimal(reference)
    if gold is None:
        raise ValueError(f"GSM8K reference {reference!r} is not a number")
    correct = pred is not None and pred == gold
    return Grade(correct, answer.replace(",", ""), f"extracted by rule '{rule}'")


# MATH500


def math_vote_answer(text: str) -> str | None:
    answer, _ = extract_math_answer(text)
    return None if answer is None else normalize_math(answer)


def extract_math_answer(text: str) -> tuple[str | None, str]:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip(), "boxed"
    m = re.findall(r"final answer is\s*\$+([^$]+)\$", text, flags=re.IGNORECASE)
    if m:
        return m[-1].strip(), "final answer is"
    return None, "no answer"


_TEXT_WRAPPERS = r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}"


def normalize_math(s: str) -> str:
    """String normalization in the spirit of the MATH benchmark's own equivalence check."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = re.sub(r"\\[,!;:]|\\quad|\\qquad|~", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("°", "")
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
    s = re.sub(
        r"\\text\s*\{\s*(?:units?|cm|m|inches|inch|feet|foot|degrees?|meters?|dollars?|cents?|hours?|"
        r"minutes?|seconds?|days?|miles?|mph|square units)\s*\}",
        "",
        s,
    )
    s = re.sub(_TEXT_WRAPPERS, r"\1", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.replace(" ", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]+)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)
    if s.endswith("."):
        s = s[:-1]
    if s.startswith("0.") is False and s.startswith("."):
        s = "0" + s
    return s


def _latex_to_sympy(s: str):
    """A small LaTeX-to-sympy translation for plain expressions (numbers, fractions, roots, pi, powers)."""
    import sympy

    expr = s
    for _ in range(5):  # nested fractions and roots, innermost first
        expr = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", expr)
        expr = re.sub(r"\\sqrt\[([^{}\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", expr)
        expr = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", expr)
    expr = expr.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    expr = expr.replace("{", "(").replace("}", ")")
    if "\\" in expr or not re.fullmatch(r"[\w\s().*/+\-]*", expr):
        return None
    from sympy.parsing.sympy_parser import (
        implicit_multiplication,
        parse_expr,
        rationalize,
        standard_transformations,
    )

    try:  # "2sqrt(2)" and "3pi" are products in LaTeX answers
        return parse_expr(
            expr,
            transformations=standard_transformations + (implicit_multiplication, rationalize),
            local_dict={"pi": sympy.pi, "sqrt": sympy.sqrt},
            evaluate=True,
        )
    except Exception:  # the parser raises many types on malformed text
        return None


def _sympy_equal(gold: str, pred: str) -> bool:
    import sympy

    a, b = _latex_to_sympy(gold), _latex_to_sympy(pred)
    if a is None or b is None:
        return False
    try:
        return bool(sympy.simplify(a - b) == 0)
    except Exception:
        return False


def _math_verify_equal(gold: str, pred: str) -> bool | None:
    """True/False from math-verify, or None when it is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    # math-verify's timeouts use signal.alarm, which only works on the main thread
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:
        return False


def math_answers_equal(gold: str, pred: str, *, use_math_verify: bool = True) -> tuple[bool, str]:
    """(equal, how): normalized strings first, then math-verify (when installed), else sympy."""
    if normalize_math(gold) == normalize_math(pred):
        return True, "normalized string"
    if use_math_verify:
        verdict = _math_verify_equal(gold, pred)
        if verdict is not None:
            return verdict, "math-verify"
    return _sympy_equal(normalize_math(gold), normalize_math(pred)), "sympy"


def grade_math(reference: str, text: str, *, use_math_verify: bool = True) -> Grade:
    answer, rule = extract_math_answer(text)
    if answer is None:
        return Grade(False, None, "no \\boxed{} or 'final answer is $...$' in the answer")
    equal, how = math_answers_equal(reference, answer, use_math_verify=use_math_verify)
    return Grade(equal, answer, f"extracted by rule '{rule}', compared by {how}")


# code


def extract_code(text: str) -> str:
    """The first fenced code block (```python preferred), else the text itself."""
    blocks = re.findall(r"```[ \t]*(\w*)[^\n]*\n(.*?)(?:```|\Z)", text, flags=re.DOTALL)
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return body
    return blocks[0][1] if blocks else text


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str, *, chat: bool) -> str:
    """The program whose exit status is the verdict. A chat reply usually restates the whole function (then it
    follows the prompt and redefines the stub); a raw continuation is the function body (then it is appended)."""
    if chat:
        code = extract_code(completion)
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, flags=re.MULTILINE):
            body = prompt + "\n    pass\n\n" + code
        else:
            body = prompt + code
    else:
        body = prompt + completion
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


def mbpp_program(completion: str, tests: list[str], setup: str, *, chat: bool) -> str:
    code = extract_code(completion) if chat else completion.split("```")[0]
    return "\n".join([code, setup, *tests]) + "\n"


def grade_program(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, unsafe: bool = False) -> Grade:
    """Run the program in the sandbox (see ``sandbox.run_python``; ``unsafe`` allows running it without OS
    isolation where none works, instead of raising SandboxUnavailableError)."""
    result = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb, unsafe=unsafe)
    detail = result.status
    if not result.passed and result.stderr_tail:
        last = result.stderr_tail.strip().splitlines()[-1:] or [""]
        detail += f": {last[0][:200]}"
    return Grade(result.passed, None, detail)
