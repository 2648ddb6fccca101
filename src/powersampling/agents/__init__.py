"""Agents: run a plan's tool calls (``Executor``) with Python functions; tools from a Python module or file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..planner.tools import ToolsFileError, ToolSpec, tools_from_module
from .executor import CallResult, ExecutionResult, Executor


def load_tools_module(path: str | Path) -> tuple[ToolSpec, ...]:
    """The tools of a Python file (its ``TOOLS`` list, else its public functions), each with its function.
    ``ToolsFileError`` (one line) when the file is missing, fails to import or offers no tools."""
    p = Path(path)
    if not p.is_file():
        raise ToolsFileError(f"tools module {p} does not exist")
    name = f"powersampling_tools_{p.stem}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ToolsFileError(f"{p} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # typing.get_type_hints resolves the module's annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module: any import-time failure is a bad tools file
        sys.modules.pop(name, None)
        raise ToolsFileError(f"{p} failed to import: {type(exc).__name__}: {exc}") from None
    return tools_from_module(module)


__all__ = ["CallResult", "ExecutionResult", "Executor", "ToolSpec", "load_tools_module"]
