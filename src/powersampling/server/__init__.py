"""The OpenAI-compatible server: ``create_app(model, settings)`` and the ``powersampling serve`` command.

Imports are lazy so that registering the CLI command does not pull FastAPI into every ``powersampling`` call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerSettings":
        from .settings import ServerSettings

        return ServerSettings
    raise AttributeError(name)
