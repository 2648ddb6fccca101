"""``powersampling plan``: decompose a request into a task DAG and print it as a tree, JSON, Mermaid or DOT."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from enum import Enum
from types import SimpleNamespace

import typer

from ..planner.generation import RouteSettings
from .common import BACKEND_HELP, MODEL_HELP, THREADS_HELP, TOKENIZER_HELP, Backend, route_choices

PlanRoute = route_choices()


class PlanFormat(str, Enum):
    tree = "tree"
    json = "json"
    mermaid = "mermaid"
    dot = "dot"


def plan_command(
    request: str = typer.Argument(..., help="what to plan"),
    method: PlanRoute | None = typer.Option(
        None, help="route; default: POWER_SAMPLING_HTDAG_ENABLED and POWER_SAMPLING_ROLLOUT_PERCENT decide"
    ),
    max_depth: int = typer.Option(1, "--max-depth", help="levels of subtasks (1: top-level tasks only)"),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
    tokenizer: str | None = typer.Option(None, help=TOKENIZER_HELP),
    device: str = typer.Option("cpu", help="torch device for the transformers backend (cpu, cuda, cuda:1)"),
    threads: int | None = typer.Option(None, help=THREADS_HELP),
    output_format: PlanFormat = typer.Option(PlanFormat.tree, "--format", help="output format"),
    as_json: bool = typer.Option(False, "--json", help="same as --format json"),
    context: str | None = typer.Option(None, help="extra context for the planner (text)"),
    tools: str | None = typer.Option(None, help="comma-separated closed list of tools the tasks must use"),
    tools_file: str | None = typer.Option(
        None,
        "--tools-file",
        help="JSON file of tools: OpenAI function tools, an MCP tools/list result or TaskBench's tools.json; "
        "every task then calls one of them with arguments that follow its JSON Schema",
    ),
    tools_module: str | None = typer.Option(
        None,
        "--tools-module",
        help="Python file whose typed functions (or TOOLS list) are the tools; their JSON Schema comes from the "
        "signatures. Needed by --execute",
    ),
    execute: bool = typer.Option(
        False, "--execute", help="run the plan's calls with the --tools-module functions and show results and timing"
    ),
    call_timeout: float = typer.Option(30.0, "--call-timeout", help="seconds each tool call may take (--execute)"),
    max_replans: int = typer.Option(1, "--max-replans", help="failed calls replanned by the model (--execute)"),
    concurrency: int = typer.Option(4, "--concurrency", help="tool calls running at once (--execute)"),
    max_tasks_per_level: int = typer.Option(6, "--max-tasks-per-level", help="subtasks per task at most"),
    alpha: float | None = typer.Option(None, help=f"power (default: POWER_SAMPLING_ALPHA or {RouteSettings.alpha})"),
    mcmc_steps: int | None = typer.Option(
        None, "--mcmc-steps", help=f"MH steps per block (default: POWER_SAMPLING_N_MCMC or {RouteSettings.n_mcmc})"
    ),
    block_size: int | None = typer.Option(
        None, help=f"tokens per block (default: POWER_SAMPLING_BLOCK_SIZE or {RouteSettings.block_size})"
    ),
    n: int = typer.Option(RouteSettings.best_of_n, help="candidates for best-of-n"),
    quality_margin: float | None = typer.Option(
        RouteSettings.quality_margin,
        help="best-of-n: draw plans in rounds and stop once a round does not raise the best quality score by more "
        "than this margin (default: draw all n)",
    ),
    temperature: float = typer.Option(
        RouteSettings.temperature, help="sampling temperature of the baseline and best-of-n routes"
    ),
    seed: int | None = typer.Option(None, help="random seed"),
    deadline: float | None = typer.Option(None, help="overall time limit in seconds"),
) -> None:
    """Decompose REQUEST into a hierarchical task DAG (grammar-constrained JSON from the model)."""
    from ..errors import PowerSamplingError
    from ..planner.export import dag_to_dict, dag_to_json, to_dot, to_mermaid, to_tree
    from ..planner.planner import Planner, PlannerConfig
    from ..planner.routing import RoutingConfig
    from ..planner.tools import load_tools
    from .common import SamplerProgress, fail, load_model_or_fail, stderr

    if not request.strip():
        fail("the request is empty")
    fmt = PlanFormat.json if as_json else output_format
    try:
        routing = RoutingConfig.from_env()
        settings = RouteSettings(
            alpha=alpha if alpha is not None else routing.settings.alpha,
            n_mcmc=mcmc_steps if mcmc_steps is not None else routing.settings.n_mcmc,
            block_size=block_size if block_size is not None else routing.settings.block_size,
            temperature=temperature,
            best_of_n=n,
            seed=seed,
            quality_margin=quality_margin,
        )
        if sum(x is not None for x in (tools, tools_file, tools_module)) > 1:
            fail("give one of --tools, --tools-file and --tools-module")
        if execute and tools_module is None:
            fail("--execute needs --tools-module (the functions that run the calls)")
        tool_list = tuple(t.strip() for t in tools.split(",") if t.strip()) if tools is not None else None
        if tools_file is not None:
            tool_list = load_tools(tools_file)
        if tools_module is not None:
            from ..agents import load_tools_module

            tool_list = load_tools_module(tools_module)
        executor = None
        if execute:
            from ..agents import Executor

            executor = Executor(tool_list, timeout_s=call_timeout, max_concurrency=concurrency, max_replans=max_replans)
        config = PlannerConfig(
            argument_references=execute,
            max_depth=max_depth,
            route=method.value if method else None,
            tools=tool_list,
            max_children=max_tasks_per_level,
            min_children=min(2, max_tasks_per_level),
            deadline_s=deadline,
            settings=settings,
        )
        Planner(None, config, routing=routing)  # validates settings before the (slow) model load
    except (PowerSamplingError, ValueError) as exc:
        fail(str(exc))
    lm = load_model_or_fail(model, backend.value, device, tokenizer, threads=threads)
    logging.getLogger("powersampling.planner").setLevel(logging.ERROR)  # stages go to stderr below instead
    try:
        with SamplerProgress(enabled=stderr.is_terminal) as progress:
            planner = Planner(
                lm,
                config,
                routing=routing,
                progress=progress,
                on_stage=lambda msg: stderr.print(f"[dim]{msg}[/dim]", highlight=False),
            )
            execution = None
            if executor is None:
                dag = planner.decompose(request, context)
            else:  # calls start as their tasks are decoded (baseline route) or once the plan is complete
                executor.planner, executor.model_name = planner, getattr(lm, "name", "none")
                executor.on_event = _print_call
                execution = asyncio.run(executor.run_plan(planner, request, context))
                dag = execution.dag
    except (PowerSamplingError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted")
    if fmt is PlanFormat.json and execution is not None:
        typer.echo(json.dumps({"plan": dag_to_dict(dag), "execution": execution.to_dict()}, indent=2))
    elif fmt is PlanFormat.json:
        typer.echo(dag_to_json(dag))
    elif fmt is PlanFormat.mermaid:
        typer.echo(to_mermaid(dag), nl=False)
    elif fmt is PlanFormat.dot:
        typer.echo(to_dot(dag), nl=False)
    else:
        typer.echo(to_tree(dag), nl=False)
    md = dag.metadata
    note = f", fell back: {md['fallback_reason']}" if md["fallback"] else ""
    flags = f", flagged: {', '.join(md['safety_flags'])}" if md.get("safety_flags") else ""
    stderr.print(
        f"[dim]{md['route']} route, {len(dag)} tasks, quality {md['quality_score']:.2f}, "
        f"{md['model_calls']} model calls, {md['latency_ms'] / 1000:.1f} s{note}{flags}[/dim]",
        highlight=False,
    )
    if execution is not None:
        first = execution.first_call_started_s
        counts = Counter(c.status for c in execution.calls)
        stderr.print(
            f"[dim]executed: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}, "
            f"{execution.replans} replans, {execution.elapsed_s:.2f} s; first tool call "
            + (
                f"{first:.2f} s after planning started (plan {md['latency_ms'] / 1000:.2f} s)"
                if first is not None
                else "never"
            )
            + "[/dim]",
            highlight=False,
            soft_wrap=True,
        )
        if not execution.ok:
            raise typer.Exit(1)


def _print_call(kind: str, call) -> None:
    """One stderr line per finished call: the call, its result or error, when it started and how long it took."""
    from ..planner.export import call_text
    from .common import stderr

    if kind != "end":
        return
    shown = call_text(SimpleNamespace(tool=call.tool, arguments=call.arguments))
    outcome = repr(call.output) if call.status == "ok" else f"{call.status}: {call.error}"
    if len(outcome) > 200:
        outcome = outcome[:197] + "..."
    stderr.print(
        f"{call.task_id} {shown} -> {outcome}"
        + (f"  [+{call.started_s:.2f} s, {call.duration_s * 1000:.0f} ms]" if call.started_s is not None else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
