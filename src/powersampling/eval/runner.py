"""``run_eval``: every (problem, method) pair sampled, graded and appended to a JSONL file as it finishes.

Resuming: rows already in ``results.jsonl`` are skipped, so an interrupted run continues where it stopped.
``run.json`` holds the settings that decide what a row means (task, model, prompt style, sampler parameters, seed);
resuming with different ones is refused instead of mixing incomparable rows. Parameters scoped to one method
(``{"scalable-power.top_k": 4}``, from ``--param scalable-power.top_k=4``) may be added or changed for a method that
has no rows yet, so a method can join a finished run with its own settings.

Seeds: each (problem, method) gets its own seed derived from the run seed, the problem index and the method name,
recorded in its row, so any row can be replayed alone and a resumed run draws what an uninterrupted one would have.

Wall time: each problem's prompt is encoded once before its methods run (``prefill_prompt``, recorded as
``prompt_prefill_s``), so a row's ``wall_s`` is that method's own decoding, whatever order the methods run in.

Best-of-n at matched cost: unless ``best_of_n`` fixes n, n is the running ratio of the tokens power sampling
decoded to the tokens one plain sample decoded on the problems done so far (power runs first on each problem).
Candidates are ranked by mean base-model log-probability per token, not by the grader: the grader is an oracle;
how many candidates were correct is recorded separately (``candidates_correct``) as pass@n.

Problems in flight (``concurrency`` > 1, for backends that batch across requests: vLLM, remote servers): each
problem's methods still run in order, problems run side by side, and rows are written in problem order as soon as
every earlier problem's are, so the results file reads as a sequential run's. A matched n then sees the problems
finished before it, which can be fewer than in a sequential run.
"""

from __future__ import annotations

import json
import math
import platform
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.constraints import StopStringConstraint
from ..errors import ConfigError
from ..samplers.config import DEFAULT_ALPHA, DEFAULT_N_MCMC
from .datasets import TASKS, Problem, load_problems
from .results import RESULTS_FILE, SETTINGS_FILE, append_row, prepare_run_dir, read_rows, repair_torn_tail, write_rows
from .tasks import (
    DEFAULT_MAX_NEW_TOKENS,
    ExecLimits,
    answer_extractor,
    build_prompt,
    grade_completion,
    quality_evaluator,
    resolve_style,
)

# power (and smc) run before best-of-n and the votes on each problem so their matched n can use this problem's cost
_METHOD_ORDER = {"sample": 0, "greedy": 1, "low-temp": 2, "power": 3, "smc": 4, "scalable-power": 5, "best-of-n": 9}
VOTE = "+vote"  # method suffix: a majority vote over the method's outputs (see _run_one)
QUALITY = "+quality"  # method suffix: the output the task's quality score rates highest (see _run_one)
SELECTIONS = {VOTE: "a majority vote over its outputs", QUALITY: "its output the task's quality score rates highest"}
BEST_OF_N_RANGE = (2, 64)


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


def split_method(method: str) -> tuple[str, str | None]:
    """``"low-temp+vote"`` -> ``("low-temp", "+vote")``; a method without a selection suffix -> ``(method, None)``."""
    for suffix in SELECTIONS:
        if method.endswith(suffix):
            return method.removesuffix(suffix), suffix
    return method, None


def method_seed(run_seed: int, problem_index: int, method: str) -> int:
    state = np.random.SeedSequence([run_seed, problem_index, zlib.crc32(method.encode())]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) >> 1)


def matched_best_of_n(rows: Iterable[dict], unit: str = "sample") -> tuple[int, str]:
    """n for best-of-n (or a vote) so its decoded tokens match power sampling's, from the rows so far: power's
    decoded tokens over those of one sample of the ``unit`` method (the one the n samples are drawn like)."""
    by_problem: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], {})[r["method"]] = r
    power = [p["power"]["tokens_generated"] for p in by_problem.values() if "power" in p and unit in p]
    plain = [p[unit]["tokens_generated"] for p in by_problem.values() if "power" in p and unit in p]
    lo, hi = BEST_OF_N_RANGE
    if power and sum(plain) > 0:
        ratio = sum(power) / sum(plain)
        rule = f"power/{unit} decoded tokens {ratio:.2f} over {len(power)} problems"
    else:
        multipliers = [p["power"]["metadata"].get("cost_multiplier", 0.0) for p in by_problem.values() if "power" in p]
        if not multipliers:
            raise ConfigError("best-of-n at matched cost needs power sampling in the methods (or set best_of_n)")
        ratio = float(np.mean(multipliers))
        rule = f"power cost multiplier {ratio:.2f} over {len(multipliers)} problems (no plain-sample rows)"
    n = int(min(hi, max(lo, round(ratio))))
    return n, rule


class _Progress:
    """A rich progress bar with running accuracy per method; plain lines when stderr is not a terminal."""

    def __init__(self, total: int, done: int, methods: list[str], rows: list[dict], enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.enabled = enabled
        self.methods = methods
        self.tally = {m: [0, 0] for m in methods}
        for r in rows:
            if r["method"] in self.tally:
                self.tally[r["method"]][0] += bool(r["correct"])
                self.tally[r["method"]][1] += 1
        self.total, self.done = total, done
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not self.live,
        )
        self.bar = None
        self.inner = None

    def __enter__(self):
        self.progress.__enter__()
        self.bar = self.progress.add_task("eval", total=self.total, completed=self.done, info=self._accuracy())
        self.inner = self.progress.add_task("", total=None, info="", visible=False)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def _accuracy(self) -> str:
        parts = [f"{m} {c}/{n}" + (f" ({c / n:.0%})" if n else "") for m, (c, n) in self.tally.items()]
        return "  ".join(parts)

    def starting(self, problem: Problem, method: str) -> None:
        self.progress.update(
            self.inner, description=f"  {problem.problem_id} {method}", info="", visible=True, total=None, completed=0
        )

    def sampler_event(self, event) -> None:
        if not self.live or event.kind == "done":
            return
        info = f"tokens {event.tokens_generated}"
        if event.proposed:
            info += f"  accept {event.accepted}/{event.proposed}"
        self.progress.update(self.inner, total=event.blocks_total or None, completed=event.block, info=info)

    def finished(self, row: dict) -> None:
        c = self.tally.setdefault(row["method"], [0, 0])
        c[0] += bool(row["correct"])
        c[1] += 1
        self.done += 1
        self.progress.update(self.bar, completed=self.done, info=self._accuracy())
        if self.enabled and not self.live:
            verdict = "correct" if row["correct"] else "wrong"
            self.console.print(
                f"[{self.done}/{self.total}] {row['problem_id']} {row['method']}: {verdict}, "
                f"{row['tokens_generated']} tokens decoded, {row['wall_s']:.1f} s | {self._accuracy()}",
                highlight=False,
                soft_wrap=True,
            )


def _validate(task: str, methods: list[str], limit: int | None) -> None:
    from ..samplers import available_methods

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if not methods:
        raise ConfigError("no methods given")
    unknown = [m for m in methods if split_method(m)[0] not in available_methods()]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)}; available: {', '.join(available_methods())}, each also "
            + " or ".join(f"with '{suffix}' ({what})" for suffix, what in SELECTIONS.items())
        )
    if any(m.endswith(VOTE) for m in methods) and task in ("humaneval", "mbpp"):
        raise ConfigError(f"'{VOTE}' needs answers to compare; {task} grades programs")
    if any(m.endswith(QUALITY) for m in methods) and task != "taskbench":
        raise ConfigError(f"'{QUALITY}' needs a task with a quality score (taskbench); {task} has none")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods repeat: {', '.join(methods)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (got {limit})")


def check_arguments(
    task: str,
    methods: list[str],
    limit: int | None,
    *,
    offset: int = 0,
    alpha: float = DEFAULT_ALPHA,
    n_mcmc: int = DEFAULT_N_MCMC,
    block_size: int | None = None,
    max_new_tokens: int | None = None,
    best_of_n: int | None = None,
    extra_params: dict[str, Any] | None = None,
    data: str | Path | None = None,
) -> tuple[list[Problem], dict[str, Any]]:
    """Everything that can be checked before a model loads: names, ranges, sampler parameters, the data files.
    Returns the problems and the sampler parameters shared by all methods."""
    from ..samplers import validate_params

    _validate(task, methods, limit)
    problems = load_problems(task, limit, offset, data=data)
    if task == "taskbench":  # the plan grammar's bound: every admissible plan fits
        from ..planner.schema import max_output_tokens

        max_new_tokens = max_new_tokens or max_output_tokens(problems[0].fields["data"].spec)
        block_size = block_size or 32  # the planner's block: plans are short next to their bound
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task]
    block_size = block_size or max(1, math.ceil(max_new_tokens / 16))  # the paper's K=16 blocks
    if best_of_n is not None and best_of_n < 1:
        raise ConfigError(f"best_of_n must be >= 1 (got {best_of_n})")
    if "best-of-n" in methods and best_of_n is None and "power" not in methods:
        raise ConfigError("best-of-n at matched cost needs power sampling in the methods (or set best_of_n)")
    base = dict(alpha=alpha, n_mcmc=n_mcmc, block_size=block_size, max_new_tokens=max_new_tokens)
    extra_params = extra_params or {}
    for scoped in {k.rpartition(".")[0] for k in extra_params if "." in k} - set(methods):
        raise ConfigError(f"--param {scoped}.…: {scoped!r} is not one of the methods ({', '.join(methods)})")
    for method in methods:
        own = {k.rpartition(".")[2]: v for k, v in extra_params.items() if k.rpartition(".")[0] == method}
        if own:  # a parameter scoped to a method must be one of its own
            validate_params(split_method(method)[0], strict=True, **own)
        validate_params(
            split_method(method)[0],
            **base,
            **method_params(extra_params, method),
            **({"n": 2} if method == "best-of-n" else {}),
        )
    if "power+vote" in methods and int(method_params(extra_params, "power+vote").get("n_chains", 1)) < 2:
        raise ConfigError("power+vote votes over MH chains: give --param n_chains=N with N >= 2")
    return problems, base


def run_eval(
    task: str,
    methods: list[str],
    limit: int | None,
    model,
    out_dir: str | Path,
    *,
    alpha: float = DEFAULT_ALPHA,
    n_mcmc: int = DEFAULT_N_MCMC,
    block_size: int | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    style: str = "auto",
    shots: int | None = None,
    best_of_n: int | None = None,
    offset: int = 0,
    data: str | Path | None = None,
    concurrency: int = 1,
    extra_params: dict[str, Any] | None = None,
    exec_limits: ExecLimits = ExecLimits(),
    progress: bool = True,
    write_report: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Evaluate ``methods`` on the first ``limit`` problems of ``task`` and return the report summary.

    ``model`` is a loaded ``LanguageModel`` or a path (None: the embedded model). Results go to
    ``out_dir/results.jsonl`` (one row per problem and method), the report to ``out_dir/summary.md``,
    ``summary.json`` and ``accuracy_vs_cost.png``.
    """
    methods = list(methods)
    extra_params = dict(extra_params or {})
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1 (got {concurrency})")
    problems, base = check_arguments(
        task,
        methods,
        limit,
        offset=offset,
        alpha=alpha,
        n_mcmc=n_mcmc,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        best_of_n=best_of_n,
        extra_params=extra_params,
        data=data,
    )
    model = _loaded(model, concurrency)
    resolved_style = resolve_style(style, model)
    fingerprint = problems[0].fields["data"].fingerprint if task == "taskbench" else None
    settings = RunSettings(
        task,
        model.name,
        type(model).__name__,
        resolved_style,
        shots,
        float(alpha),
        n_mcmc,
        base["block_size"],
        base["max_new_tokens"],
        seed,
        best_of_n,
        extra_params,
        fingerprint,
    )
    out = Path(out_dir)
    settings, rows = _open_run(out, settings, progress)
    results_path = out / RESULTS_FILE
    ordered = sorted(methods, key=lambda m: _METHOD_ORDER.get(m, 8 if split_method(m)[1] else 6))
    done = {(r["problem_id"], r["method"]) for r in rows}
    jobs = [(p, [m for m in ordered if (p.problem_id, m) not in done]) for p in problems]
    jobs = [(p, todo) for p, todo in jobs if todo]
    wanted_ids = {p.problem_id for p in problems}
    rows_in_scope = [r for r in rows if r["problem_id"] in wanted_ids and r["method"] in methods]
    lock = threading.Lock()

    def run_problem(problem: Problem, todo_methods: list[str]) -> list[dict]:
        """A problem's pending methods, in order; rows so far (other problems') feed the matched-n rules."""
        plan = build_prompt(problem, model, resolved_style, shots)
        prefill_s = prefill_prompt(model, plan.ids)
        done_here: list[dict] = []
        for method in todo_methods:
            bar.starting(problem, method)
            with lock:
                seen = rows + done_here
            row = _run_one(problem, method, plan, model, settings, base, extra_params, seen, exec_limits, bar)
            row["prompt_prefill_s"] = prefill_s
            done_here.append(row)
            if concurrency == 1:
                record(row)
        return done_here

    def record(row: dict) -> None:
        with lock:
            append_row(results_path, row)
            rows.append(row)
        bar.finished(row)
        if on_row is not None:
            on_row(row)

    with _Progress(len(problems) * len(methods), len(rows_in_scope), ordered, rows_in_scope, progress) as bar:
        _run_jobs(jobs, run_problem, record, concurrency)
    if write_report:
        from .report import write_report as _write

        return _write(out, methods=methods, problem_ids=[p.problem_id for p in problems])
    return {}


def _loaded(model, concurrency: int):
    """``model`` loaded (a path or None: the embedded model), checked for problems in flight."""
    if model is None or isinstance(model, (str, Path)):
        from ..backends import load_model

        model = load_model(None if model is None else str(model))
    if concurrency > 1 and not getattr(model, "thread_safe", False):
        raise ConfigError(
            f"{type(model).__name__} decodes one call at a time, so problems in flight together would "
            "share its state; --concurrency needs a backend that batches across requests (vLLM, a "
            "remote vLLM or SGLang server)"
        )
    return model


def _open_run(out: Path, settings: RunSettings, progress: bool) -> tuple[RunSettings, list[dict]]:
    """The run folder ready to append to: its settings (stored on a first run, checked on a resume) and its rows
    (a line torn by an interrupted write dropped, and said)."""
    prepare_run_dir(out)
    settings_path, results_path = out / SETTINGS_FILE, out / RESULTS_FILE
    if settings_path.is_file():
        previous = _stored_settings(settings_path)
        settings = _admit_new_method_params(settings, previous, read_rows(results_path), settings_path, out)
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


def _run_jobs(jobs, run_problem: Callable, record: Callable[[dict], None], concurrency: int) -> None:
    """One problem after another (``run_problem`` records each row itself), or ``concurrency`` problems in
    flight with rows recorded in problem order as soon as every earlier problem's are."""
    if concurrency == 1:
        for problem, todo_methods in jobs:
            run_problem(problem, todo_methods)
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-problem") as pool:
        futures = [pool.submit(run_problem, p, todo) for p, todo in jobs]
        try:
            for future in futures:
                for row in future.result():
                    record(row)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def prefill_prompt(model, prompt_ids) -> float:
    """Encode the prompt once before a problem's methods run, and return the seconds it took.

    Backends keep a prefix cache, so without this the first method run on a problem would pay the whole prompt
    (hundreds of few-shot tokens) and every later one would reuse it: wall-time ratios between methods would then
    depend on the order they run in. One token is decoded and thrown away; it is counted in no row.
    """
    from ..backends.base import ContinuationRequest

    ids = list(prompt_ids)
    start = time.perf_counter()
    model.sample([ContinuationRequest(ids, 1, generated_start=len(ids))], 1.0, np.random.default_rng(0))
    return time.perf_counter() - start


def method_params(extra_params: dict[str, Any], method: str) -> dict[str, Any]:
    """The extra sampler parameters ``method`` runs with: the unscoped ones, overridden by those scoped to it
    (``"METHOD.name"``)."""
    params = {k: v for k, v in extra_params.items() if "." not in k}
    params.update({k.rpartition(".")[2]: v for k, v in extra_params.items() if k.rpartition(".")[0] == method})
    return params


def _admit_new_method_params(
    settings: RunSettings, previous: RunSettings, rows: list[dict], settings_path: Path, out: Path
) -> RunSettings:
    """Check that ``settings`` may resume the run stored in ``out`` (ConfigError if not) and return them.

    Everything must match, except parameters scoped to a method that has no rows in the folder yet: they decide
    nothing stored, so they may be added or changed (and ``run.json`` is updated)."""
    with_rows = {r["method"] for r in rows}

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


def _stored_settings(path: Path) -> RunSettings:
    try:
        return RunSettings(**json.loads(path.read_text())["settings"])
    except (TypeError, KeyError, json.JSONDecodeError):
        raise ConfigError(f"{path} was not written by this version of the harness; use another --out") from None


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
        these = _stored_settings(source / SETTINGS_FILE)
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


def _run_one(problem, method, plan, model, settings, base, extra_params, rows, limits, bar) -> dict:
    """One (problem, method) row. A method ``m+vote`` returns the answer most of m's outputs agree on: SMC's
    particles (weighted), MH's chains (``n_chains``), and for single-sample methods (sample, low-temp) n samples
    at that method's temperature, n matched to power sampling's cost like best-of-n's. ``m+quality`` returns the
    output the task's quality score (which sees the request and the output, never the gold answer) rates highest:
    every complete state MH visits, SMC's complete particles, or n samples as for a vote."""
    from ..samplers import build_sampler
    from ..samplers.config import LowTemperatureConfig

    seed = method_seed(settings.seed, problem.index, method)
    base_method, selection = split_method(method)
    params = {**base, **method_params(extra_params, method), "seed": seed}
    n_rule, evaluator = None, None
    if base_method == "sample":
        params["temperature"] = 1.0
    unit = "sample"  # the single-sample method whose cost one best-of-n candidate has
    if selection is not None:
        if selection == VOTE:
            params.update(select="majority", answer_extractor=answer_extractor(problem))
        else:
            evaluator = quality_evaluator(problem)
        if base_method in ("sample", "low-temp"):  # n samples at the method's own temperature
            params["temperature"] = (
                LowTemperatureConfig(alpha=base["alpha"]).temperature if base_method == "low-temp" else 1.0
            )
            unit, base_method = base_method, "best-of-n"
    if base_method == "best-of-n":
        params.setdefault("temperature", 1.0)
        if settings.best_of_n is not None:
            params["n"], n_rule = settings.best_of_n, "fixed"
        else:
            params["n"], n_rule = matched_best_of_n(rows, unit)
    sampler = build_sampler(base_method, model, evaluator=evaluator, **params)
    constraint = plan.constraint or (StopStringConstraint(model.tokenizer, plan.stops) if plan.stops else None)
    start = time.perf_counter()
    result = sampler.sample(plan.ids, constraint=constraint, progress=bar.sampler_event)
    wall = time.perf_counter() - start
    grade = grade_completion(problem, result.text, plan, limits)
    md = result.metadata
    row = {
        "task": problem.task,
        "problem_id": problem.problem_id,
        "index": problem.index,
        "method": method,
        "seed": seed,
        "correct": grade.correct,
        "extracted": grade.extracted,
        "reference": problem.reference if problem.task in ("gsm8k", "math500") else None,
        "grade_detail": grade.detail,
        "text": result.text,
        "prompt_tokens": len(plan.ids),
        "final_tokens": len(result.token_ids),
        "tokens_generated": int(md.get("tokens_generated", len(result.token_ids))),
        "wall_s": wall,
        "style": plan.style,
        "model": settings.model,
        "params": {k: v for k, v in params.items() if k not in ("seed", "answer_extractor")},
        "metadata": md,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **grade.fields,
    }
    if base_method == "best-of-n":
        row["n"] = params["n"]
        row["n_rule"] = n_rule
        row["candidates_correct"] = sum(grade_completion(problem, c.text, plan, limits).correct for c in result.samples)
    return row
