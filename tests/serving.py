"""Run the real gateway app under uvicorn in a background thread, on a free loopback port.

Tests talk to it over real sockets with the official clients (openai, ollama), exactly as an
editor would; the app's lifespan runs as in production.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config


def loopback_models(base_url: str, *, master_sword: str = "parrot") -> str:
    """The ``[[backends]]`` and ``[[models]]`` TOML that the request-log and A/B tests share: one
    OpenAI-compatible backend ``up`` (the loopback upstream at ``base_url``, no retries) serving
    ``euclid-asm`` (its ``echo`` model), ``master-sword`` (``master_sword``) and ``refuser``
    (answers 400)."""
    return f"""
[[backends]]
name = "up"
kind = "openai"
base_url = "{base_url}"
retries = 0

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"
upstream_model = "echo"

[[models]]
name = "master-sword"
oracle = "system"
backend = "up"
upstream_model = "{master_sword}"

[[models]]
name = "refuser"
oracle = "oracle-din"
backend = "up"
upstream_model = "status-400"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedASGIServer:
    """An ASGI app (``self.app``, set by the subclass) under uvicorn in a daemon thread, on a free
    loopback port: the base of the wire-format test servers. Use as a context manager."""

    app: object
    label = "test server"
    port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=self.label, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the {self.label} did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if getattr(self, "_server", None) is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    if config.state.enabled and not config.state.db:
        # tests never write into the user's $ORACLE_COUNCIL_HOME/state.db: a fresh file per gateway
        db = os.path.join(tempfile.mkdtemp(prefix="oc-test-state-"), "state.db")
        config = config.model_copy(update={"state": config.state.model_copy(update={"db": db})})
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
