"""``run_eval``: every (problem, method) pair sampled, graded and appended to a JSONL file as it finishes.

Resuming: rows already in ``results.jsonl`` are skipped, so an interrupted run continues where it stopped (the run
folder's rules are in ``results``).

Seeds: each (problem, method) gets its own seed derived from the run seed, the problem index and the method name,
recorded in its row, so any row can be replayed alone and a resumed run draws what an uninterrupted one would have.

Wall time: each problem's prompt is encoded once before its methods run (``prefill_prompt``, recorded as
``prompt_prefill_s``), so a row's ``wall_s`` is that method's own decoding, whatever order the methods run in.

Best-of-n at matched cost: unless ``best_of_n`` fixes n, n is power sampling's cost relative to one plain sample
(``cost.relative_cost``) on the problems done so far (power runs first on each problem). Candidates are ranked by
mean base-model log-probability per token, not by the grader: the grader is an oracle; how many candidates were
correct is recorded separately (``candidates_correct``) as pass@n.

Problems in flight (``concurrency`` > 1, for backends that batch across requests: vLLM, remote servers): each
problem's methods still run in order, problems run side by side, and rows are written in problem order as soon as
every earlier problem's are, so the results file reads as a sequential run's. A matched n then sees the problems
finished before it, which can be fewer than in a sequential run.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.constraints import StopStringConstraint
from ..errors import ConfigError
from ..samplers.config import DEFAULT_ALPHA, DEFAULT_N_MCMC, default
from ..samplers.registry import (
    CANDIDATES_METHOD,
    MATCHED_COST_METHOD,
    PLAIN_METHOD,
    method_names,
    method_spec,
    methods_where,
    one_sample_temperature,
)
from .benchmarks import Benchmark, BenchmarkPrompt, ExecLimits, get_benchmark, load_problems, resolve_style
from .cost import mean_cost_multiplier, relative_cost
from .datasets import Problem
from .grading import Grade, truncate_at_stops
from .results import RESULTS_FILE, RunSettings, append_row, open_run

VOTE = "+vote"  # method suffix: a majority vote over the method's outputs (see _run_one)
ADAPTIVE_VOTE = "+avote"  # method suffix: a majority vote that stops drawing once its rule says so (see _run_one)
QUALITY = "+quality"  # method suffix: the output the task's quality score rates highest (see _run_one)
ADAPTIVE_QUALITY = "+aquality"  # method suffix: +quality over samples drawn until the best score stops improving
COVER = "+cover"  # method suffix: the output whose answer contains the most of the others' (see _run_one)
CONSENSUS = "+consensus"  # method suffix: the output whose answer's parts agree best (F1) with the others'
SELECTIONS = {
    VOTE: "a majority vote over its outputs",
    ADAPTIVE_VOTE: "a majority vote over samples drawn in rounds until the leader is settled",
    QUALITY: "its output the task's quality score rates highest",
    ADAPTIVE_QUALITY: "its output the quality score rates highest, drawn in rounds until the best stops improving",
    COVER: "its output whose answer contains the most of the parts (tool calls) its other outputs give",
    CONSENSUS: "its output whose parts (tool calls) agree best (F1) with the parts its other outputs give",
}
QUALITIES = (QUALITY, ADAPTIVE_QUALITY)
VOTES = (VOTE, ADAPTIVE_VOTE)
PARTS_SELECTIONS = {COVER: "coverage", CONSENSUS: "consensus"}  # suffix -> the sampler's select (parts_choice)
AGREEMENTS = (*VOTES, *PARTS_SELECTIONS)  # selections by what the outputs' answers share: two chains at least
VOTE_STOP_PARAMS = ("vote_stop", "round_size", "vote_confidence")  # BestOfNConfig's; read by +avote only
QUALITY_STOP_PARAMS = ("quality_margin", "round_size")  # BestOfNConfig's; read by +aquality only
STOP_PARAMS = tuple(dict.fromkeys(VOTE_STOP_PARAMS + QUALITY_STOP_PARAMS))
DEFAULT_QUALITY_MARGIN = 0.0  # +aquality stops after the first round that does not raise the best score
BEST_OF_N_RANGE = (2, 64)


BUDGET_MARK = "@"  # "smc+vote@4": the selection's budget, fixed by the name instead of matched to power's cost


def split_method(method: str) -> tuple[str, str | None]:
    """``METHOD+vote`` -> ``(METHOD, "+vote")`` (also ``METHOD+vote@8``); a method without a selection suffix ->
    ``(method, None)``."""
    method = method.partition(BUDGET_MARK)[0]
    for suffix in SELECTIONS:
        if method.endswith(suffix):
            return method.removesuffix(suffix), suffix
    return method, None


def method_budget(method: str) -> int | None:
    """The budget a method name fixes: ``"low-temp+vote@8"`` -> 8 samples, ``"smc+vote@4"`` -> 4 particles,
    ``"power+vote@2"`` -> 2 chains; None without one (a selection's n is then matched to power's cost)."""
    name, mark, budget = method.partition(BUDGET_MARK)
    if not mark:
        return None
    if split_method(name)[1] is None:
        raise ConfigError(f"{method}: a budget '{BUDGET_MARK}N' follows a selection ({', '.join(SELECTIONS)})")
    if not budget.isdigit() or int(budget) < 1:
        raise ConfigError(f"{method}: the budget after '{BUDGET_MARK}' must be a whole number >= 1")
    return int(budget)


def method_seed(run_seed: int, problem_index: int, method: str) -> int:
    state = np.random.SeedSequence([run_seed, problem_index, zlib.crc32(method.encode())]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) >> 1)


def matched_best_of_n(rows: Iterable[dict], candidate_method: str = PLAIN_METHOD) -> tuple[int, str]:
    """n for best-of-n (or a vote) so its decoded tokens match power sampling's, from the rows so far: power's
    cost relative to one sample of ``candidate_method`` (the one-sample method the n candidates are drawn like)."""
    by_method: dict[str, dict[str, dict]] = {MATCHED_COST_METHOD: {}, candidate_method: {}}
    for r in rows:
        if r["method"] in by_method:
            by_method[r["method"]][r["problem_id"]] = r
    power, plain = by_method[MATCHED_COST_METHOD], by_method[candidate_method]
    lo, hi = BEST_OF_N_RANGE
    ratio = relative_cost(power, plain)
    if ratio is not None:
        shared = len(set(power) & set(plain))
        rule = f"{MATCHED_COST_METHOD}/{candidate_method} decoded tokens {ratio:.2f} over {shared} problems"
    else:
        ratio = mean_cost_multiplier(list(power.values()))
        if ratio is None:
            raise ConfigError(
                f"{CANDIDATES_METHOD} at matched cost needs {MATCHED_COST_METHOD} in the methods (or set best_of_n)"
            )
        rule = f"{MATCHED_COST_METHOD} cost multiplier {ratio:.2f} over {len(power)} problems (no plain-sample rows)"
    n = int(min(hi, max(lo, round(ratio))))
    return n, rule


def method_order(method: str) -> tuple[bool, int]:
    """Where a method runs among a problem's methods: those whose n is matched to power sampling's cost (best-of-n
    and the selections) after all others, so they can use this problem's cost; otherwise the registry's order."""
    base, selection = split_method(method)
    names = method_names()
    return base == CANDIDATES_METHOD or selection is not None, names.index(base) if base in names else len(names)


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


def _validate(task: str, methods: list[str], limit: int | None) -> Benchmark:
    benchmark = get_benchmark(task)
    if not methods:
        raise ConfigError("no methods given")
    unknown = [m for m in methods if split_method(m)[0] not in method_names()]
    for m in methods:
        method_budget(m)
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)}; available: {', '.join(method_names())}, each also "
            + " or ".join(f"with '{suffix}' ({what})" for suffix, what in SELECTIONS.items())
        )
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods repeat: {', '.join(methods)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (got {limit})")
    return benchmark


def _check_selections(benchmark: Benchmark, methods: list[str], problem: Problem) -> None:
    for suffix in VOTES:
        if any(split_method(m)[1] == suffix for m in methods) and benchmark.answer_extractor(problem) is None:
            raise ConfigError(f"'{suffix}' needs answers to compare; {benchmark.name} has none (it grades programs)")
    for suffix in PARTS_SELECTIONS:
        if any(split_method(m)[1] == suffix for m in methods) and benchmark.answer_parts(problem) is None:
            raise ConfigError(f"'{suffix}' needs answers made of parts (tool calls); {benchmark.name}'s have none")
    for suffix in QUALITIES:
        if any(split_method(m)[1] == suffix for m in methods) and benchmark.quality_evaluator(problem) is None:
            raise ConfigError(f"'{suffix}' needs a task with a quality score; {benchmark.name} has none")


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
    categories: str | None = None,
) -> tuple[list[Problem], dict[str, Any]]:
    """Everything that can be checked before a model loads: names, ranges, sampler parameters, the data files.
    Returns the problems and the sampler parameters shared by all methods."""
    from ..samplers import validate_params

    benchmark = _validate(task, methods, limit)
    problems = load_problems(task, limit, offset, data=data, categories=categories)
    _check_selections(benchmark, methods, problems[0])
    max_new_tokens = max_new_tokens or benchmark.max_new_tokens(problems)
    block_size = block_size or benchmark.block_size(max_new_tokens)
    if best_of_n is not None and best_of_n < 1:
        raise ConfigError(f"best_of_n must be >= 1 (got {best_of_n})")
    base = dict(alpha=alpha, n_mcmc=n_mcmc, block_size=block_size, max_new_tokens=max_new_tokens)
    extra_params = extra_params or {}
    if (
        CANDIDATES_METHOD in methods
        and best_of_n is None
        and MATCHED_COST_METHOD not in methods
        and "n" not in method_params(extra_params, CANDIDATES_METHOD)
    ):
        raise ConfigError(
            f"{CANDIDATES_METHOD} at matched cost needs {MATCHED_COST_METHOD} in the methods "
            f"(or set --best-of-n, or --param {CANDIDATES_METHOD}.n=N)"
        )
    for scoped in {k.rpartition(".")[0] for k in extra_params if "." in k} - set(methods):
        raise ConfigError(f"--param {scoped}.…: {scoped!r} is not one of the methods ({', '.join(methods)})")
    for method in methods:
        own = {k.rpartition(".")[2]: v for k, v in extra_params.items() if k.rpartition(".")[0] == method}
        if split_method(method)[1] in (ADAPTIVE_VOTE, ADAPTIVE_QUALITY):
            _check_adaptive_selection(method, base, extra_params)
        elif stray := sorted(set(own) & set(STOP_PARAMS)):
            raise ConfigError(f"--param {method}.{stray[0]}: read by '{ADAPTIVE_VOTE}' and '{ADAPTIVE_QUALITY}' only")
        own = {k: v for k, v in own.items() if k not in STOP_PARAMS}
        if own:  # a parameter scoped to a method must be one of its own
            validate_params(split_method(method)[0], strict=True, **own)
        validate_params(
            split_method(method)[0],
            **base,
            **({"n": 2} if method == CANDIDATES_METHOD else {})
            | {k: v for k, v in method_params(extra_params, method).items() if k not in STOP_PARAMS},
        )
    for method in methods:  # a vote over one run's chains (MH chains, SMC particles) needs two of them
        base_method, selection = split_method(method)
        spec = method_spec(base_method)
        if selection in AGREEMENTS and spec.chains_field is not None:
            chains = method_budget(method) or method_params(extra_params, method).get(
                spec.chains_field, default(spec.config, spec.chains_field)
            )
            if int(chains) < 2:
                how = "votes over" if selection in VOTES else "chooses among"
                raise ConfigError(
                    f"{method} {how} its {spec.chains_field}: give --param {spec.chains_field}=N with N >= 2 "
                    f"(or name the budget: {method.partition(BUDGET_MARK)[0]}{BUDGET_MARK}N)"
                )
    return problems, base


def _check_adaptive_selection(method: str, base: dict, extra_params: dict) -> None:
    """An adaptive selection draws a one-sample method's samples in rounds; its stopping rule must be adaptive."""
    from ..samplers import validate_params

    base_method, selection = split_method(method)
    fixed = VOTE if selection == ADAPTIVE_VOTE else QUALITY
    one_sample = one_sample_temperature(base_method, **base, **method_params(extra_params, method)) is not None
    spec = method_spec(base_method)
    in_rounds = one_sample or (selection == ADAPTIVE_VOTE and spec.independent_chains)
    if not in_rounds:
        which = "samples of a one-sample method (sample, low-temp)"
        if selection == ADAPTIVE_VOTE:
            which += f" or the independent chains of {', '.join(methods_where('independent_chains'))}"
        raise ConfigError(
            f"{method}: '{selection}' draws {which} in rounds; {base_method} draws its outputs together (use '{fixed}')"
        )
    stop = _stop_params(method_params(extra_params, method), selection)
    if stop.get("vote_stop") == "fixed":
        raise ConfigError(f"{method}: vote_stop=fixed is '{VOTE}'; '{ADAPTIVE_VOTE}' takes unbeatable or posterior")
    select = "majority" if selection == ADAPTIVE_VOTE else "default"
    if one_sample:
        validate_params(CANDIDATES_METHOD, strict=True, n=2, select=select, **stop)
    else:
        validate_params(base_method, strict=True, **{spec.chains_field: 2}, select=select, **stop)


def _stop_params(params: dict, selection: str | None) -> dict:
    """The stopping rule's parameters for a selection: +avote's (vote_stop 'posterior' unless given), +aquality's
    (quality_margin DEFAULT_QUALITY_MARGIN unless given), none for any other (a +vote or +quality draws its whole
    budget whatever --param says)."""
    if selection == ADAPTIVE_VOTE:
        stop = {k: params[k] for k in VOTE_STOP_PARAMS if k in params}
        stop.setdefault("vote_stop", "posterior")
        return stop
    if selection == ADAPTIVE_QUALITY:
        stop = {k: params[k] for k in QUALITY_STOP_PARAMS if k in params}
        stop.setdefault("quality_margin", DEFAULT_QUALITY_MARGIN)
        return stop
    return {}


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
    categories: str | None = None,
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
    shared = dict(alpha=alpha, n_mcmc=n_mcmc, block_size=block_size, max_new_tokens=max_new_tokens)
    problems, base = check_arguments(
        task,
        methods,
        limit,
        offset=offset,
        best_of_n=best_of_n,
        extra_params=extra_params,
        data=data,
        categories=categories,
        **shared,
    )
    model = _loaded(model, concurrency)
    benchmark = get_benchmark(task)
    settings = RunSettings(
        task,
        model.name,
        type(model).__name__,
        resolve_style(style, model),
        shots,
        float(alpha),
        n_mcmc,
        base["block_size"],
        base["max_new_tokens"],
        seed,
        best_of_n,
        extra_params,
        benchmark.data_fingerprint(problems),
    )
    out = Path(out_dir)
    settings, rows = open_run(out, settings, progress, methods)
    session = _EvalSession(benchmark, model, settings, base, exec_limits, rows, out / RESULTS_FILE, on_row)
    ordered = sorted(methods, key=method_order)
    done = {(r["problem_id"], r["method"]) for r in rows}
    jobs = [(p, [m for m in ordered if (p.problem_id, m) not in done]) for p in problems]
    wanted_ids = {p.problem_id for p in problems}
    rows_in_scope = [r for r in rows if r["problem_id"] in wanted_ids and r["method"] in methods]
    with _Progress(len(problems) * len(methods), len(rows_in_scope), ordered, rows_in_scope, progress) as bar:
        session.bar = bar
        _run_jobs([(p, todo) for p, todo in jobs if todo], session, concurrency)
    if write_report:
        from .report import write_report as _write

        return _write(out, methods=methods, problem_ids=[p.problem_id for p in problems])
    return {}


class _EvalSession:
    """What every (problem, method) of one ``run_eval`` call shares, and the rows it has written so far."""

    def __init__(self, benchmark, model, settings, base, limits, rows, results_path, on_row) -> None:
        self.benchmark, self.model, self.settings, self.base, self.limits = benchmark, model, settings, base, limits
        self.rows, self.results_path, self.on_row = rows, results_path, on_row
        self.lock = threading.Lock()
        self.bar: _Progress | None = None

    def run_problem(self, problem: Problem, todo_methods: list[str], record_each: bool) -> list[dict]:
        """A problem's pending methods, in order; rows so far (other problems') feed the matched-n rules."""
        prompt = self.benchmark.prompt(problem, self.model, self.settings.style, self.settings.shots)
        prefill_s = prefill_prompt(self.model, prompt.ids)
        done_here: list[dict] = []
        for method in todo_methods:
            self.bar.starting(problem, method)
            with self.lock:
                seen = self.rows + done_here
            row = _run_one(self, problem, method, prompt, seen)
            row["prompt_prefill_s"] = prefill_s
            done_here.append(row)
            if record_each:
                self.record(row)
        return done_here

    def record(self, row: dict) -> None:
        with self.lock:
            append_row(self.results_path, row)
            self.rows.append(row)
        self.bar.finished(row)
        if self.on_row is not None:
            self.on_row(row)

    def grade(self, problem: Problem, text: str, prompt: BenchmarkPrompt) -> Grade:
        """The benchmark's verdict on ``text`` cut at the prompt's stop strings."""
        return self.benchmark.grade(problem, truncate_at_stops(text, prompt.stops), prompt, self.limits)


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


def _run_jobs(jobs, session: _EvalSession, concurrency: int) -> None:
    """One problem after another (each row recorded as it finishes), or ``concurrency`` problems in flight with
    rows recorded in problem order as soon as every earlier problem's are."""
    if concurrency == 1:
        for problem, todo_methods in jobs:
            session.run_problem(problem, todo_methods, record_each=True)
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-problem") as pool:
        futures = [pool.submit(session.run_problem, p, todo, False) for p, todo in jobs]
        try:
            for future in futures:
                for row in future.result():
                    session.record(row)
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


def _run_one(session: _EvalSession, problem: Problem, method: str, prompt: BenchmarkPrompt, rows: list[dict]) -> dict:
    """One (problem, method) row. A method ``m+vote`` returns the answer most of m's outputs agree on: SMC's
    particles (weighted), MH's chains (``n_chains``), and for one-sample methods (sample, low-temp) n samples at
    that method's temperature, n matched to power sampling's cost like best-of-n's. ``m+quality`` returns the
    output the benchmark's quality score (which sees the request and the output, never the gold answer) rates
    highest: every complete state MH visits, SMC's complete particles, or n samples as for a vote. ``m+avote`` and
    ``m+aquality`` (one-sample methods) have the same budget n but draw it in rounds that stop early
    (``samplers.votes`` for the vote's rules, ``quality_margin`` for the quality selection); each candidates row
    records the budget ``n`` and the ``samples_used``."""
    from ..samplers import build_sampler

    settings, benchmark, model = session.settings, session.benchmark, session.model
    seed = method_seed(settings.seed, problem.index, method)
    base_method, selection = split_method(method)
    params = {**session.base, **method_params(settings.extra_params, method), "seed": seed}
    n_rule, evaluator = None, None
    if base_method == PLAIN_METHOD:
        params["temperature"] = 1.0
    candidate_method = PLAIN_METHOD  # the one-sample method whose cost one best-of-n candidate has
    for k in STOP_PARAMS:  # read by the adaptive selections only, through _stop_params
        params.pop(k, None)
    params.update(_stop_params(method_params(settings.extra_params, method), selection))
    if selection is not None:
        if selection in VOTES:
            params.update(select="majority", answer_extractor=benchmark.answer_extractor(problem))
        elif selection in PARTS_SELECTIONS:
            params.update(select=PARTS_SELECTIONS[selection], parts_extractor=benchmark.answer_parts(problem))
        else:
            evaluator = benchmark.quality_evaluator(problem)
        temperature = one_sample_temperature(base_method, **params)
        if temperature is not None:  # n samples at the method's own temperature
            params["temperature"] = temperature
            candidate_method, base_method = base_method, CANDIDATES_METHOD
    budget = method_budget(method)
    if base_method == CANDIDATES_METHOD:
        params.setdefault("temperature", 1.0)
        if budget is not None:
            params["n"], n_rule = budget, f"fixed by the method name ({BUDGET_MARK}{budget})"
        elif settings.best_of_n is not None:
            params["n"], n_rule = settings.best_of_n, "fixed"
        elif "n" in (given := method_params(settings.extra_params, method)):
            params["n"], n_rule = given["n"], "fixed by --param n"
        else:
            params["n"], n_rule = matched_best_of_n(rows, candidate_method)
    elif budget is not None:
        params[_budget_field(base_method)] = budget
    sampler = build_sampler(base_method, model, evaluator=evaluator, **params)
    constraint = prompt.constraint or (StopStringConstraint(model.tokenizer, prompt.stops) if prompt.stops else None)
    start = time.perf_counter()
    result = sampler.sample(prompt.ids, constraint=constraint, progress=session.bar.sampler_event)
    wall = time.perf_counter() - start
    grade = session.grade(problem, result.text, prompt)
    md = result.metadata
    row = {
        "task": problem.task,
        "problem_id": problem.problem_id,
        "index": problem.index,
        "method": method,
        "seed": seed,
        "correct": grade.correct,
        "extracted": grade.extracted,
        "reference": benchmark.row_reference(problem),
        "grade_detail": grade.detail,
        "text": result.text,
        "prompt_tokens": len(prompt.ids),
        "final_tokens": len(result.token_ids),
        "tokens_generated": int(md.get("tokens_generated", len(result.token_ids))),
        "wall_s": wall,
        "style": prompt.style,
        "model": settings.model,
        "params": {k: v for k, v in params.items() if k not in ("seed", "answer_extractor", "parts_extractor")},
        "metadata": md,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **grade.fields,
    }
    independent_chains = method_spec(base_method).independent_chains and selection is not None
    if base_method == CANDIDATES_METHOD or independent_chains:
        # the budget (an adaptive vote may use fewer) and each independent output in order, for eval.curves
        row["n"] = params["n"] if base_method == CANDIDATES_METHOD else params.get(_budget_field(base_method), 1)
        row["samples_used"] = len(result.samples)
        if n_rule is not None:
            row["n_rule"] = n_rule
        grades = [session.grade(problem, c.text, prompt) for c in result.samples]
        row["candidates_correct"] = sum(g.correct for g in grades)
        row["draws"] = draw_records(
            result.samples,
            grades,
            params.get("answer_extractor"),
            md.get("decoded_tokens_per_chain"),
            params.get("parts_extractor") or benchmark.answer_parts(problem),  # so eval.curves can replay +cover
        )
    return row


def _budget_field(method: str) -> str:
    field = method_spec(method).chains_field
    if field is None:
        raise ConfigError(f"{method} draws one output; a budget '{BUDGET_MARK}N' has nothing to count")
    return field


def draw_records(
    samples,
    grades: list[Grade],
    extract: Callable[[str], str | None] | None,
    decoded: Sequence[int] | None = None,
    parts: Callable[[str], Sequence[str] | None] | None = None,
) -> list[dict]:
    """One record per candidate or independent chain, in the order drawn: the tokens decoded for it (``decoded``,
    for MH chains: extensions and every proposal; a candidate's own length otherwise), base-model log p, whether
    it finished, the answer it votes for (the benchmark's extractor, for a vote), its answer's parts (``parts``,
    for a coverage choice), its quality score (for a quality selection) and its grade. The draws are independent,
    so the first k records are a k-draw run: ``eval.curves`` replays smaller and adaptive selections from them."""
    records = []
    if decoded is not None and len(decoded) != len(samples):
        raise ValueError(f"{len(samples)} outputs but {len(decoded)} decoded-token counts")
    for i, (completion, grade) in enumerate(zip(samples, grades, strict=True)):
        answer = _extracted(extract, completion)
        found = _extracted(parts, completion)
        records.append(
            {
                "tokens": int(decoded[i]) if decoded is not None else len(completion.token_ids),
                "logprob": float(completion.logprob),
                "complete": bool(completion.complete),
                "answer": None if answer is None else str(answer),
                **({"parts": None if found is None else [str(p) for p in found]} if parts is not None else {}),
                "correct": bool(grade.correct),
                "quality_score": completion.quality_score,
                "fields": grade.fields,
                "text": completion.text,
            }
        )
    return records


def _extracted(extract: Callable[[str], Any] | None, completion) -> Any:
    if extract is None or not completion.complete:
        return None
    try:
        return extract(completion.text)
    except Exception:  # user code: a failed extraction casts no vote, as in the selection itself
        return None


def regrade_rows(rows: list[dict], problems: Sequence = ()) -> int:
    """Grade rows again from their stored text with today's graders, in place; returns how many changed verdict.
    Each row is graded by its benchmark (``Benchmark.regrade``): answer benchmarks against the row's stored
    reference, TaskBench against the records of ``problems`` (loaded from the data folder the run used). Only the
    returned text is graded, and each of a row's ``draws`` where they are stored (with ``candidates_correct``
    recounted from them, and each draw's answer parts recorded where the benchmark has them); a vote's tally and
    the answers the draws voted for stay as sampled."""
    by_id = {p.problem_id: p for p in problems}
    changed = 0
    for row in rows:
        benchmark = get_benchmark(row.get("task"))
        grade = benchmark.regrade(row, by_id)
        changed += bool(grade.correct) != bool(row["correct"])
        row.update(correct=grade.correct, extracted=grade.extracted, grade_detail=grade.detail, **grade.fields)
        if row.get("draws") and all("text" in d for d in row["draws"]):
            problem = benchmark.problem_for(row, by_id)
            parts = benchmark.answer_parts(problem) if problem is not None else None
            for draw in row["draws"]:
                again = benchmark.regrade({**row, "text": draw["text"]}, by_id)
                draw.update(correct=bool(again.correct), fields=again.fields)
                if parts is not None:  # what a coverage choice compares, for eval.curves' replays
                    found = parts(draw["text"]) if draw.get("complete", True) else None
                    draw["parts"] = None if found is None else [str(p) for p in found]
            row["candidates_correct"] = sum(d["correct"] for d in row["draws"])
    return changed
