"""``powersampling eval``: run a benchmark with several decoding methods and write the report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import PowerSamplingError
from ..samplers.config import DEFAULT_ALPHA, DEFAULT_N_MCMC
from ..samplers.registry import CANDIDATES_METHOD, methods_where
from .common import BACKEND_HELP, MODEL_HELP, PARAM_HELP, THREADS_HELP, TOKENIZER_HELP, Backend, parse_params

# best-of-n last: its n is matched to power sampling's cost, measured on the same problems first
DEFAULT_METHODS = ",".join(sorted(methods_where("in_default_eval"), key=lambda method: method == CANDIDATES_METHOD))


def eval_command(
    task: str = typer.Option(..., help="benchmark (docs/evaluation.md lists them; a registered one by its name)"),
    data: Path | None = typer.Option(
        None,
        help="data folder of a benchmark that reads one (taskbench: tools.json, one records *.jsonl, optionally "
        "*_user_requests.jsonl); with --regrade, the folder the run used",
    ),
    categories: str | None = typer.Option(
        None, help="comma-separated categories of a benchmark that has them (bfcl; default: all its categories)"
    ),
    methods: str = typer.Option(
        DEFAULT_METHODS,
        help="comma-separated methods of the sampler registry (generate --help lists them); METHOD+vote: a "
        "majority vote over its outputs; METHOD+quality: the output the benchmark's quality score rates highest "
        "(benchmarks that have one: taskbench); METHOD+cover: the output whose tool calls contain the most of "
        "the other outputs' calls (bfcl); METHOD+consensus: the one whose calls agree best with theirs by F1 (bfcl); "
        "+avote and +aquality (sample, low-temp; +avote also power's chains): "
        "the same, drawn in rounds that stop early (--param vote_stop, vote_confidence, quality_margin, round_size; "
        "docs/samplers.md); a selection's budget is matched to power's cost unless the name fixes it: "
        "low-temp+vote@8 (8 samples), smc+vote@4 (4 particles), power+vote@2 (2 chains)",
    ),
    limit: int | None = typer.Option(None, help="evaluate the first N problems (default: all)"),
    offset: int = typer.Option(0, help="skip the first N problems"),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
    tokenizer: str | None = typer.Option(None, help=TOKENIZER_HELP),
    device: str = typer.Option("cpu", help="torch device for the transformers backend (cpu, cuda)"),
    out: Path = typer.Option(
        ..., help="output folder: results.jsonl, run.json, summary.md, summary.json, accuracy_vs_cost.png"
    ),
    alpha: float = typer.Option(DEFAULT_ALPHA, help="power of the target p^alpha; low-temp samples at T = 1/alpha"),
    n_mcmc: int = typer.Option(DEFAULT_N_MCMC, "--n-mcmc", help="MH steps after each block"),
    block_size: int | None = typer.Option(None, help="tokens per block (default: max-new-tokens / 16)"),
    max_new_tokens: int | None = typer.Option(
        None, help="generated tokens at most (default: the benchmark's, listed in docs/evaluation.md)"
    ),
    seed: int = typer.Option(0, help="run seed; each problem and method derives its own seed from it"),
    style: str = typer.Option(
        "auto",
        help="prompting: chat (instruct models), fewshot (base models), auto (chat when the tokenizer has a chat "
        "template)",
    ),
    shots: int | None = typer.Option(
        None, help="worked examples in the prompt (default: 0 for chat, the dataset's few-shot set for fewshot)"
    ),
    best_of_n: int | None = typer.Option(
        None, "--best-of-n", help="candidates for best-of-n (default: matched to power sampling's measured token cost)"
    ),
    param: list[str] = typer.Option([], "--param", help=PARAM_HELP),
    exec_timeout: float = typer.Option(10.0, help="seconds per program run when grading code"),
    exec_memory_mb: int = typer.Option(1024, help="address-space limit in MiB per program run when grading code"),
    unsafe_exec: bool = typer.Option(
        False,
        "--unsafe-exec",
        help="run generated code (benchmarks graded by running programs: humaneval, mbpp) without "
        "operating-system isolation when no sandbox (bwrap, unshare) works here",
    ),
    report_only: bool = typer.Option(
        False, "--report-only", help="rewrite the report from OUT/results.jsonl without sampling"
    ),
    regrade: bool = typer.Option(
        False,
        "--regrade",
        help="with --report-only: grade the rows again from their text with the current graders (benchmarks with "
        "answers or plans, not programs; taskbench: give --data, the folder the run used)",
    ),
    merge: list[Path] = typer.Option(
        [],
        "--merge",
        help="a run folder to gather into OUT (repeat; runs made side by "
        "side with other --offset ranges and the same settings); then write the report",
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="progress bar (plain lines when not a terminal)"
    ),
    threads: int | None = typer.Option(None, help=THREADS_HELP),
    concurrency: int = typer.Option(
        1,
        min=1,
        max=256,
        help="problems in flight together (for a vLLM engine or a "
        "server, which batch across requests); rows still land in problem order",
    ),
) -> None:
    """Evaluate decoding methods on a benchmark; rows are appended as they finish, so rerunning resumes."""
    from ..eval.benchmarks import ExecLimits, get_benchmark
    from ..eval.report import SUMMARY_MD
    from ..eval.runner import run_eval
    from .common import fail, load_model_or_fail, stderr

    if regrade and not report_only:
        fail("--regrade goes with --report-only")
    if merge or report_only:
        _report(out, merge, regrade, data)
        return
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    shared = dict(
        offset=offset,
        alpha=alpha,
        n_mcmc=n_mcmc,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        best_of_n=best_of_n,
        data=data,
        categories=categories,
    )
    extra = _check_before_loading(
        task, method_list, limit, shared, param, out, style, shots, exec_timeout, exec_memory_mb, threads
    )
    if get_benchmark(task).runs_programs:
        _check_sandbox(unsafe_exec)
    lm = load_model_or_fail(model, backend.value, device, tokenizer, threads=threads)
    limits = ExecLimits(exec_timeout, exec_memory_mb, unsafe_exec=unsafe_exec)
    try:
        run_eval(
            task,
            method_list,
            limit,
            lm,
            out,
            **shared,
            seed=seed,
            style=style,
            shots=shots,
            concurrency=concurrency,
            extra_params=extra,
            exec_limits=limits,
            progress=progress,
        )
    except PowerSamplingError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        stderr.print(
            "[red]interrupted[/red]: finished rows are saved; rerun the same command to resume", highlight=False
        )
        raise typer.Exit(130) from None
    typer.echo((out / SUMMARY_MD).read_text())


def _report(out: Path, merge: list[Path], regrade: bool = False, data: Path | None = None) -> None:
    """--merge (gather the folders into OUT) or --report-only (after --regrade, if given): write OUT's report and
    print it."""
    from ..eval.report import SUMMARY_MD, write_report
    from ..eval.results import RESULTS_FILE
    from .common import fail, stderr

    if merge:
        from ..eval.results import merge_runs

        try:
            n_rows = merge_runs(merge, out)
            write_report(out)
        except (PowerSamplingError, KeyError, ValueError) as exc:
            fail(str(exc))
        stderr.print(
            f"merged {n_rows} rows from {len(merge)} folders into {out / RESULTS_FILE}", highlight=False, soft_wrap=True
        )
    else:
        if not (out / RESULTS_FILE).is_file():
            fail(f"{out / RESULTS_FILE} does not exist; run the evaluation first")
        try:
            if regrade:
                _regrade(out, data)
            write_report(out)
        except (PowerSamplingError, KeyError, ValueError) as exc:
            fail(f"could not build the report from {out / RESULTS_FILE}: {exc}")
    typer.echo((out / SUMMARY_MD).read_text())


def _check_before_loading(
    task, methods, limit, shared, param, out, style, shots, exec_timeout, exec_memory_mb, threads
) -> dict:
    """Every argument and the run folder checked before the (slow) model load, so bad input loses no work; the
    extra sampler parameters."""
    from ..eval.benchmarks import STYLES
    from ..eval.results import RESULTS_FILE, prepare_run_dir, read_rows
    from ..eval.runner import check_arguments
    from .common import fail

    if style not in STYLES:
        fail(f"unknown prompt style {style!r}; choose one of: {', '.join(STYLES)}")
    if exec_timeout <= 0 or exec_memory_mb < 64:
        fail("--exec-timeout must be > 0 and --exec-memory-mb at least 64")
    if shots is not None and shots < 0:
        fail(f"--shots must be >= 0 (got {shots})")
    if threads is not None and threads < 1:
        fail(f"--threads must be >= 1 (got {threads})")
    try:
        extra = parse_params(param)
        check_arguments(task, methods, limit, extra_params=extra, **shared)
        prepare_run_dir(out)
        read_rows(out / RESULTS_FILE)
    except (PowerSamplingError, ValueError) as exc:
        fail(str(exc))
    return extra


def _check_sandbox(unsafe_exec: bool) -> None:
    from ..sandbox import require_isolation
    from .common import fail, stderr

    try:
        isolation = require_isolation(unsafe_exec)
    except PowerSamplingError as exc:
        fail(str(exc))
    if isolation == "none":
        stderr.print(
            "[yellow]warning:[/yellow] generated programs run WITHOUT isolation (--unsafe-exec)", highlight=False
        )


def _regrade(out: Path, data: Path | None) -> None:
    from ..eval.benchmarks import get_benchmark, load_problems
    from ..eval.results import RESULTS_FILE, SETTINGS_FILE, read_rows, write_rows
    from ..eval.runner import regrade_rows
    from .common import fail, stderr

    results = out / RESULTS_FILE
    rows = read_rows(results)
    problems = []
    if data is not None:
        settings = json.loads((out / SETTINGS_FILE).read_text()).get("settings", {})
        benchmark = get_benchmark(settings.get("task"))
        problems = load_problems(benchmark.name, None, 0, data=data)
        ran_on = settings.get("data")
        if ran_on is not None and ran_on != benchmark.data_fingerprint(problems):
            fail(f"--data {data} is not the data {out} was run on (fingerprint {ran_on})")
    changed = regrade_rows(rows, problems)
    write_rows(results, rows)
    stderr.print(f"regraded {len(rows)} rows of {results}: {changed} changed verdict", highlight=False, soft_wrap=True)
