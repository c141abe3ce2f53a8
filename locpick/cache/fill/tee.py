"""The cache side of a stream-through download: the names of a filling entry's files, the tee
that mirrors every write of a download into ``images/<id>.filling``, and the sweep of fills
whose writer died (the record itself is :mod:`locpick.cache.fill.state`)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from locpick.cache.fill.record import FillStateError, read_fill
from locpick.cache.fill.writer import FillWriter

log = logging.getLogger(__name__)

#: ``images/<id>.filling``: the bytes; ``<id>.fill``: the record; ``<id>.fill.json``: its URL.
FILLING = ".filling"
RECORD = ".fill"
META = ".fill.json"
SUFFIXES = (FILLING, RECORD, META)


def fill_paths(images: Path, image_id: str) -> tuple[Path, Path, Path]:
    """(``.filling``, ``.fill``, ``.fill.json``) of ``image_id`` in the cache's ``images``."""
    return tuple(images / (image_id + s) for s in SUFFIXES)  # type: ignore[return-value]


def fill_id(name: str) -> str | None:
    """The image id of a fill file's name, None for any other name."""
    for suffix in SUFFIXES:
        if name.endswith(suffix) and "." not in name[: -len(suffix)]:
            return name[: -len(suffix)]
    return None


def writer_gone(record: Path) -> bool:
    """The fill record's writer is gone (dead, or the record missing or unreadable)."""
    try:
        snap = read_fill(record)
    except FillStateError:
        return True
    return snap is None or not snap.writer_alive


def remove_if_dead(images: Path, image_id: str) -> bool:
    """Remove a fill's files unless its writer lives (it cleans up itself); True if removed.

    The caller holds the cache lock: a writer creates both files under it, so a ``.filling``
    without a live record is a leftover (killed, or crashed between the two)."""
    filling, record, meta = fill_paths(images, image_id)
    if not writer_gone(record):
        return False
    removed = False
    for path in (filling, meta, record):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed = True
    if removed:
        log.info("cache: removed the fill of %s left by a writer that died", image_id)
    return removed


class Tee:
    """Mirrors a download's writes into the filling file at the same offsets and keeps the
    fill record in step. Thread-safe (sink writer, hasher and swarm threads call it); after
    :meth:`abandon` (record ``failed``) it does nothing, so the download itself goes on."""

    def __init__(self, fd: int, writer: FillWriter) -> None:
        self.fd = fd
        self.writer = writer
        self.live = True
        #: Why it was abandoned (for the log), else None.
        self.why: str | None = None
        #: Times the bytes held were withdrawn (proved wrong) and the copy filled anew.
        self.withdrawn = 0
        self._lock = threading.Lock()

    def write(
        self, data: bytes | bytearray | memoryview, offset: int, *, mark: bool = True
    ) -> None:
        """``data`` was written at ``offset`` of the download; ``mark``: its bytes are done
        (the swarm marks whole pieces itself, once a piece is complete)."""
        view = memoryview(data).cast("B")
        with self._lock:
            if not self.live:
                return
            end = offset + len(view)
            try:
                pos = offset
                while view:
                    n = os.pwrite(self.fd, view, pos)
                    view, pos = view[n:], pos + n
                if mark:
                    self.writer.mark(offset, end)
            except OSError as exc:
                self._abandon(f"cannot write the filling copy ({exc.strerror})")

    def copy_from(self, fd: int, start: int, end: int) -> None:
        """Bytes [start, end) already in the download file ``fd`` (resumed): copy and mark."""
        with self._lock:
            if not self.live:
                return
            try:
                pos = start
                while pos < end:
                    n = os.copy_file_range(fd, self.fd, end - pos, pos, pos)
                    if n <= 0:
                        raise OSError(5, "short copy")
                    pos += n
                self.writer.mark(start, end)
            except OSError as exc:
                self._abandon(f"cannot copy resumed bytes ({exc.strerror})")

    def mark(self, start: int, end: int) -> None:
        with self._lock:
            if self.live:
                self.writer.mark(start, end)

    def hashed_to(self, offset: int) -> None:
        with self._lock:
            if self.live:
                self.writer.hashed_to(offset)

    @property
    def whole(self) -> bool:
        """Every byte mirrored and the tee never abandoned."""
        with self._lock:
            return self.live and self.writer.written == self.writer.size

    def withdraw(self, why: str) -> None:
        """The bytes mirrored so far came from a source now proved wrong and the download
        starts over: the record holds nothing again (peers wait for the new bytes instead of
        reading the old ones as held), and the copy fills anew. A peer that already read
        some of them fails its own hash and reads them again."""
        with self._lock:
            if not self.live:
                return
            try:
                self.writer.withdraw()
            except OSError as exc:
                self._abandon(f"cannot withdraw wrong bytes ({exc.strerror})")
                return
            self.withdrawn += 1
        log.warning("cache: stream-through copy withdrawn and filled anew: %s", why)

    def abandon(self, why: str) -> None:
        """Stop mirroring; the record says ``failed`` at once (readers stop serving it)."""
        with self._lock:
            self._abandon(why)

    def stop(self) -> None:
        """No more writes (a straggling swarm thread after the end does nothing)."""
        with self._lock:
            self.live = False

    def _abandon(self, why: str) -> None:
        if self.writer.state == "failed":
            return
        self.live, self.why = False, self.why or why
        with contextlib.suppress(OSError):
            self.writer.fail()
        log.info("cache: stream-through copy given up: %s", why)
