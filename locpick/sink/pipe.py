"""The sink's byte pipeline: a small pool of buffers, a thread writing them at their offsets
and a thread hashing them, so reading, writing and hashing overlap."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Protocol

from locpick.sink.hashing import BackgroundHasher


class Mirror(Protocol):
    """Where a sink mirrors the bytes it writes, e.g. the node cache's copy still being filled
    (``locpick.cache.fill.tee.Tee``). The sink and the fetch engine know only this interface."""

    def write(
        self, data: bytes | bytearray | memoryview, offset: int, *, mark: bool = True
    ) -> None:
        """``data`` was written at ``offset``; ``mark``: its bytes are done."""

    def copy_from(self, fd: int, start: int, end: int) -> None:
        """Bytes [start, end) already in the download file ``fd`` (resumed): copy and mark."""

    def mark(self, start: int, end: int) -> None:
        """Bytes [start, end) are done (a whole piece, written earlier unmarked)."""

    def hashed_to(self, offset: int) -> None:
        """The download's in-order hash has verified every byte before ``offset``."""

    def abandon(self, why: str) -> None:
        """Stop mirroring: bytes already mirrored may be wrong."""

    def withdraw(self, why: str) -> None:
        """The bytes mirrored so far were wrong and the sink starts over at offset 0: hold
        nothing again, and mirror the new bytes as they come."""


_POOL_BUFFERS = 4


class Writer:
    """Writes buffers at their offsets in a worker thread, then hands them to the hasher.

    Reading the socket, writing the file and hashing then run in three threads that all release
    the GIL, so the slowest stage (sha512 here) sets the pace (benchmarks/README.md).
    """

    def __init__(
        self,
        fd: int,
        hasher: BackgroundHasher,
        release: queue.SimpleQueue[bytearray],
        tee: Mirror | None = None,
    ) -> None:
        self._fd = fd
        self._tee = tee
        self._hasher = hasher
        self._release = release
        self._queue: queue.SimpleQueue[tuple[bytearray, int, int] | None] = queue.SimpleQueue()
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="locpick-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            buf, n, offset = item
            if self.error is not None:
                self._release.put(buf)
                continue
            view = memoryview(buf)[:n]
            start = offset
            try:
                while view:
                    written = os.pwrite(self._fd, view, offset)
                    view = view[written:]
                    offset += written
            except OSError as exc:
                self.error = exc
                self._release.put(buf)
                continue
            if self._tee is not None:
                self._tee.write(memoryview(buf)[:n], start)
            self._hasher.submit(buf, n)

    def submit(self, buf: bytearray, n: int, offset: int) -> None:
        self._queue.put((buf, n, offset))

    def drain(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class Pipeline:
    """The buffer pool plus the current write and hash threads of one sink.

    ``start`` puts fresh threads on an fd (after a reset, a system copy or a new temp file);
    the pool outlives them, so buffers are allocated at most ``_POOL_BUFFERS`` times.
    """

    def __init__(self, buffer_bytes: int, tee: Mirror | None, hasher: Any) -> None:
        self.buffer_bytes = buffer_bytes
        self.tee = tee
        self.pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._allocated = 0
        self.hasher = self.new_hasher(hasher)
        self.writer: Writer | None = None

    def new_hasher(self, hasher: Any) -> BackgroundHasher:
        """A hash thread over ``hasher`` (None = not hashing) that frees buffers once hashed."""
        on_hashed = self.tee.hashed_to if self.tee is not None else None
        return BackgroundHasher(hasher, release=self.pool.put, on_hashed=on_hashed)

    def start(self, fd: int, hasher: Any) -> None:
        """Fresh hash and write threads on ``fd`` (``hasher``: None = not hashing)."""
        self.hasher = self.new_hasher(hasher)
        self.attach(fd)

    def attach(self, fd: int) -> None:
        """A write thread on ``fd`` feeding the current hash thread."""
        self.writer = Writer(fd, self.hasher, self.pool, self.tee)

    def buffer(self) -> bytearray:
        """A reusable buffer to read into; returned to the pool once hashed."""
        try:
            return self.pool.get_nowait()
        except queue.Empty:
            if self._allocated < _POOL_BUFFERS:
                self._allocated += 1
                return bytearray(self.buffer_bytes)
            return self.pool.get()

    def drain(self) -> OSError | None:
        """Wait for the queued writes; returns the first write error, if any."""
        if self.writer is None:
            return None
        self.writer.drain()
        return self.writer.error
