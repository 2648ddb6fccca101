"""Run the app with uvicorn on a background thread (tests, notebooks, an eval harness that wants a local server)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class BackgroundServer:
    """``with BackgroundServer(app) as server: server.url`` serves ``app`` on loopback on a free port."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning", start_timeout_s: float = 20.0
    ) -> None:
        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self.host, self.port = host, port
        self.start_timeout_s = start_timeout_s
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="powersampling-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        end = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
