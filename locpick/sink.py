"""A verified, atomic destination: bytes go to a private temp file beside ``dest``, are hashed
while they arrive, and only a file of the right size and hash is renamed onto ``dest``."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path

from locpick.errors import (
    ChecksumMismatch,
    DestinationError,
    InputError,
    SizeMismatch,
)
from locpick.hashing import BackgroundHasher, Expected

_POOL_BUFFERS = 4


class _Writer:
    """Writes buffers at their offsets in a worker thread, then hands them to the hasher.

    Reading the socket, writing the file and hashing then run in three threads that all release
    the GIL, so the slowest stage (sha512 here) sets the pace (benchmarks/README.md).
    """

    def __init__(
        self, fd: int, hasher: BackgroundHasher, release: queue.SimpleQueue[bytearray]
    ) -> None:
        self._fd = fd
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
            try:
                while view:
                    written = os.pwrite(self._fd, view, offset)
                    view = view[written:]
                    offset += written
            except OSError as exc:
                self.error = exc
                self._release.put(buf)
                continue
            self._hasher.submit(buf, n)

    def submit(self, buf: bytearray, n: int, offset: int) -> None:
        self._queue.put((buf, n, offset))

    def drain(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class AtomicSink:
    """Temp file + background hash + verify + fsync + ``os.replace``; ``abort`` leaves nothing.

    Use as a context manager: leaving the block without ``commit()`` removes the temp file,
    whatever the exit path (exception, KeyboardInterrupt).
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        size: int | None,
        expected: Expected,
        buffer_bytes: int = 4 << 20,
        mode: int = 0o644,
        label: str = "",
    ) -> None:
        self.dest = Path(dest)
        self.size = size
        self.expected = expected
        self.mode = mode
        self.buffer_bytes = buffer_bytes
        self.label = label
        parent = self.dest.parent
        if not parent.is_dir():
            raise InputError(f"dest {self.dest}: directory {parent} does not exist")
        if self.dest.is_dir():
            raise InputError(f"dest {self.dest}: is a directory")
        self._check_free_space(parent)
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.dest.name}.", suffix=".locpick-tmp", dir=parent
            )
        except OSError as exc:
            raise DestinationError(
                f"dest {self.dest}: cannot create a temporary file ({exc.strerror})"
            ) from exc
        self.fd: int | None = fd
        self.tmp = Path(tmp)
        self.offset = 0
        self._pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._allocated = 0
        self._hasher = BackgroundHasher(expected.new(), release=self._pool.put)
        self._writer = _Writer(fd, self._hasher, self._pool)

    def _check_free_space(self, parent: Path) -> None:
        if not self.size:
            return
        try:
            free = shutil.disk_usage(parent).free
        except OSError:
            return
        if free < self.size:
            raise DestinationError(
                f"dest {self.dest}: not enough free space in {parent} "
                f"(need {self.size} bytes, {free} free)"
            )

    def __enter__(self) -> AtomicSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def buffer(self) -> bytearray:
        """A reusable buffer to read into; returned to the pool once hashed."""
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            if self._allocated < _POOL_BUFFERS:
                self._allocated += 1
                return bytearray(self.buffer_bytes)
            return self._pool.get()

    def write(self, buf: bytearray, n: int) -> None:
        """Write ``buf[:n]`` at the current offset, then hand it to the hasher (which frees it)."""
        if self.size is not None and self.offset + n > self.size:
            self._pool.put(buf)
            raise SizeMismatch(f"{self.label}: sent more than the image size ({self.size} bytes)")
        if self._writer.error is not None:
            self._pool.put(buf)
            self._raise_disk(self._writer.error)
        self._writer.submit(buf, n, self.offset)
        self.offset += n

    def give_back(self, buf: bytearray) -> None:
        """Return a buffer that was taken but not written."""
        self._pool.put(buf)

    def _raise_disk(self, exc: OSError) -> None:
        need = "" if self.size is None else f"; {self.size - self.offset} more bytes needed"
        if exc.errno == errno.ENOSPC:
            raise DestinationError(f"dest {self.dest}: no space left on device{need}") from exc
        raise DestinationError(f"dest {self.dest}: write failed ({exc.strerror}){need}") from exc

    def reset(self) -> None:
        """Drop everything written so far (after a mismatch) and start again at offset 0."""
        self._writer.drain()
        self._hasher.stop()
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.offset = 0
        self._hasher = BackgroundHasher(self.expected.new(), release=self._pool.put)
        self._writer = _Writer(self.fd, self._hasher, self._pool)

    def commit(self) -> str | None:
        """Verify size and hash, fsync, and rename onto dest. Returns the verified algorithm."""
        self._writer.drain()
        if self._writer.error is not None:
            self._raise_disk(self._writer.error)
        digest = self._hasher.hexdigest()
        if self.size is not None and self.offset != self.size:
            raise SizeMismatch(f"{self.label}: got {self.offset} bytes, expected {self.size}")
        if self.expected.value is not None and digest != self.expected.value:
            raise ChecksumMismatch(
                f"{self.label}: {self.expected.algo} mismatch, expected "
                f"{self.expected.value[:16]}... got {(digest or '')[:16]}...; download discarded"
            )
        assert self.fd is not None
        try:
            os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.tmp, self.dest)
            _fsync_dir(self.dest.parent)
        except OSError as exc:
            self._raise_disk(exc)
        return self.expected.algo

    def abort(self) -> None:
        """Remove the temp file; safe to call repeatedly and after commit."""
        self._writer.drain()
        self._hasher.stop()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
