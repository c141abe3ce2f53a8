"""Boot-storm choice against a real ``locpick serve`` answering a copy still being filled: the
probe reads its ``X-Locpick-Fill`` state and ``rank`` scores and explains it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import image_record, run_cli, write_record
from test_fillserve import DATA, IMG, PIECE, SIZE, Filling, _serve

from locpick.cache.store import NodeCache
from locpick.glance.lease import FILL, FILL_STARTED, MARKER

META = {MARKER: "true", FILL: "filling", FILL_STARTED: "1000.0"}


@pytest.fixture
def cache(tmp_path: Path) -> NodeCache:
    return NodeCache(tmp_path / "c")


@pytest.fixture
def filling(cache: NodeCache) -> Iterator[Filling]:
    f = Filling(cache)
    yield f
    f.close()


def _rank(tmp_path: Path, record: dict[str, object]) -> list[dict[str, object]]:
    path = write_record(tmp_path / "m.json", record)
    (tmp_path / "c.toml").write_text('history_file = ""\n')
    proc = run_cli("rank", IMG, "--metadata", str(path), "--json", "--config",
                   str(tmp_path / "c.toml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, object]] = json.loads(proc.stdout)
    return rows


def test_rank_reads_a_real_filling_copy(cache: NodeCache, filling: Filling, tmp_path: Path) -> None:
    """Two pieces held of a copy whose ``fill_wait`` is ten minutes: the probe asks
    ``Prefer: wait=0`` and gets the held prefix at once; rank says how much it holds."""
    filling.put(0, 2 * PIECE)
    with _serve(cache, tmp_path, fill_wait=600) as proc:
        rows = _rank(tmp_path, image_record(IMG, DATA, [(proc.image_url(IMG), META)]))
    (row,) = rows
    reasons = row["reasons"]
    assert isinstance(reasons, dict) and row["usable"] is True
    assert f"holds {2 * PIECE / (1 << 20):.1f} MiB of {SIZE / (1 << 20):.1f} MiB" in reasons["fill"]
    assert reasons["latency_ms"] is not None and reasons["latency_ms"] < 60_000


def test_a_copy_with_nothing_yet_is_busy_not_broken(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """A filling copy that holds nothing answers the probe 503 at once (``Prefer: wait=0``,
    not after ``fill_wait``): a cheap negative with its fill state, still usable."""
    with _serve(cache, tmp_path, fill_wait=600) as proc:
        rows = _rank(tmp_path, image_record(IMG, DATA, [(proc.image_url(IMG), META)]))
    (row,) = rows
    reasons = row["reasons"]
    assert isinstance(reasons, dict) and row["usable"] is True
    assert "busy (503)" in reasons["fill"] and "holds 0.0 MiB" in reasons["fill"]
