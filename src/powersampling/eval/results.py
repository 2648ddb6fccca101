"""The files of an evaluation run: ``run.json`` (the settings) and ``results.jsonl`` (one row per problem and
method, appended and fsynced as each finishes, so a killed run loses at most the row being written)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ConfigError

RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "run.json"


def read_rows(path: Path) -> list[dict]:
    """Rows of a results file; a torn last line (the process died mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ConfigError(f"{path} line {i + 1} is not valid JSON; fix or remove that line") from None
    return rows


def append_row(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a results row")


def repair_torn_tail(path: Path) -> None:
    """Drop a partial last line so the next append starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def write_rows(path: Path, rows: Iterable[dict]) -> None:
    """Replace ``path`` with ``rows`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")
    tmp.replace(path)
