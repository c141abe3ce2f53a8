"""The fill record shared by a downloader and ``serve``, across real processes and kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_env

from locpick.cache.fill.record import FillBusy, FillStateError, read_fill
from locpick.cache.fill.state import await_range, wait_for_range
from locpick.cache.fill.writer import FillWriter

PIECE = 1 << 20
SIZE = 10 * PIECE + 12345  # 11 pieces, the last one short

# A writer process driven line by line on stdin: "create SIZE PIECE", "mark A B", "hashed N",
# "complete", "fail", "close"; it answers "ok" to each, so the test knows the record is written.
_WRITER = """
import sys
from locpick.cache.fill.writer import FillWriter
path = sys.argv[1]
w = None
for line in sys.stdin:
    cmd, *args = line.split()
    n = [int(a) for a in args]
    if cmd == "create":
        w = FillWriter.create(path, n[0], n[1])
    elif cmd == "mark":
        w.mark(n[0], n[1])
    elif cmd == "hashed":
        w.hashed_to(n[0])
    elif cmd == "complete":
        w.complete()
    elif cmd == "fail":
        w.fail()
    elif cmd == "close":
        w.close()
    print("ok", flush=True)
"""

# A reader process: prints the snapshot, then (with A B T) waits for bytes [A, B) up to T s.
_READER = """
import json, sys
from locpick.cache.fill.state import read_fill, wait_for_range
path = sys.argv[1]
s = read_fill(path)
print(json.dumps(None if s is None else {
    "written": s.written, "hashed": s.hashed, "state": s.state, "alive": s.writer_alive,
    "pid": s.pid, "has": [s.has(int(a), int(b)) for a, b in
                          (r.split(":") for r in sys.argv[2].split(",") if r)],
}), flush=True)
if len(sys.argv) > 3:
    a, b, t = sys.argv[3].split(":")
    r = wait_for_range(path, int(a), int(b), timeout=float(t))
    print(json.dumps({"outcome": r.outcome, "until": r.available_until}), flush=True)
"""


class Writer:
    """The writer subprocess; ``do`` sends one command and waits for its "ok"."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )

    def do(self, line: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok", f"writer failed on {line!r}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(tmp_path / "img.fill")
    yield w
    w.stop()


def reader(path: Path, ranges: str = "", wait: str | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _READER, str(path), ranges] + ([wait] if wait else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=cli_env())


def read_in_other_process(path: Path, ranges: str = "", wait: str | None = None) -> list[Any]:
    p = reader(path, ranges, wait)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0
    return [json.loads(line) for line in out.splitlines()]


def test_reader_in_another_process_sees_written_ranges_and_a_live_writer(
    tmp_path: Path, writer: Writer
) -> None:
    """Prefix and out-of-order pieces are visible to another process; the writer reads alive."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do(f"mark 0 {3 * PIECE + 100}")  # the prefix ends inside piece 3
    writer.do(f"mark {6 * PIECE} {7 * PIECE}")  # piece 6, out of order
    writer.do(f"hashed {2 * PIECE}")
    prefix = f"0:{3 * PIECE + 100},0:{3 * PIECE + 101}"
    ranges = f"{prefix},{6 * PIECE}:{7 * PIECE},{6 * PIECE}:{7 * PIECE + 1}"
    (doc,) = read_in_other_process(path, ranges)
    assert doc["written"] == 3 * PIECE + 100 and doc["hashed"] == 2 * PIECE
    assert doc["has"] == [True, False, True, False]
    assert doc["state"] == "filling" and doc["alive"] is True
    assert doc["pid"] == writer.proc.pid


def test_kill_9_writer_reads_dead_in_another_process(tmp_path: Path, writer: Writer) -> None:
    """SIGKILL: the kernel drops the writer's lock; a reader sees dead, a wait ends 'dead'."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do(f"mark 0 {2 * PIECE}")
    (before,) = read_in_other_process(path)
    assert before["alive"] is True
    writer.kill()
    doc, waited = read_in_other_process(path, f"0:{2 * PIECE}", f"0:{SIZE}:120")
    assert doc["alive"] is False and doc["state"] == "filling" and doc["has"] == [True]
    assert waited == {"outcome": "dead", "until": 2 * PIECE}


def test_a_range_ahead_of_the_fill_waits_then_arrives(tmp_path: Path, writer: Writer) -> None:
    """A reader waiting for bytes beyond the fill gets them once the writer marks them."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do(f"mark 0 {PIECE}")
    p = reader(path, f"{4 * PIECE}:{5 * PIECE}", f"{4 * PIECE}:{5 * PIECE}:600")
    assert p.stdout is not None
    first = json.loads(p.stdout.readline())
    assert first["has"] == [False]  # the reader is now waiting for piece 4
    writer.do(f"mark {PIECE} {3 * PIECE}")
    writer.do(f"mark {3 * PIECE} {5 * PIECE + 7}")
    out, _ = p.communicate(timeout=120)
    assert json.loads(out) == {"outcome": "ready", "until": 5 * PIECE + 7}


def test_a_slow_live_writer_times_out_not_dead(tmp_path: Path, writer: Writer) -> None:
    """The writer lives but sends nothing: 'timeout' (503 + Retry-After), never 'dead'."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do(f"mark 0 {PIECE}")
    _, waited = read_in_other_process(path, "", f"{PIECE}:{2 * PIECE}:0.3")
    assert waited == {"outcome": "timeout", "until": PIECE}


def test_failed_fill_stops_readers_at_once(tmp_path: Path, writer: Writer) -> None:
    """A failed download (or hash mismatch) ends every wait with 'failed', even for held bytes."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do(f"mark 0 {4 * PIECE}")
    writer.do("fail")
    _, waited = read_in_other_process(path, "", f"0:{PIECE}:600")
    assert waited["outcome"] == "failed"


def test_complete_serves_everything_and_close_removes_the_record(
    tmp_path: Path, writer: Writer
) -> None:
    """complete: any range is ready; close: the record is gone (the cache entry takes over)."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do("complete")
    doc, waited = read_in_other_process(path, f"0:{SIZE}", f"{SIZE - 5}:{SIZE}:600")
    assert doc["state"] == "complete" and doc["has"] == [True] and doc["hashed"] == SIZE
    assert waited["outcome"] == "ready"
    writer.do("close")
    assert not path.exists()
    assert wait_for_range(path, 0, 1, timeout=600).outcome == "gone"


def test_a_second_writer_is_refused_while_the_first_lives_and_replaces_a_dead_one(
    tmp_path: Path, writer: Writer
) -> None:
    """Two downloaders cannot fill one entry; after kill -9 the next one takes over."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do(f"mark 0 {5 * PIECE}")
    with pytest.raises(FillBusy):
        FillWriter.create(path, SIZE, PIECE)
    writer.kill()
    with FillWriter.create(path, SIZE, PIECE):
        snap = read_fill(path)
        assert snap is not None and snap.written == 0 and snap.writer_alive
        assert snap.pid == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp file, record removed


def test_a_killed_reader_leaves_the_writer_and_the_record_intact(
    tmp_path: Path, writer: Writer
) -> None:
    """serve killed mid-wait: the writer keeps filling, the next reader sees it all."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    p = reader(path, "", f"{3 * PIECE}:{4 * PIECE}:600")
    assert p.stdout is not None
    json.loads(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    writer.do(f"mark 0 {4 * PIECE}")
    doc, waited = read_in_other_process(path, "", f"{3 * PIECE}:{4 * PIECE}:600")
    assert doc["alive"] is True and doc["written"] == 4 * PIECE
    assert waited["outcome"] == "ready"


def test_await_range_in_an_event_loop(tmp_path: Path, writer: Writer) -> None:
    """The asyncio wait (for aiohttp serve) sees the writer's marks and its death."""
    path = tmp_path / "img.fill"
    writer.do(f"create {SIZE} {PIECE}")
    writer.do(f"mark 0 {2 * PIECE}")

    async def run() -> tuple[str, str]:
        ready = await await_range(path, PIECE, 2 * PIECE, timeout=600)
        writer.kill()
        dead = await await_range(path, 2 * PIECE, 3 * PIECE, timeout=600)
        return ready.outcome, dead.outcome

    assert asyncio.run(run()) == ("ready", "dead")


def test_covered_until_joins_prefix_and_pieces(tmp_path: Path) -> None:
    """Prefix + consecutive pieces form one servable run; a gap stops it."""
    with FillWriter.create(tmp_path / "f", SIZE, PIECE) as w:
        w.mark(2 * PIECE, 4 * PIECE)
        w.mark(5 * PIECE, SIZE)
        snap = read_fill(w.path)
        assert snap is not None
        assert snap.covered_until(0) == 0
        assert snap.covered_until(2 * PIECE + 10) == 4 * PIECE
        assert snap.covered_until(6 * PIECE) == SIZE
        w.mark(0, 2 * PIECE)  # the prefix swallows pieces 2-3
        snap = read_fill(w.path)
        assert snap is not None and snap.written == 4 * PIECE
        assert snap.covered_until(0) == 4 * PIECE
        w.mark(4 * PIECE, 5 * PIECE)
        snap = read_fill(w.path)
        assert snap is not None and snap.written == SIZE and snap.has(0, SIZE)


def test_garbage_and_bad_crc_are_refused(tmp_path: Path) -> None:
    """Not a record, wrong length, or a crc that never holds: FillStateError, not a guess."""
    junk = tmp_path / "junk.fill"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(FillStateError):
        read_fill(junk)
    with FillWriter.create(tmp_path / "f", SIZE, PIECE) as w:
        w.mark(0, PIECE)
        raw = bytearray(w.path.read_bytes())
    bad = tmp_path / "bad.fill"
    raw[30] ^= 0xFF  # inside the header: the crc no longer holds
    bad.write_bytes(bytes(raw))
    with pytest.raises(FillStateError, match="crc"):
        read_fill(bad)
    bad.write_bytes(bytes(raw[:-1]))
    with pytest.raises(FillStateError, match="length"):
        read_fill(bad)
