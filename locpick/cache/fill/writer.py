"""The downloader's side of a fill record (format: ``locpick.cache.fill.state``): create it under
an exclusive flock, mark pieces as they land, then complete or fail it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import zlib
from pathlib import Path

from locpick.cache.fill.record import (
    CRC,
    HEAD,
    MAGIC,
    MAX_PIECES,
    STATES,
    FillBusy,
    FillSnapshot,
    FillStateError,
    State,
    boot_id,
    default_piece_size,
    read_fill,
)


def _start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


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

    def withdraw(self) -> None:
        """Every byte written so far proved wrong (the download starts over): nothing is held
        any more, readers wait for the bytes again as they are written anew."""
        self._bitmap = bytearray(len(self._bitmap))
        self.written = self.hashed = self._prefix_pieces = 0
        self._created = time.time()
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
        head = HEAD.pack(
            MAGIC,
            self.size,
            self.piece_size,
            self.written,
            self.hashed,
            STATES.index(self.state),
            self._pid,
            self._ticks,
            self._boot,
            self._created,
            time.time(),
            self._seq,
        )
        body = head + self._bitmap
        os.pwrite(self._fd, body + CRC.pack(zlib.crc32(body)), 0)


def _existing(path: Path) -> FillSnapshot | None:
    try:
        return read_fill(path)
    except FillStateError:
        return None
