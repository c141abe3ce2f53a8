"""The prefetch state file: written whole, read back, malformed reads as none, and a run
whose process is gone reads as interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from locpick.cache.prefetch import STATE_FILE, PrefetchImage, PrefetchState, read_state, write_state


def _state(pid: int, finished: float | None = None, *rows: PrefetchImage) -> PrefetchState:
    return PrefetchState(pid=pid, started_at=1.0, updated_at=2.0, images=rows, finished_at=finished)


def test_round_trip_and_private_mode(tmp_path: Path) -> None:
    rows = (PrefetchImage("a", "fetched", 10, 10), PrefetchImage("b", "failed", error="404"))
    write_state(tmp_path, _state(os.getpid(), None, *rows))
    got = read_state(tmp_path)
    assert got is not None and got.images == rows and got.state == "running"
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left


def test_states_done_failed_interrupted(tmp_path: Path) -> None:
    """finished and all cached: done; finished with a failure: failed; unfinished and its
    pid gone: interrupted."""
    assert _state(1, 5.0, PrefetchImage("a", "cached")).state == "done"
    assert _state(1, 5.0, PrefetchImage("a", "failed")).state == "failed"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert _state(int(gone.stdout), None).state == "interrupted"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"pid": 1}',
        '{"pid": -1, "started_at": 1, "updated_at": 1}',
        '{"pid": 1, "started_at": 1, "updated_at": 1, "images": [{"image_id": "a", '
        '"status": "exploded"}]}',
        '{"pid": 1, "started_at": 1, "updated_at": 1, "images": [{"image_id": 5}]}',
    ],
)
def test_malformed_reads_as_no_state(tmp_path: Path, content: str) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    assert read_state(tmp_path) is None


def test_missing_reads_as_no_state(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    json.dumps(_state(1).to_json())  # serialisable as is
