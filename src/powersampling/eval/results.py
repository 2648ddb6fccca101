"""The files of an evaluation run: ``run.json`` (the settings) and ``results.jsonl`` (one row per problem and
method, appended and fsynced as each finishes, so a killed run loses at most the row being written)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import ConfigError

RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "run.json"


def prepare_run_dir(out: Path) -> None:
    """Create the run folder (parents too) and check that its files can be what they must be; a ``ConfigError``
    naming the path otherwise, before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"cannot create the folder {out}: it or a folder above it is a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {out}: {exc.strerror or exc}") from None
    for name in (SETTINGS_FILE, RESULTS_FILE):
        path = out / name
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path} is not a file (a folder?); remove it or use another --out")
    probe = out / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write in {out}: {exc.strerror or exc}") from None


def read_rows(path: Path) -> list[dict]:
    """Rows of a results file; a torn last line (the process died mid-write) is ignored. A line that is not UTF-8,
    not JSON or not a row (an object with problem_id and method) is a ``ConfigError`` naming the line."""
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    torn = len(lines) - 1  # the part after the last newline: complete only if empty
    rows = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path} line {i + 1} is not valid UTF-8; fix or remove that line") from None
        except json.JSONDecodeError:
            if i == torn:
                break
            raise ConfigError(f"{path} line {i + 1} is not valid JSON; fix or remove that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("problem_id"), str) or "method" not in row:
            raise ConfigError(
                f"{path} line {i + 1} is not a results row (an object with problem_id and method); "
                "fix or remove that line"
            )
        rows.append(row)
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


def repair_torn_tail(path: Path) -> int:
    """Drop a partial last line (a run killed mid-write) so the next append starts on a fresh line; returns the
    bytes dropped."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    path.write_bytes(data[:keep])
    return len(data) - keep


def write_rows(path: Path, rows: Iterable[dict]) -> None:
    """Replace ``path`` with ``rows`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")
    tmp.replace(path)
