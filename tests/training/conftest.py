"""Fixtures for the training tests: one tiny base model per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tiny_lm


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_lm.build_base(tmp_path_factory.mktemp("tiny") / "base")
