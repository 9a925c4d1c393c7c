"""Fixtures for the in-process backend's tests (test_local.py, test_batching.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.backends.local import LocalBackend, _TextStream
from tests.backends.localkit import build_artifacts, make_backend


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def backend(artifacts: dict[str, Path]) -> Iterator[LocalBackend]:
    # Module-wide (loading costs a second); the backend keeps no event-loop state, so each
    # test's own loop may use it.
    b = make_backend(artifacts)
    yield b
    asyncio.run(b.aclose())


@pytest.fixture
def generated_tokens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every token any generation produces, end-of-sequence tokens aside (a spy on the
    text stream)."""
    seen = [0]
    push = _TextStream.push

    def counting_push(self: _TextStream, token: int) -> bool:
        seen[0] += 1
        return push(self, token)

    monkeypatch.setattr(_TextStream, "push", counting_push)
    return seen
