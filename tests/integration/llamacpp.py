"""A llama.cpp server (``python -m llama_cpp.server --config_file``) for the integration tests:
started on a free port with the given model entries, waited for, and always stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.serving import free_port


@contextmanager
def running_llamacpp(models: list[dict], workdir: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """Serve ``models`` (llama_cpp.server model entries: model, model_alias, lora_path, ...);
    yields the server's ``/v1`` base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (workdir / "config.json").write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}))
    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", "config.json"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start in {timeout:g} s:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
