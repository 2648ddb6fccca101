"""``powersampling serve``: load a model and run the HTTP service with uvicorn."""

from __future__ import annotations

import logging
import socket
from typing import Any

import typer

from ..errors import PowerSamplingError
from ..server.settings import ServerSettings
from .common import BACKEND_HELP, MODEL_HELP, TOKENIZER_HELP, Backend, fail


def _setting(name: str, *flags: str) -> Any:
    """A typer option whose default and help are the ``ServerSettings`` field's, so they are written once (the
    settings validate the value; a bad one is a one-line error)."""
    field = ServerSettings.model_fields[name]
    return typer.Option(field.default, *flags, help=field.description)


def serve_command(
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes the server to the network)"),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port"),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
    tokenizer: str | None = typer.Option(None, help=TOKENIZER_HELP),
    device: str = typer.Option("cpu", help="torch device for the transformers backend"),
    api_key: str | None = typer.Option(
        None,
        envvar="POWERSAMPLING_API_KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (or set POWERSAMPLING_API_KEY)",
    ),
    served_model_name: str | None = _setting("model_name"),
    default_method: str = _setting("default_method"),
    workers: int = _setting("workers"),
    max_queue: int = _setting("max_queue"),
    request_timeout: float = _setting("request_timeout_s"),
    max_tokens_limit: int = _setting("max_tokens_limit"),
    log_prompts: bool = _setting("log_prompts", "--log-prompts"),
    docs: bool = _setting("docs", "--docs/--no-docs"),
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
) -> None:
    """Serve OpenAI-compatible completions with power sampling, the planner, /metrics and /health."""
    from ..observability.tracing import configure_tracing_from_env
    from .common import load_model_or_fail

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
    lm = load_model_or_fail(model, backend.value, device, tokenizer)
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
