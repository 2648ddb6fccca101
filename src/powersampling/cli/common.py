"""What the subcommands share: one-line errors, model loading, the progress bar, option help texts and choices.

Every subcommand module imports from here (never from the package ``__init__``, which imports them)."""

from __future__ import annotations

import json
from enum import Enum

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..backends.loading import BACKENDS
from ..errors import PowerSamplingError

stderr = Console(stderr=True)


# the engine choices, from the one list load_model checks
Backend = Enum("Backend", {name.replace(".", "_"): name for name in BACKENDS}, type=str)
BACKEND_HELP = f"engine for the model: {', '.join(BACKENDS)}"


def route_choices(name: str = "PlanRoute") -> type[Enum]:
    """The planner routes (from the method registry) as a CLI choice type."""
    from ..samplers import planner_routes

    return Enum(name, {r.replace("-", "_"): r for r in planner_routes()}, type=str)


def method_choices(name: str = "Method") -> type[Enum]:
    """The decoding methods of the registry as a CLI choice type."""
    from ..samplers import method_names

    return Enum(name, {m.replace("-", "_"): m for m in method_names()}, type=str)


THREADS_HELP = "CPU threads of the local engine (default: the engine's; on an idle machine all cores are fastest)"
MODEL_HELP = "local model folder, .gguf file or server URL (default: embedded SmolLM2-135M-Instruct)"
TOKENIZER_HELP = "tokenizer folder for a remote model"


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the CLI's answer to any bad input."""
    stderr.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def load_model_or_fail(
    model: str | None, backend: str = "auto", device: str = "cpu", tokenizer: str | None = None, **kwargs
):
    """``load_model`` with any load error as one line and exit code 2; ``tokenizer`` is for a remote model."""
    from ..backends import load_model

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
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
            disable=not enabled,
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
                stderr.print(
                    f"block {event.block}/{event.blocks_total}: tokens {event.tokens_generated}, "
                    f"accepted {event.accepted}/{event.proposed}",
                    highlight=False,
                )
            return
        info = f"tokens {event.tokens_generated}"
        if event.proposed:
            info += f"  accept {event.accepted}/{event.proposed} ({event.acceptance_rate:.0%})"
        if event.extra.get("ess") is not None:
            info += f"  ESS {event.extra['ess']:.1f}"
        description = f"block {event.block}/{event.blocks_total}" if event.blocks_total else event.kind
        if event.kind == "mh_step":
            description += f" step {event.step}/{event.steps_total}"
        self.progress.update(
            self.task, total=event.blocks_total or None, completed=event.block, info=info, description=description
        )


PARAM_HELP = (
    "a sampler parameter name=value (repeatable), e.g. --param scan=sorted, --param top_k=4 "
    "(any field of the method's config; values read as JSON when they parse); METHOD.name=value sets it for "
    "that method only, e.g. --param scalable-power.top_k=4"
)


def parse_params(items: list[str]) -> dict:
    """``name=value`` pairs (``name`` may be ``METHOD.name``); values are read as JSON when they parse (numbers,
    true/false), else kept as text."""
    params = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--param expects name=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        scope, dot, key = name.strip().rpartition(".")
        params[scope + dot + key.replace("-", "_")] = value
    return params
