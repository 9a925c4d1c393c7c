"""Shared fixtures: a loopback OpenAI-compatible upstream in its own thread."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must never reach for the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio
import threading
from collections.abc import Iterator

import pytest



class ThreadedUpstream:
    """A LoopbackUpstream running on its own event loop in a thread, so both sync and async
    tests can use it while the gateway runs in another thread."""

    def __init__(self) -> None:
        # imported here, so that the GPU machine (torch and friends only) can collect the tests
        from eval.loopback_upstream import LoopbackUpstream

        self.loop = asyncio.new_event_loop()
        self.upstream = LoopbackUpstream()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "LoopbackUpstream":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.upstream.start(), self.loop).result(10)
        return self.upstream

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.upstream.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def upstream() -> Iterator["LoopbackUpstream"]:
    with ThreadedUpstream() as up:
        yield up
