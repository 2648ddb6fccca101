"""BFCL's multi-turn environments for the executor, and BFCL's multi-turn checker.

BFCL ships eight offline tool environments (file system, math, messages, posting, tickets, trading, travel, vehicle
control) as Python classes in ``bfcl-eval`` (install it with ``--no-deps``). ``Environment`` builds fresh instances
of an entry's classes from its ``initial_config`` and offers their public methods as tools (``ToolSpec``s with BFCL's
own function docs as schemas, each bound to its instance), so ``Executor`` runs calls against them.

BFCL's own execution (``execute_multi_turn_func_call``, which its checker calls) caches every instance in the
module globals of ``multi_turn_utils`` under ``<model name>_<test id>_<class>_instance``: scoring twice under one
model name would continue from the first run's state. ``isolated_model_name`` gives each scoring a name of its own
and drops its instances afterwards, so every verdict starts from the entry's initial state.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import inspect
import json
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..planner.tools import ToolSpec

BFCL_HINT = "pip install --no-deps bfcl-eval==2026.3.23"
MULTI_TURN_CATEGORIES = ("multi_turn_base",)


def _data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"bfcl-eval is not installed; run: {BFCL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _json_lines(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"BFCL data file {path} is missing; reinstall: {BFCL_HINT}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class MultiTurnEntry:
    entry: dict  # BFCL's entry: id, question (one list of messages per turn), initial_config, involved_classes
    ground_truth: list[list[str]]  # the gold calls of each turn, as BFCL writes them (Python call syntax)
    functions: list[dict]  # the function docs of the involved classes (BFCL's format)

    @property
    def id(self) -> str:
        return self.entry["id"]


def load_multi_turn(category: str = "multi_turn_base") -> list[MultiTurnEntry]:
    """The entries of a multi-turn category with their gold calls and function docs."""
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    if category not in MULTI_TURN_CATEGORIES:
        raise ConfigError(f"unknown multi-turn category {category!r}; choose one of {', '.join(MULTI_TURN_CATEGORIES)}")
    root = _data_dir()
    gold = {a["id"]: a["ground_truth"] for a in _json_lines(root / "possible_answer" / f"BFCL_v4_{category}.json")}
    docs: dict[str, list[dict]] = {}
    out = []
    for entry in _json_lines(root / f"BFCL_v4_{category}.json"):
        functions = []
        for name in entry["involved_classes"]:
            if name not in docs:
                docs[name] = _json_lines(root / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[name])
            functions += docs[name]
        out.append(MultiTurnEntry(entry, gold[entry["id"]], functions))
    return out


class Environment:
    """Fresh instances of an entry's environment classes, loaded with its initial configuration, and their
    methods as tools."""

    def __init__(self, item: MultiTurnEntry) -> None:
        from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, STATELESS_CLASSES

        self.item = item
        self.instances: dict[str, Any] = {}
        config = item.entry.get("initial_config", {})
        for name in item.entry["involved_classes"]:
            instance = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name)()
            if name not in STATELESS_CLASSES:
                instance._load_scenario(copy.deepcopy(config.get(name, {})), long_context=False)
            self.instances[name] = instance
        self.methods: dict[str, Any] = {}
        for instance in self.instances.values():
            for method_name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not method_name.startswith("_"):
                    self.methods[method_name] = method

    def tools(self) -> tuple[ToolSpec, ...]:
        """BFCL's function docs as tool specs (their types mapped as for the single-turn categories), each with
        the bound method that runs it."""
        specs = tool_specs(self.item.functions)
        return tuple(s.with_function(self.methods[s.name]) for s in specs if s.name in self.methods)


def parse_call(text: str, functions: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``name(arguments)`` in Python syntax (BFCL's gold calls) as a tool name and keyword arguments: positional
    arguments are named by the method's signature, values are Python literals. ``ValueError`` otherwise."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not a call: {text!r} ({exc.msg})") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a call of a function by name: {text!r}")
    name = node.func.id
    if name not in functions:
        raise ValueError(f"no function {name!r}")
    names = [p for p in inspect.signature(functions[name]).parameters]
    if len(node.args) > len(names):
        raise ValueError(f"{name} takes {len(names)} arguments, got {len(node.args)}")
    arguments = {names[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise ValueError(f"**arguments in {text!r}")
        arguments[keyword.arg] = ast.literal_eval(keyword.value)
    return name, arguments


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A call in the Python syntax BFCL's checker executes."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"


# schemas


def json_schema(bfcl: Any) -> Any:
    """A BFCL parameter schema as JSON Schema: its types (dict, float, tuple, any, ...) through BFCL's own
    ``GORILLA_TO_OPENAPI`` table, keywords JSON Schema does not have (``optional``) dropped."""
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    if isinstance(bfcl, list):
        return [json_schema(s) for s in bfcl]
    if not isinstance(bfcl, dict):
        return bfcl
    out = {}
    for key, value in bfcl.items():
        if key == "type":
            out[key] = GORILLA_TO_OPENAPI.get(value, "string") if isinstance(value, str) else value
        elif key == "properties":
            out[key] = {name: json_schema(s) for name, s in value.items()}
        elif key == "items":
            out[key] = json_schema(value)
        elif key != "optional":
            out[key] = value
    return out


def tool_specs(functions: Sequence[dict]) -> tuple[ToolSpec, ...]:
    return tuple(ToolSpec(f["name"], f.get("description", ""), json_schema(f.get("parameters", {}))) for f in functions)


# scoring

_names_lock = threading.Lock()


@contextlib.contextmanager
def isolated_model_name(prefix: str = "powersampling") -> Iterator[str]:
    """A model name no earlier scoring used; the instances BFCL's execution cached under it are dropped on exit."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    name = f"{prefix}_{uuid.uuid4().hex}"
    try:
        yield name
    finally:
        key = re.sub(r"[-./:]", "_", name)
        with _names_lock:
            cached = vars(multi_turn_utils)
            for stale in [k for k in cached if k.startswith(key)]:
                del cached[stale]


def check_multi_turn(item: MultiTurnEntry, decoded: list[list[list[str]]], model_name: str | None = None) -> dict:
    """BFCL's multi-turn verdict on ``decoded`` (per turn, per step, the call strings executed). With
    ``model_name`` None every check runs under a fresh isolated name (``isolated_model_name``)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    category = item.id.rsplit("_", 1)[0]
    if len(decoded) != len(item.ground_truth):
        return {"valid": False, "error_type": "multi_turn:turn_count", "error_message": "turn count differs"}
    if model_name is not None:
        return multi_turn_checker(decoded, item.ground_truth, item.entry, category, model_name)
    with isolated_model_name() as name:
        return multi_turn_checker(decoded, item.ground_truth, item.entry, category, name)


def ground_truth_instances(item: MultiTurnEntry, turns: int) -> dict[str, Any]:
    """The instances after BFCL's own execution of the first ``turns`` turns of gold calls."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    instances: dict[str, Any] = {}
    with isolated_model_name("powersampling_gold") as name:
        for calls in item.ground_truth[:turns]:
            _, instances = execute_multi_turn_func_call(
                calls, item.entry["initial_config"], item.entry["involved_classes"], name, item.id
            )
    return instances


def compare_states(instances: dict[str, Any], expected: dict[str, Any]) -> dict:
    """BFCL's state check of ``instances`` against ``expected`` (``{"valid": bool, ...}``)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

    return state_checker(instances, expected)
