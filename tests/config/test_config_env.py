"""The environment is read once, at the edge: a Client uses the ``Environment`` it is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from locpick.client import Client
from locpick.config.env import Environment, resolve_config


def test_client_takes_contract_variables_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[probe]\ndeadline = 7.0\n")
    env = Environment(
        {
            "OS_IMAGE_URL": "http://127.0.0.1:9/glance",
            "OS_AUTH_TOKEN": "tok-secret",
            "LOCPICK_CONFIG": str(cfg),
        }
    )
    with Client(env=env) as client:
        assert client.glance_url == "http://127.0.0.1:9/glance"
        assert client._ctx.token == "tok-secret"
        assert client.config.probe.deadline == 7.0
    assert "tok-secret" not in repr(env)


def test_the_process_environment_is_not_read_below_the_edge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an environment, the client ignores the process's own (read once, at the edge)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OS_IMAGE_URL", "http://127.0.0.1:9/from-process")
    monkeypatch.setenv("LOCPICK_CONFIG", str(tmp_path / "missing.toml"))
    with Client(env=Environment({})) as client:
        assert client.glance_url is None
    assert resolve_config(None, Environment({})).source_path is None
