"""The files of an evaluation run: ``run.json`` (the settings) and ``results.jsonl`` (one row per problem and
method, appended and fsynced as each finishes, so a killed run loses at most the row being written).

Resuming: ``run.json`` holds the settings that decide what a row means (task, model, prompt style, sampler
parameters, seed); resuming with different ones is refused instead of mixing incomparable rows. Parameters scoped to
one method (``{"scalable-power.top_k": 4}``, from ``--param scalable-power.top_k=4``) may be added or changed for a
method that has no rows yet, so a method can join a finished run with its own settings. Runs made side by side
(other ``--offset`` ranges) are gathered with ``merge_runs``; stored rows are graded again with
``runner.regrade_rows``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class RunSettings:
    """What a results row depends on. Two runs with equal settings produce comparable (and resumable) rows."""

    task: str
    model: str
    backend: str  # the engine class: costs (wall time) are only comparable within one
    style: str
    shots: int | None
    alpha: float
    n_mcmc: int
    block_size: int
    max_new_tokens: int
    seed: int
    best_of_n: int | None
    extra_params: dict[str, Any] = field(default_factory=dict)
    data: str | None = None  # the data folder's fingerprint, for tasks that read one (taskbench)

    def differences(
        self, other: RunSettings, mine_label: str = "now", other_label: str = "in the directory"
    ) -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: {theirs[k]!r} {other_label}, {mine[k]!r} {mine_label}" for k in mine if mine[k] != theirs[k]]


def stored_settings(path: Path) -> RunSettings:
    try:
        return RunSettings(**json.loads(path.read_text())["settings"])
    except (TypeError, KeyError, json.JSONDecodeError):
        raise ConfigError(f"{path} was not written by this version of the harness; use another --out") from None


def open_run(
    out: Path, settings: RunSettings, progress: bool, methods: Sequence[str]
) -> tuple[RunSettings, list[dict]]:
    """The run folder ready to append to: its settings (stored on a first run, checked on a resume) and its rows
    (a line torn by an interrupted write dropped, and said). ``methods`` are the methods run now."""
    prepare_run_dir(out)
    settings_path, results_path = out / SETTINGS_FILE, out / RESULTS_FILE
    if settings_path.is_file():
        previous = stored_settings(settings_path)
        settings = _admit_new_method_params(settings, previous, read_rows(results_path), settings_path, out, methods)
    else:
        document = {
            "settings": asdict(settings),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "python": platform.python_version(),
        }
        settings_path.write_text(json.dumps(document, indent=2))
    rows = read_rows(results_path)  # a bad line is an error before the torn tail is touched
    dropped = repair_torn_tail(results_path)
    if dropped and progress:
        from rich.console import Console

        Console(stderr=True).print(
            f"repaired {results_path}: dropped a torn last line ({dropped} bytes) left by an "
            "interrupted run; that row will be run again",
            highlight=False,
            soft_wrap=True,
        )
    return settings, rows


def _admit_new_method_params(
    settings: RunSettings,
    previous: RunSettings,
    rows: list[dict],
    settings_path: Path,
    out: Path,
    methods: Sequence[str],
) -> RunSettings:
    """Check that ``settings`` may resume the run stored in ``out`` (ConfigError if not) and return them.

    Everything must match, except parameters scoped to a method that has no rows in the folder yet: they decide
    nothing stored, so they may be added or changed (and ``run.json`` is updated). Parameters scoped to a method
    that is not run now are kept as the folder has them: its rows stand, and adding another method to the folder
    does not ask for them again."""
    with_rows = {r["method"] for r in rows}
    kept = {k: v for k, v in previous.extra_params.items() if "." in k and k.rpartition(".")[0] not in methods}
    settings = replace(settings, extra_params={**settings.extra_params, **kept})

    def fixed(params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if "." not in k or k.rpartition(".")[0] in with_rows}

    free = {k: v for k, v in settings.extra_params.items() if k not in fixed(settings.extra_params)}
    comparable = replace(previous, extra_params={**fixed(previous.extra_params), **free})
    diffs = settings.differences(comparable)
    if diffs:
        raise ConfigError(f"{out} holds a run with other settings ({'; '.join(diffs)}); use another --out")
    if settings.extra_params != previous.extra_params:
        document = json.loads(settings_path.read_text())
        document["settings"] = asdict(settings)
        settings_path.write_text(json.dumps(document, indent=2))
    return settings


def _merged_scoped_params(scoped: dict[Path, dict[str, Any]], origin: dict[tuple[str, str], Path]) -> dict[str, Any]:
    """The method-scoped parameters of merged runs: every source holding rows of a method must have run it with
    the same scoped parameters (a source without rows of it may hold any: they decided nothing there)."""
    merged: dict[str, Any] = {}
    reference: dict[str, Path] = {}
    for (_, method), source in origin.items():
        own = {k: v for k, v in scoped[source].items() if k.rpartition(".")[0] == method}
        if method not in reference:
            reference[method] = source
            merged.update(own)
            continue
        first = {k: v for k, v in scoped[reference[method]].items() if k.rpartition(".")[0] == method}
        if own != first:
            raise ConfigError(
                f"{source} and {reference[method]} ran {method} with other parameters ({own} against {first})"
            )
    return merged


def merge_runs(sources: Iterable[str | Path], out_dir: str | Path) -> int:
    """Gather the rows of runs made side by side (for example one process per ``--offset`` range) into ``out_dir``.

    Every source must hold the same settings (parameters scoped to a method need only agree among the sources
    that hold rows of it), and no (problem, method) pair may be in two sources: rows of different settings are
    not comparable, and a pair run twice would be counted twice. ``out_dir`` gets the
    settings and all rows (it may not hold rows already); the caller writes the report. Returns the number of rows.
    """
    sources = [Path(s) for s in sources]
    out = Path(out_dir)
    if len(sources) < 2:
        raise ConfigError("merging needs at least two run folders")
    if (out / RESULTS_FILE).is_file() and read_rows(out / RESULTS_FILE):
        raise ConfigError(f"{out / RESULTS_FILE} already holds rows; merge into a new folder")
    settings, rows, origin, scoped = None, [], {}, {}
    for source in sources:
        if not (source / SETTINGS_FILE).is_file():
            raise ConfigError(f"{source} is not an evaluation folder (no {SETTINGS_FILE})")
        these = stored_settings(source / SETTINGS_FILE)
        scoped[source] = {k: v for k, v in these.extra_params.items() if "." in k}
        these = replace(these, extra_params={k: v for k, v in these.extra_params.items() if "." not in k})
        if settings is None:
            settings, first = these, source
        elif diffs := these.differences(settings, f"in {source}", f"in {first}"):
            raise ConfigError(f"{source} was run with other settings than {first} ({'; '.join(diffs)})")
        for row in read_rows(source / RESULTS_FILE):
            key = (row["problem_id"], row["method"])
            if key in origin:
                raise ConfigError(
                    f"problem {key[0]} with method {key[1]} is in both {origin[key]} and {source}; "
                    "merge runs whose problems do not overlap"
                )
            origin[key] = source
            rows.append(row)
    settings = replace(settings, extra_params={**settings.extra_params, **_merged_scoped_params(scoped, origin)})
    prepare_run_dir(out)
    (out / SETTINGS_FILE).write_text(
        json.dumps(
            {
                "settings": asdict(settings),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "merged_from": [str(s) for s in sources],
            },
            indent=2,
        )
    )
    write_rows(out / RESULTS_FILE, rows)
    return len(rows)
