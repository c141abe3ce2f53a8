"""Issue 18: what a local user on the node, or a broken local state, can do to a download.

Attacks 6 (FIFO and held lock beside DEST), 7 (a record without size and an endless first
location on a small filesystem) and 8 (the node cache failing after a verified download).
Everything is real: FIFOs, a flock held by another process, tmpfs mounts, loopback origins.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_sharedfs import mount_tmpfs, unmount
from helpers import image_record, run_cli, temp_leftovers, write_record

from locpick.testing import Origin

IMG = "18181818-0000-4000-8000-000000000008"


@pytest.fixture
def ro_cache(tmp_path: Path) -> Iterator[Path]:
    """A node cache directory (with its ``images/``) on a tmpfs remounted read-only."""
    where = tmp_path / "rocache"
    mount_tmpfs(where, size="4m")
    try:
        (where / "images").mkdir()
        proc = subprocess.run(
            ["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot remount read-only ({proc.stderr.strip()})")
        yield where
    finally:
        unmount(where)


def _download_json(tmp_path: Path, data: bytes, url: str, cache: Path) -> tuple[int, str, str]:
    meta = write_record(tmp_path / "m.json", image_record(IMG, data, [url]))
    proc = run_cli(
        "download", IMG, str(tmp_path / "dest"), "--metadata", str(meta),
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def test_read_only_cache_after_a_verified_download_is_a_warning(
    tmp_path: Path, ro_cache: Path
) -> None:
    """Attack 8: a cache that cannot be written does not turn a verified dest into exit 3."""
    data = os.urandom(200_000)
    with Origin(data) as origin:
        code, out, err = _download_json(tmp_path, data, origin.url, ro_cache)
    assert code == 0, err
    assert (tmp_path / "dest").read_bytes() == data
    doc = json.loads(out)
    assert doc["verified"] == "sha512" and doc["method"] == "download"
    assert doc["cache"]["status"] == "failed"
    assert "read-only" in doc["cache"]["error"].lower()
    assert "warning" in err.lower() or "not cached" in err
    assert temp_leftovers(tmp_path) == []


def test_symlinked_cache_lock_after_a_verified_download_is_a_warning(tmp_path: Path) -> None:
    """Attack 8: a cache lock that is a dangling symlink: dest delivered, exit 0, cache failed."""
    data = os.urandom(200_000)
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    (cache / ".lock").symlink_to(tmp_path / "no-such-dir" / "lock")
    with Origin(data) as origin:
        code, out, err = _download_json(tmp_path, data, origin.url, cache)
    assert code == 0, err
    assert (tmp_path / "dest").read_bytes() == data
    doc = json.loads(out)
    assert doc["cache"]["status"] == "failed" and doc["cache"]["error"]
    assert not (tmp_path / "no-such-dir").exists()
