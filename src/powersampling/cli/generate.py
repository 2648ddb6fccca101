"""``powersampling generate``: one completion by any registered method, with a progress bar."""

from __future__ import annotations

import json

import typer

from ..backends.base import check_context_length
from ..errors import ContextLengthError, PowerSamplingError
from ..samplers.config import BestOfNConfig, PowerSamplingConfig, SMCConfig, default
from ..samplers.registry import DEFAULT_METHOD
from .common import (
    BACKEND_HELP,
    MODEL_HELP,
    PARAM_HELP,
    THREADS_HELP,
    TOKENIZER_HELP,
    Backend,
    SamplerProgress,
    fail,
    load_model_or_fail,
    method_choices,
    parse_params,
    stderr,
)

Method = method_choices()


def _defaults(field: str, config: type = PowerSamplingConfig):
    return default(config, field)


def generate(
    prompt: str = typer.Argument(..., help="the prompt text"),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
    tokenizer: str | None = typer.Option(None, help=TOKENIZER_HELP),
    device: str = typer.Option("cpu", help="torch device for the transformers backend (cpu, cuda, cuda:1)"),
    threads: int | None = typer.Option(None, help=THREADS_HELP),
    method: Method = typer.Option(DEFAULT_METHOD, help="decoding method"),
    alpha: float | None = typer.Option(
        None, help=f"power of the target p^alpha (power, smc, low-temp; default {_defaults('alpha')})"
    ),
    mcmc_steps: int | None = typer.Option(
        None, "--mcmc-steps", help=f"MH steps after each block (default {_defaults('n_mcmc')})"
    ),
    block_size: int | None = typer.Option(None, help=f"tokens per block (default {_defaults('block_size')})"),
    max_new_tokens: int | None = typer.Option(
        None, help=f"generated tokens at most (default {_defaults('max_new_tokens')})"
    ),
    chains: int | None = typer.Option(
        None,
        help=f"independent MH chains (batched rows; default {_defaults('n_chains')}), or SMC particles "
        f"(default {_defaults('n_particles', SMCConfig)})",
    ),
    scan: str | None = typer.Option(
        None,
        help="MH cut order: sorted (default; stratified cuts, one batched call per block), random (the "
        "paper's uniform cut over the current tokens) or entropy (cuts weighted by next-token entropy; local "
        "backends); all exact",
    ),
    temperature: float | None = typer.Option(
        None,
        help="sampling temperature (sample, best-of-n; default 1); proposal temperature (power, smc, "
        "scalable-power; default 1/alpha)",
    ),
    n: int | None = typer.Option(None, help=f"candidates for best-of-n (default {_defaults('n', BestOfNConfig)})"),
    seed: int | None = typer.Option(None, help="random seed (the same seed gives the same text on CPU)"),
    deadline: float | None = typer.Option(
        None, help="overall time limit in seconds; the best state so far is returned"
    ),
    raw: bool = typer.Option(False, "--raw", help="no chat template (for base models)"),
    system: str | None = typer.Option(None, help="system message for the chat template"),
    select: str | None = typer.Option(
        None,
        help="default, or majority: the answer most outputs agree on (best-of-n candidates, --chains MH "
        "chains, SMC particles)",
    ),
    answer_regex: str | None = typer.Option(
        None,
        help="with --select majority: a regular expression whose last match (or first group) is an output's "
        "answer (default: the last number)",
    ),
    param: list[str] = typer.Option([], "--param", help=PARAM_HELP),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object {text, method, metadata} on stdout"),
) -> None:
    """Generate a completion, by default with Metropolis-Hastings power sampling."""
    from ..samplers import build_sampler, prompt_ids, validate_params
    from ..samplers.params import KnobError, knob_params

    if not prompt.strip():
        fail("the prompt is empty")
    if chains is not None and chains < 1:
        fail(f"--chains must be >= 1 (got {chains})")
    params = dict(
        alpha=alpha,
        n_mcmc=mcmc_steps,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        deadline_s=deadline,
        scan=scan,
    )
    try:
        knobs = dict(chains=chains, temperature=temperature, n=n, select=select, answer_regex=answer_regex)
        params.update(knob_params(method.value, **knobs))
    except KnobError as exc:
        fail(exc.for_param("--" + exc.knob.replace("_", "-")))
    try:
        given = parse_params(param)
        if scoped := [k for k in given if "." in k]:
            fail(f"--param {scoped[0]}: METHOD.name is for eval; generate runs one method, give name=value")
        params.update(given)
        config = validate_params(method.value, **params)  # before the (slow) model load
    except (PowerSamplingError, ValueError) as exc:
        fail(str(exc))
    lm = load_model_or_fail(model, backend.value, device, tokenizer, threads=threads)
    try:
        sampler = build_sampler(method.value, lm, **params)
        ids = prompt_ids(lm, prompt, chat=False if raw else None, system=system)
        check_context_length(lm, len(ids), config.max_new_tokens)
        with SamplerProgress(enabled=stderr.is_terminal) as progress:
            result = sampler.sample(ids, progress=progress)
    except ContextLengthError as exc:
        fail(f"{exc}; shorten the prompt or lower --max-new-tokens")
    except (PowerSamplingError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted")
    if as_json:
        typer.echo(json.dumps({"text": result.text, "method": result.method, "metadata": result.metadata}))
        return
    typer.echo(result.text)
    md = result.metadata
    summary = (
        f"[dim]{result.method}: {md.get('final_tokens')} tokens, {md.get('tokens_generated')} decoded, "
        f"{md.get('latency_ms', 0) / 1000:.1f} s"
    )
    if "acceptance_rate" in md:
        summary += f", acceptance {md['acceptance_rate']:.0%}"
    stderr.print(summary + f", stopped by {md.get('stopped_by')}, seed {md.get('seed')}[/dim]", highlight=False)
