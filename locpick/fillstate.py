"""Fill state of a cache entry still being written, shared by the downloader and ``serve``.

A node that serves its copy while downloading it (stream-through, issue 19) has two processes:
the downloader writes the bytes, ``locpick serve`` answers peers. What they share lives in a
small file beside the filling entry, ``DIR/images/<id>.fill``, so it survives either process
being killed::

    header   magic, size, piece size, written prefix, hashed prefix, state,
             writer pid, its start time (clock ticks since boot), boot id, created, updated, seq
    bitmap   one bit per piece: the piece's bytes are all written
    crc32    of header + bitmap

The writer updates the whole record with one ``pwrite`` after the bytes it describes were
written (same host, so the page cache makes them visible to any reader in that order); a
reader ``pread``s it and retries a torn read (crc mismatch). The writer holds an exclusive
``flock`` on the file for its whole life, taken before the file becomes visible (temp file and
rename): the kernel drops it when the writer dies, ``kill -9`` included, so a reader that can
take a shared lock knows the writer is gone rather than slow. The pid, start time and boot id
say who the writer was (a record from an earlier boot is dead whatever the lock says). Local
filesystems only: ``flock`` on NFS may be emulated or always succeed.

Intended use (not wired yet): the downloader creates the record with the filling data file
beside it, calls :meth:`FillWriter.mark` after each ``pwrite`` and :meth:`FillWriter.hashed_to`
as the in-order hash advances, then ``complete()`` before the entry becomes visible and
``close()`` after, or ``fail()`` first on any failure. ``serve`` opens the data file first (the
inode survives the rename into place), answers HEAD with the full size, and streams a range
with :func:`await_range` per piece: ``timeout`` before the first byte is 503 + Retry-After
(:meth:`FillSnapshot.eta`), ``failed``/``dead`` ends the answer so the peer goes elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import attrs

from locpick.errors import LocpickError

__all__ = [
    "FillBusy",
    "FillSnapshot",
    "FillStateError",
    "FillWriter",
    "RangeWait",
    "await_range",
    "read_fill",
    "wait_for_range",
]

MAGIC = b"LPFILL01"
#: magic, size, piece_size, written, hashed, state, pid, start_ticks, boot_id, created,
#: updated, seq
_HEAD = struct.Struct("<8sQQQQB3xIQ16sddQ")
_CRC = struct.Struct("<I")
#: At most this many pieces (a 1 MiB bitmap): the record stays small to rewrite and to read.
MAX_PIECES = 1 << 23
_MIN_PIECE = 1 << 20
_TORN_RETRIES = 50

State = Literal["filling", "complete", "failed"]
_STATES: tuple[State, ...] = ("filling", "complete", "failed")
Outcome = Literal["ready", "timeout", "dead", "failed", "gone"]


class FillStateError(LocpickError):
    """A fill record that cannot be read: wrong magic, bad lengths, or a crc that never holds."""


class FillBusy(LocpickError):
    """Another live writer is already filling this entry."""


@functools.cache
def boot_id() -> bytes:
    """This boot's id (16 bytes), from ``/proc/sys/kernel/random/boot_id`` (read once: a
    process never outlives its boot, and ``serve`` reads a record per piece it waits for)."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return uuid.UUID(text).bytes
    except (OSError, ValueError):
        return bytes(16)


def _start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def default_piece_size(size: int) -> int:
    """1 MiB, or the power of two that keeps the bitmap within :data:`MAX_PIECES`."""
    piece = _MIN_PIECE
    while -(-size // piece) > MAX_PIECES:
        piece *= 2
    return piece


def _record_length(size: int, piece_size: int) -> int:
    pieces = -(-size // piece_size)
    return _HEAD.size + -(-pieces // 8) + _CRC.size


@attrs.frozen
class FillSnapshot:
    """One consistent read of a fill record, plus whether its writer was alive at that moment."""

    size: int
    piece_size: int
    #: Bytes [0, written) are all on disk (the downloader's contiguous prefix).
    written: int
    #: Bytes [0, hashed) went through the in-order hash so far (verified-so-far).
    hashed: int
    state: State
    pid: int
    start_ticks: int
    boot_id: bytes
    created: float
    updated: float
    seq: int
    bitmap: bytes = attrs.field(repr=False)
    writer_alive: bool

    @property
    def pieces(self) -> int:
        return -(-self.size // self.piece_size)

    def piece_done(self, index: int) -> bool:
        return bool(self.bitmap[index >> 3] & (1 << (index & 7)))

    def covered_until(self, start: int) -> int:
        """The largest ``end`` such that bytes [start, end) are all on disk (``start`` if none)."""
        if self.state == "complete":
            return self.size
        pos = self.written if start < self.written else start
        while pos < self.size and self.piece_done(pos // self.piece_size):
            pos = min(self.size, (pos // self.piece_size + 1) * self.piece_size)
        return pos

    def has(self, start: int, end: int) -> bool:
        """True when bytes [start, end) are all on disk."""
        return end <= start or self.covered_until(start) >= end

    def rate(self) -> float:
        """Average fill rate so far, bytes per second (0 before the first update)."""
        elapsed = self.updated - self.created
        return self.written / elapsed if elapsed > 0 and self.written else 0.0

    def eta(self, offset: int) -> float | None:
        """Seconds until the prefix should reach ``offset`` at the average rate, else None."""
        rate = self.rate()
        if offset <= self.written:
            return 0.0
        return (offset - self.written) / rate if rate > 0 else None


def _parse(raw: bytes) -> FillSnapshot | None:
    """The snapshot in ``raw``, None when the crc does not hold (torn read); raises if wrong."""
    if len(raw) < _HEAD.size + _CRC.size or raw[:8] != MAGIC:
        raise FillStateError("not a locpick fill record")
    (_, size, piece, written, hashed, state, pid, ticks, boot, created, updated, seq) = (
        _HEAD.unpack_from(raw)
    )
    if piece <= 0 or size < 0 or -(-size // piece) > MAX_PIECES:
        raise FillStateError(f"fill record: impossible size {size} / piece size {piece}")
    if len(raw) != _record_length(size, piece):
        raise FillStateError("fill record: length does not match its size and piece size")
    body, (crc,) = raw[: -_CRC.size], _CRC.unpack_from(raw, len(raw) - _CRC.size)
    if zlib.crc32(body) != crc:
        return None
    if state >= len(_STATES) or written > size or hashed > written:
        raise FillStateError("fill record: fields out of range")
    return FillSnapshot(
        size=size,
        piece_size=piece,
        written=written,
        hashed=hashed,
        state=_STATES[state],
        pid=pid,
        start_ticks=ticks,
        boot_id=boot,
        created=created,
        updated=updated,
        seq=seq,
        bitmap=bytes(body[_HEAD.size :]),
        writer_alive=False,
    )


def _writer_alive(fd: int, boot: bytes) -> bool:
    """The writer holds its exclusive flock while it lives; a record of another boot is dead."""
    if boot != boot_id():
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def read_fill(path: str | os.PathLike[str]) -> FillSnapshot | None:
    """The current fill state at ``path``; None when there is no record (never was, or done)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FillStateError(f"fill record {path}: {exc.strerror or exc}") from exc
    try:
        for _ in range(_TORN_RETRIES):
            length = os.fstat(fd).st_size
            if length > _record_length(MAX_PIECES, 1):
                raise FillStateError(f"fill record {path}: {length} bytes is too large")
            snap = _parse(os.pread(fd, length, 0))
            if snap is not None:
                return attrs.evolve(snap, writer_alive=_writer_alive(fd, snap.boot_id))
        raise FillStateError(f"fill record {path}: crc never matched ({_TORN_RETRIES} reads)")
    finally:
        os.close(fd)


class FillWriter:
    """The downloader's side: create the record, mark bytes as they land, finish or fail.

    Not thread-safe: one writer thread owns it (the sink's writer thread, or the scheduler).
    """

    def __init__(self, path: Path, fd: int, size: int, piece_size: int) -> None:
        self.path = path
        self._fd = fd
        self.size = size
        self.piece_size = piece_size
        self.written = 0
        self.hashed = 0
        self.state: State = "filling"
        self.pieces = -(-size // piece_size)
        self._bitmap = bytearray(-(-self.pieces // 8))
        self._prefix_pieces = 0
        self._pid = os.getpid()
        self._ticks = _start_ticks(self._pid)
        self._boot = boot_id()
        self._created = time.time()
        self._seq = 0

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], size: int, piece_size: int | None = None
    ) -> FillWriter:
        """Make the record at ``path`` (0600), locked before it is visible.

        A record left by a dead writer is replaced; one whose writer lives raises
        :class:`FillBusy`. Call it under the cache's lock: two creators racing past the same
        dead record would otherwise both succeed, the first on an unlinked record."""
        path = Path(path)
        piece = piece_size or default_piece_size(size)
        if size < 0 or piece <= 0 or -(-size // piece) > MAX_PIECES:
            raise ValueError(f"fill record: impossible size {size} / piece size {piece}")
        old = _existing(path)
        if old is not None and old.writer_alive and old.state == "filling":
            raise FillBusy(f"{path}: already being filled by pid {old.pid}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            writer = cls(path, fd, size, piece)
            writer._flush()
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return writer

    def _set(self, index: int) -> None:
        self._bitmap[index >> 3] |= 1 << (index & 7)

    def _done(self, index: int) -> bool:
        return bool(self._bitmap[index >> 3] & (1 << (index & 7)))

    def mark(self, start: int, end: int) -> None:
        """Bytes [start, end) are written (call after the ``pwrite`` returned).

        Pieces wholly inside the range or inside the contiguous prefix are marked; a writer
        that writes out of order marks whole pieces (as the swarm fetch writes them)."""
        end = min(end, self.size)
        if start >= end:
            return
        ps = self.piece_size
        for i in range(-(-start // ps), self.pieces if end == self.size else end // ps):
            self._set(i)
        if start <= self.written < end:
            self.written = end
        while self.written < self.size and self._done(self.written // ps):
            self.written = min(self.size, (self.written // ps + 1) * ps)
        full = self.pieces if self.written == self.size else self.written // ps
        for i in range(self._prefix_pieces, full):
            self._set(i)
        self._prefix_pieces = max(self._prefix_pieces, full)
        self._flush()

    def hashed_to(self, offset: int) -> None:
        """The in-order hash has consumed bytes [0, offset)."""
        self.hashed = max(self.hashed, min(offset, self.written))
        self._flush()

    def complete(self) -> None:
        """Every byte written and the whole image verified: readers may take any range."""
        self.written = self.hashed = self.size
        for i in range(self.pieces):
            self._set(i)
        self.state = "complete"
        self._flush()

    def fail(self) -> None:
        """The download failed or its hash did not match: readers must stop serving now."""
        self.state = "failed"
        self._flush()

    def close(self, *, remove: bool = True) -> None:
        """Drop the lock (and the record, unless ``remove`` is False)."""
        if self._fd < 0:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> FillWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.state == "filling":
            self.fail()
        self.close()

    def _flush(self) -> None:
        self._seq += 1
        head = _HEAD.pack(
            MAGIC,
            self.size,
            self.piece_size,
            self.written,
            self.hashed,
            _STATES.index(self.state),
            self._pid,
            self._ticks,
            self._boot,
            self._created,
            time.time(),
            self._seq,
        )
        body = head + self._bitmap
        os.pwrite(self._fd, body + _CRC.pack(zlib.crc32(body)), 0)


def _existing(path: Path) -> FillSnapshot | None:
    try:
        return read_fill(path)
    except FillStateError:
        return None


@attrs.frozen
class RangeWait:
    """How a wait for bytes from ``start`` ended, and the last state seen (None: no record)."""

    outcome: Outcome
    snapshot: FillSnapshot | None
    start: int

    @property
    def available_until(self) -> int:
        """Bytes [start, available_until) can be served now."""
        return self.start if self.snapshot is None else self.snapshot.covered_until(self.start)


def _check(path: str | os.PathLike[str], start: int, end: int) -> RangeWait | None:
    """A final answer for the range now, or None to keep waiting."""
    snap = read_fill(path)
    if snap is None:
        return RangeWait("gone", None, start)
    if snap.state == "failed":
        return RangeWait("failed", snap, start)
    if snap.has(start, min(end, snap.size)):
        return RangeWait("ready", snap, start)
    if not snap.writer_alive:
        return RangeWait("dead", snap, start)
    return None


def wait_for_range(
    path: str | os.PathLike[str],
    start: int,
    end: int,
    *,
    timeout: float,
    poll: float = 0.005,
    max_poll: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RangeWait:
    """Wait (at most ``timeout`` s) until bytes [start, end) are on disk.

    ``ready``: they are; ``failed``: the writer gave up or the hash failed; ``dead``: the writer
    died without them; ``gone``: no record (finished and removed, or never there: look at the
    cache entry); ``timeout``: the writer lives but the bytes did not come in time (serve
    answers 503 with a Retry-After from :meth:`FillSnapshot.eta`)."""
    deadline = clock() + timeout
    while True:
        done = _check(path, start, end)
        if done is not None:
            return done
        left = deadline - clock()
        if left <= 0:
            return RangeWait("timeout", read_fill(path), start)
        sleep(min(poll, left))
        poll = min(max_poll, poll * 2)


async def await_range(
    path: str | os.PathLike[str],
    start: int,
    end: int,
    *,
    timeout: float,
    poll: float = 0.005,
    max_poll: float = 0.05,
) -> RangeWait:
    """:func:`wait_for_range` for an event loop (aiohttp ``serve``): sleeps without blocking."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        done = _check(path, start, end)
        if done is not None:
            return done
        left = deadline - loop.time()
        if left <= 0:
            return RangeWait("timeout", read_fill(path), start)
        await asyncio.sleep(min(poll, left))
        poll = min(max_poll, poll * 2)
