"""Shared fixtures. Topic-specific fixtures live beside their tests (tests/fixtures_*.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """No test reads the developer's config, OpenStack env or history file."""
    for var in list(os.environ):
        if var.startswith(("OS_", "AWS_")):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOCPICK_CONFIG", str(HERE / "empty-config.toml"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
