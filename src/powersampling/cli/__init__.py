"""Command line: ``powersampling generate|plan|serve|eval|doctor``. A thin adapter over the Python API; each subcommand
lives in its own module and shares helpers through ``cli.common``."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from .common import stderr

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Exact power sampling (p^alpha) for language models.",
)


@app.callback()
def _root() -> None:
    """Exact power sampling (p^alpha) for language models."""


COMMANDS = {
    "generate": ("generate", "generate"),
    "plan": ("plan", "plan_command"),
    "serve": ("serve", "serve_command"),
    "eval": ("eval", "eval_command"),
    "doctor": ("doctor", "doctor_command"),
}


def _register_commands(argv: list[str]) -> None:
    """Register the subcommand being run, or all of them when none is named (for the command list): each one
    imports what its options need, so ``powersampling generate --help`` does not load the planner or the server."""
    import importlib

    named = [a for a in argv[1:2] if a in COMMANDS]
    for name in named or COMMANDS:
        module, function = COMMANDS[name]
        app.command(name)(getattr(importlib.import_module(f".{module}", __name__), function))


def main() -> None:
    """Entry point: click's usage errors become one line and exit code 2 instead of a usage box."""
    _register_commands(sys.argv)
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
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        stderr.print("[red]error:[/red] interrupted", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
