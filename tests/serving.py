"""Run the real gateway app under uvicorn in a background thread, on a free loopback port.

Tests talk to it over real sockets with the official clients (openai, ollama), exactly as an
editor would; the app's lifespan runs as in production.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningGateway:
    url: str
    app: object

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@contextmanager
def serve(config: GatewayConfig | str, *, startup_timeout: float = 120.0) -> Iterator[RunningGateway]:
    """Serve ``config`` (a GatewayConfig or TOML text) until the block ends."""
    if isinstance(config, str):
        config = parse_config(config)
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway failed to start; see the log above")
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not start in time")
        time.sleep(0.02)
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
