"""A cheaper build of the same grammar: bounded character-class patterns as EBNF repetitions.

xgrammar compiles a JSON-schema ``pattern`` through its regex automaton, and for a bounded repetition of a
restrictive class (``^[A-Za-z0-9 ,.]{7,79}$``, what the planner uses to bound its strings) it builds a token mask
for every repetition count: about 0.9 s per such pattern for a 49k-token vocabulary, most of a first plan's fixed
cost. The same language written as an EBNF repetition of a *negated* class (everything except the complement) is
masked through xgrammar's fast path and compiles in about 0.01 s. xgrammar prints its JSON library rules with
every grammar; those the schema does not use are dropped before compiling (compiled from EBNF they cost 1.5 s).

``json_schema_grammar`` therefore swaps each pattern of that shape (a sequence of ``[class]`` items with optional
``{m,n}`` counts, each class a set of printable ASCII characters without the quote and the backslash, so the JSON
text of the string is the string itself) for a placeholder, lets xgrammar turn the schema into EBNF, and puts the
equivalent EBNF in the placeholder's place. Any other pattern is left to xgrammar as it is.
"""

from __future__ import annotations

import json
import re
from typing import Any

# one item of a supported pattern: a class without escapes of letters (\w, \d, \s match beyond ASCII) and a count
_ITEM = re.compile(r"\[((?:\\[^A-Za-z]|[^\]\\])+)\](?:\{(\d+)(?:,(\d+))?\})?")
_PLACEHOLDER = "psclass{}x"
_PRINTABLE = {chr(c) for c in range(0x20, 0x7F)} - {'"', "\\"}


def _class_members(body: str) -> set[str] | None:
    """The characters of ``[body]`` when all are printable ASCII other than quote and backslash, else None."""
    if body.startswith("^") or any(ord(c) > 0x7E for c in body):
        return None
    try:
        members = {chr(c) for c in range(0x80) if re.fullmatch(f"[{body}]", chr(c))}
    except re.error:
        return None
    return members if members and members <= _PRINTABLE else None


def _ebnf_class(members: set[str]) -> str:
    """An EBNF negated class admitting exactly ``members`` (every character outside printable ASCII excluded)."""
    excluded = sorted(_PRINTABLE - members)
    escaped = "".join(f"\\x{ord(c):02x}" for c in excluded)
    return f'[^\\x00-\\x1f"\\\\{escaped}\\x7f-\\U0010ffff]'


def _pattern_ebnf(pattern: str) -> str | None:
    """The EBNF of ``pattern`` when it is a sequence of bounded class items, else None."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        return None
    body, position, parts = pattern[1:-1], 0, []
    while position < len(body):
        match = _ITEM.match(body, position)
        if match is None:
            return None
        members = _class_members(match.group(1))
        if members is None:
            return None
        low, high = match.group(2), match.group(3) if match.group(3) is not None else match.group(2)
        item = _ebnf_class(members)
        parts.append(f"{item}{{{int(low)}, {int(high)}}}" if low is not None else item)
        position = match.end()
    return f"({' '.join(parts)})" if parts else None


def _swap_patterns(node: Any, replacements: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_swap_patterns(v, replacements) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "pattern" and isinstance(value, str) and node.get("type") == "string":
            ebnf = _pattern_ebnf(value)
            if ebnf is not None:
                name = _PLACEHOLDER.format(len(replacements))
                replacements[name] = ebnf
                out[key] = f"^{name}$"
                continue
        # property names are data, not schemas: only their values are walked
        out[key] = _swap_patterns(value, replacements) if key != "enum" and key != "const" else value
    return out


def json_schema_grammar(schema_text: str, *, any_whitespace: bool) -> tuple[str, str]:
    """``("ebnf", text)`` with every bounded class pattern rewritten, or ``("json_schema", schema_text)`` when the
    schema has none (xgrammar then compiles it directly)."""
    import xgrammar as xgr

    replacements: dict[str, str] = {}
    schema = _swap_patterns(json.loads(schema_text), replacements)
    if not replacements:
        return "json_schema", schema_text
    text = str(xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=any_whitespace))
    for name, ebnf in replacements.items():
        regex = f'Regex("^{name}$", json_string=true)'
        if regex not in text:  # xgrammar printed the placeholder some other way: compile the schema as given
            return "json_schema", schema_text
        text = text.replace(regex, ebnf)
    return "ebnf", _reachable_rules(_inline_patterns(text, set(replacements.values())))


def _inline_patterns(text: str, patterns: set[str]) -> str:
    """Each rule that is only a rewritten pattern, written into the rules that use it instead.

    xgrammar puts a string's content in a rule of its own between the quotes (``p ::= "\\"" p_1 "\\""``); a bounded
    repetition that ends a rule is masked as if anything could follow it (1.8 s for an 80-character class), the
    same repetition followed by its closing quote in one rule in 0.01 s."""
    lines = text.strip().splitlines()
    if not all(" ::= " in line for line in lines):
        return text
    rules = dict(line.split(" ::= ", 1) for line in lines)
    inline = {name: body for name, body in rules.items() if body in patterns and name != "root"}
    if not inline:
        return text
    used = re.compile(r"\b(" + "|".join(map(re.escape, inline)) + r")\b")
    out = []
    for name, body in rules.items():
        if name not in inline:
            out.append(f"{name} ::= {used.sub(lambda m: inline[m.group(1)], body)}")
    return "\n".join(out) + "\n"
    return "ebnf", _reachable_rules(text)


_RULE_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")


def _reachable_rules(text: str) -> str:
    """``text`` without the rules ``root`` never uses. xgrammar prints its whole JSON library (``basic_string``,
    ``basic_any``, ...) with every schema; compiled from EBNF, the unused ones would cost more than the rest."""
    lines = text.strip().splitlines()
    if not all(" ::= " in line for line in lines):
        return text
    rules = dict(line.split(" ::= ", 1) for line in lines)
    if "root" not in rules:
        return text
    reached, stack = set(), ["root"]
    while stack:
        name = stack.pop()
        if name not in reached:
            reached.add(name)
            # a word inside a string literal may look like a rule name: keeping that rule is harmless
            stack.extend(n for n in _RULE_NAME.findall(rules[name]) if n in rules)
    return "\n".join(f"{name} ::= {body}" for name, body in rules.items() if name in reached) + "\n"
