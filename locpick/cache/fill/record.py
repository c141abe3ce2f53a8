"""The fill record's format (``locpick.cache.fill.state`` describes it) and its reader: one
consistent snapshot, torn reads retried, the writer's liveness from its flock."""

from __future__ import annotations

import fcntl
import functools
import os
import struct
import uuid
import zlib
from pathlib import Path
from typing import Literal

import attrs

from locpick.errors import LocpickError

MAGIC = b"LPFILL01"
#: magic, size, piece_size, written, hashed, state, pid, start_ticks, boot_id, created,
#: updated, seq
HEAD = struct.Struct("<8sQQQQB3xIQ16sddQ")
CRC = struct.Struct("<I")
#: At most this many pieces (a 1 MiB bitmap): the record stays small to rewrite and to read.
MAX_PIECES = 1 << 23
_MIN_PIECE = 1 << 20
_TORN_RETRIES = 50

State = Literal["filling", "complete", "failed"]
STATES: tuple[State, ...] = ("filling", "complete", "failed")


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


def default_piece_size(size: int) -> int:
    """1 MiB, or the power of two that keeps the bitmap within :data:`MAX_PIECES`."""
    piece = _MIN_PIECE
    while -(-size // piece) > MAX_PIECES:
        piece *= 2
    return piece


def record_length(size: int, piece_size: int) -> int:
    pieces = -(-size // piece_size)
    return HEAD.size + -(-pieces // 8) + CRC.size


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
    if len(raw) < HEAD.size + CRC.size or raw[:8] != MAGIC:
        raise FillStateError("not a locpick fill record")
    (_, size, piece, written, hashed, state, pid, ticks, boot, created, updated, seq) = (
        HEAD.unpack_from(raw)
    )
    if piece <= 0 or size < 0 or -(-size // piece) > MAX_PIECES:
        raise FillStateError(f"fill record: impossible size {size} / piece size {piece}")
    if len(raw) != record_length(size, piece):
        raise FillStateError("fill record: length does not match its size and piece size")
    body, (crc,) = raw[: -CRC.size], CRC.unpack_from(raw, len(raw) - CRC.size)
    if zlib.crc32(body) != crc:
        return None
    if state >= len(STATES) or written > size or hashed > written:
        raise FillStateError("fill record: fields out of range")
    return FillSnapshot(
        size=size,
        piece_size=piece,
        written=written,
        hashed=hashed,
        state=STATES[state],
        pid=pid,
        start_ticks=ticks,
        boot_id=boot,
        created=created,
        updated=updated,
        seq=seq,
        bitmap=bytes(body[HEAD.size :]),
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
            if length > record_length(MAX_PIECES, 1):
                raise FillStateError(f"fill record {path}: {length} bytes is too large")
            snap = _parse(os.pread(fd, length, 0))
            if snap is not None:
                return attrs.evolve(snap, writer_alive=_writer_alive(fd, snap.boot_id))
        raise FillStateError(f"fill record {path}: crc never matched ({_TORN_RETRIES} reads)")
    finally:
        os.close(fd)
