"""examples/cache_node.py and examples/verify_replicas.py run end to end on loopback."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT


def _run(name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_cache_node_example_serves_b_from_a_after_origins_die() -> None:
    """Node B gets the verified image from node A's served cache when every origin is gone."""
    r = _run("cache_node.py")
    assert r.returncode == 0, r.stderr
    assert "node B: download from http://127.0.0.1:" in r.stdout
    assert "/images/" in r.stdout and "same: True" in r.stdout


def test_verify_replicas_example_summarises_and_fails() -> None:
    """The sweep prints a row per image, flags the changed and the gone copy, exits 3."""
    r = _run("verify_replicas.py")
    assert r.returncode == 3, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
    assert rows["img-healthy"][1:6] == ["1", "0", "0", "0", "0"]
    assert rows["img-degraded"][1:6] == ["1", "1", "1", "0", "0"]
    assert "1 of 2 images have every replica ok" in r.stdout
