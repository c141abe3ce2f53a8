"""kill -9 while an image is being added to the node cache: no half entry, no stale lock."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
from helpers import cli_env, image_record, write_record

from locpick.cache.store import NodeCache
from locpick.glance.images import parse_image

IMG = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-2222-3333-4444-555555555555"

#: Adds one image to a cache in a separate process: argv = cache dir, record, source file and
#: the step of the add at which the process SIGKILLs itself ("" = none).
_ADD = (
    "import json, os, signal, sys\n"
    "from locpick.cache.store import NodeCache\n"
    "from locpick.glance.images import parse_image\n"
    "def step(self, name):\n"
    "    if name == sys.argv[4]:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "NodeCache._step = step\n"
    "rec = json.load(open(sys.argv[2]))\n"
    "NodeCache(sys.argv[1]).add_file(parse_image(rec, rec['id']), sys.argv[3])\n"
)


def _setup(tmp_path: Path, size: int) -> tuple[Path, bytes, Path, Path]:
    cache_dir = tmp_path / "cache"
    other = os.urandom(1000)
    (tmp_path / "other").write_bytes(other)
    NodeCache(cache_dir).add_file(
        parse_image(image_record(OTHER, other, []), OTHER), tmp_path / "other"
    )
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    rec = write_record(tmp_path / "rec.json", image_record(IMG, data, []))
    return cache_dir, data, src, rec


def _add(
    cache_dir: Path, rec: Path, src: Path, crash_at: str | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _ADD, str(cache_dir), str(rec), str(src), crash_at or ""],
        env=cli_env(),
    )


def _check_after_kill(cache_dir: Path, data: bytes, rec: Path, src: Path) -> bool:
    """The invariants after a writer died; returns whether the killed add became visible."""
    cache = NodeCache(cache_dir)
    entry = cache.entry(IMG)
    if entry is not None:  # visible means complete
        assert entry.path.read_bytes() == data
    assert cache.entry(OTHER) is not None  # the neighbour is untouched
    lock = filelock.FileLock(str(cache_dir / ".lock"), timeout=0)
    lock.acquire()  # not held by the dead process: no stale lock
    lock.release()
    cache.recover()  # the next run cleans up
    names = sorted(p.name for p in cache.images.iterdir())
    expected = [OTHER, OTHER + ".json"]
    if entry is not None:
        expected = sorted([*expected, IMG, IMG + ".json"])
    assert names == expected
    proc = _add(cache_dir, rec, src)
    assert proc.wait(timeout=60) == 0
    entry = cache.entry(IMG)
    assert entry is not None and entry.path.read_bytes() == data
    assert sorted(p.name for p in cache.images.iterdir()) == sorted(
        [OTHER, OTHER + ".json", IMG, IMG + ".json"]
    )
    return entry is not None


@pytest.mark.parametrize(
    ("point", "visible"),
    [
        ("copying", False),
        ("copied", False),
        ("locked", False),
        ("hidden", False),
        ("replaced", False),
        ("visible", True),
    ],
)
def test_sigkill_at_each_step_of_an_add(tmp_path: Path, point: str, visible: bool) -> None:
    """A real SIGKILL at each named step: nothing half-visible, lock free, next run tidies."""
    cache_dir, data, src, rec = _setup(tmp_path, 3 << 20)
    proc = _add(cache_dir, rec, src, crash_at=point)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert (NodeCache(cache_dir).entry(IMG) is not None) == visible
    if point in ("copying", "copied", "locked"):
        assert [p for p in (cache_dir / "images").iterdir() if "locpick-tmp" in p.name]
    _check_after_kill(cache_dir, data, rec, src)


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    """kill -9 from outside at random moments of an add of a bigger image, several times."""
    cache_dir, data, src, rec = _setup(tmp_path, 48 << 20)
    rng = random.Random(1234)
    for _ in range(4):
        NodeCache(cache_dir).evict(IMG)
        proc = _add(cache_dir, rec, src)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _check_after_kill(cache_dir, data, rec, src)


def test_a_live_writers_temp_file_is_not_swept(tmp_path: Path) -> None:
    """Another process's recover() leaves a temp file alone while its writer holds it."""
    cache = NodeCache(tmp_path / "cache")
    fd, tmp = cache._locked_temp(IMG)
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from locpick.cache.store import NodeCache;"
                "NodeCache(sys.argv[1]).recover()",
                str(tmp_path / "cache"),
            ],
            env=cli_env(),
            check=True,
        )
        assert r.returncode == 0 and tmp.exists()
    finally:
        os.close(fd)
    cache.recover()
    assert not tmp.exists()
