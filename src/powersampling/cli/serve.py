"""``powersampling serve``: load a model and run the HTTP service with uvicorn."""

from __future__ import annotations

import logging
import socket

import typer

from ..errors import PowerSamplingError
from .common import BACKEND_HELP, MODEL_HELP, TOKENIZER_HELP, fail


def serve_command(
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes the server to the network)"),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port"),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    tokenizer: str | None = typer.Option(None, help=TOKENIZER_HELP),
    device: str = typer.Option("cpu", help="torch device for the transformers backend"),
    api_key: str | None = typer.Option(
        None,
        envvar="POWERSAMPLING_API_KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (or set POWERSAMPLING_API_KEY)",
    ),
    served_model_name: str | None = typer.Option(None, help="model id in /v1/models (default: the model's name)"),
    default_method: str = typer.Option("power", help="decoding method when a request names none"),
    workers: int = typer.Option(1, min=1, max=64, help="sampling threads (1 for transformers and llama.cpp models)"),
    max_queue: int = typer.Option(16, min=0, help="requests waiting for a worker before answering 429"),
    request_timeout: float = typer.Option(120.0, help="seconds per request, queueing included, before 504"),
    max_tokens_limit: int = typer.Option(2048, min=1, help="largest max_tokens a request may ask for"),
    log_prompts: bool = typer.Option(False, "--log-prompts", help="log prompts and completions (off by default)"),
    docs: bool = typer.Option(
        True,
        "--docs/--no-docs",
        help="serve /docs, a self-contained API reference page (no scripts, nothing fetched from a CDN or anywhere "
        "else; no Swagger UI or ReDoc), and /openapi.json",
    ),
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
) -> None:
    """Serve OpenAI-compatible completions with power sampling, the planner, /metrics and /health."""
    from ..observability.tracing import configure_tracing_from_env
    from ..samplers import available_methods
    from ..server.settings import ServerSettings
    from .common import load_model_or_fail

    if default_method not in available_methods():
        fail(f"unknown method {default_method!r}; choose one of: {', '.join(available_methods())}")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        fail(f"unknown log level {log_level!r}; choose debug, info, warning or error")
    try:
        settings = ServerSettings(
            model_name=served_model_name,
            api_key=api_key,
            default_method=default_method,
            workers=workers,
            max_queue=max_queue,
            request_timeout_s=request_timeout,
            max_tokens_limit=max_tokens_limit,
            log_prompts=log_prompts,
            docs=docs,
        )
    except ValueError as exc:
        fail(_first_error(exc))
    try:
        configure_tracing_from_env()
    except ValueError as exc:
        fail(str(exc))
    # bound before the (slow) model load, so that a taken port or a bad host is one line at once
    sockets = _bind(host, port)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))  # a line per remote call
    lm = load_model_or_fail(model, backend, device, tokenizer)
    import uvicorn

    from ..server.app import create_app

    try:
        app = create_app(lm, settings)
    except PowerSamplingError as exc:
        fail(str(exc))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=True))
    # uvicorn says where it listens only for sockets it bound itself
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, sockets[0].getsockname()[1]
    )
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise typer.Exit(3)  # uvicorn's code for a failed startup, which it has logged


def _bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound on every address of ``host``, as asyncio (and so uvicorn) would bind them; a one-line error and
    exit code 2 when any cannot be."""
    sockets: list[socket.socket] = []
    try:
        addresses = {
            (family, address)
            for family, _, _, _, address in socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        }
        for family, address in sorted(addresses, key=str):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # else [::] would also claim the IPv4 port bound next to it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    return sockets


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"invalid server setting {'.'.join(map(str, first['loc']))}: {first['msg']}"
    return f"invalid server setting: {exc}"
