"""Command line: ``powersampling generate|plan|serve|eval``. A thin adapter over the Python API."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import PowerSamplingError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Exact power sampling (p^alpha) for language models.",
)
stderr = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Exact power sampling (p^alpha) for language models."""


class Method(str, Enum):
    power = "power"
    sample = "sample"
    low_temp = "low-temp"
    greedy = "greedy"
    best_of_n = "best-of-n"
    smc = "smc"


class Backend(str, Enum):
    auto = "auto"
    transformers = "transformers"
    llama_cpp = "llama.cpp"
    vllm = "vllm"
    remote = "remote"


THREADS_HELP = "CPU threads of the local engine (default: the engine's; on an idle machine all cores are fastest)"
MODEL_HELP = "local model folder, .gguf file or server URL (default: embedded SmolLM2-135M-Instruct)"
TOKENIZER_HELP = "tokenizer folder for a remote model"


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the CLI's answer to any bad input."""
    stderr.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def load_model_or_fail(model: Optional[str], backend: str = "auto", device: str = "cpu",
                       tokenizer: Optional[str] = None, **kwargs):
    """``load_model`` with any load error as one line and exit code 2; ``tokenizer`` is for a remote model."""
    from .backends import load_model

    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    try:
        with stderr.status(f"loading {model or 'the embedded model'}..."):
            return load_model(model, backend=backend, device=device, **kwargs)
    except PowerSamplingError as exc:
        fail(str(exc))


class SamplerProgress:
    """A rich progress bar on stderr fed by sampler ProgressEvents."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            console=stderr, transient=True, disable=not enabled,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("sampling", total=None, info="")
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, event) -> None:
        if event.kind == "done":
            return
        if self.progress.disable:  # not a terminal: one plain line per block instead of a live bar
            if event.kind == "block":
                stderr.print(f"block {event.block}/{event.blocks_total}: tokens {event.tokens_generated}, "
                             f"accepted {event.accepted}/{event.proposed}", highlight=False)
            return
        info = f"tokens {event.tokens_generated}"
        if event.proposed:
            info += f"  accept {event.accepted}/{event.proposed} ({event.acceptance_rate:.0%})"
        if event.extra.get("ess") is not None:
            info += f"  ESS {event.extra['ess']:.1f}"
        description = f"block {event.block}/{event.blocks_total}" if event.blocks_total else event.kind
        if event.kind == "mh_step":
            description += f" step {event.step}/{event.steps_total}"
        self.progress.update(self.task, total=event.blocks_total or None, completed=event.block, info=info,
                             description=description)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="the prompt text"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    backend: Backend = typer.Option(Backend.auto, help="engine for the model"),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    device: str = typer.Option("cpu", help="torch device for the transformers backend (cpu, cuda, cuda:1)"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    method: Method = typer.Option(Method.power, help="decoding method"),
    alpha: float = typer.Option(4.0, help="power of the target p^alpha (power, smc, low-temp)"),
    mcmc_steps: int = typer.Option(10, "--mcmc-steps", help="MH steps after each block"),
    block_size: int = typer.Option(16, help="tokens per block"),
    max_new_tokens: int = typer.Option(96, help="generated tokens at most"),
    chains: Optional[int] = typer.Option(None, help="independent MH chains (batched rows; default 1), or SMC particles (default 8)"),
    scan: str = typer.Option("random", help="MH cut order: random (the paper's) or sorted (exact too; one batched call per block)"),
    temperature: Optional[float] = typer.Option(None, help="sampling temperature (sample, best-of-n); MH proposal temperature (power; default 1/alpha)"),
    n: int = typer.Option(4, help="candidates for best-of-n"),
    seed: Optional[int] = typer.Option(None, help="random seed (the same seed gives the same text on CPU)"),
    deadline: Optional[float] = typer.Option(None, help="overall time limit in seconds; the best state so far is returned"),
    raw: bool = typer.Option(False, "--raw", help="no chat template (for base models)"),
    system: Optional[str] = typer.Option(None, help="system message for the chat template"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object {text, method, metadata} on stdout"),
) -> None:
    """Generate a completion, by default with Metropolis-Hastings power sampling."""
    from .samplers import build_sampler, prompt_ids

    if not prompt.strip():
        fail("the prompt is empty")
    params = dict(
        alpha=alpha, n_mcmc=mcmc_steps, block_size=block_size, max_new_tokens=max_new_tokens, seed=seed,
        deadline_s=deadline,
    )
    if method is Method.power:
        params.update(n_chains=1 if chains is None else chains, proposal_temperature=temperature, scan=scan)
    elif method is Method.smc:
        params.update(n_particles=chains)  # None keeps SMCConfig's default; one particle would be low-temp sampling
    elif method in (Method.sample, Method.best_of_n):
        params.update(temperature=1.0 if temperature is None else temperature)
        if method is Method.best_of_n:
            params.update(n=n)
    try:
        build_sampler(method.value, None, **params)  # validate before the (slow) model load
    except PowerSamplingError as exc:
        fail(str(exc))
    lm = load_model_or_fail(model, backend.value, device, tokenizer, threads=threads)
    try:
        sampler = build_sampler(method.value, lm, **params)
        ids = prompt_ids(lm, prompt, chat=False if raw else None, system=system)
        with SamplerProgress(enabled=stderr.is_terminal) as progress:
            result = sampler.sample(ids, progress=progress)
    except (PowerSamplingError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted")
    if as_json:
        typer.echo(json.dumps({"text": result.text, "method": result.method, "metadata": result.metadata}))
        return
    typer.echo(result.text)
    md = result.metadata
    summary = f"[dim]{result.method}: {md.get('final_tokens')} tokens, {md.get('tokens_generated')} decoded, {md.get('latency_ms', 0) / 1000:.1f} s"
    if "acceptance_rate" in md:
        summary += f", acceptance {md['acceptance_rate']:.0%}"
    stderr.print(summary + f", stopped by {md.get('stopped_by')}, seed {md.get('seed')}[/dim]", highlight=False)


def _register_optional_commands() -> None:
    """Subcommands that live next to the code they drive."""
    from .eval.cli import eval_command
    from .planner.cli import plan_command
    from .server.cli import serve_command

    app.command("plan")(plan_command)
    app.command("serve")(serve_command)
    app.command("eval")(eval_command)


def main() -> None:
    """Entry point: click's usage errors become one line and exit code 2 instead of a usage box."""
    _register_optional_commands()
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click_exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(0)
    except click_exceptions.UsageError as exc:
        stderr.print(f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click_exceptions.ClickException as exc:
        stderr.print(f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, ) as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        stderr.print("[red]error:[/red] interrupted", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
