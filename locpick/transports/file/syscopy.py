"""The system copy of a shared-filesystem file into the sink's temp file, hashing what lands.

Engines, in order: a reflink (``FICLONE``) when source and destination share a filesystem that
supports it, ``os.copy_file_range``, ``os.sendfile``, and a buffered read/write. A follower
thread reads back the destination bytes just written (from the page cache) and hashes them, so
what is verified is what will be renamed onto ``dest``; ``guarded_copy`` runs it all in a
worker so that a hung filesystem cannot hang the caller.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from locpick.errors import DestinationError, TransferError

#: Linux ``FICLONE`` ioctl: _IOW(0x94, 9, int).
FICLONE = 0x40049409
#: Bytes per copy_file_range/sendfile call: small enough for the hasher to follow closely.
COPY_CHUNK = 8 << 20
#: Read-back buffer of the hashing follower: fits in L2/L3 so the hash reads cached bytes.
HASH_CHUNK = 1 << 20
#: Mapping window of the mmap follower.
MMAP_WINDOW = 16 << 20
#: Buffer of the read/write/hash pipeline engine.
PIPE_CHUNK = 1 << 20

Advance = Callable[[int], None]

_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTTY, errno.EBADF}
)
_DEST_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class _Follower:
    """Hashes ``dst`` from ``start`` up to what the copier reports, in a thread, as it goes."""

    def __init__(
        self,
        hasher: Any,
        dst: int,
        start: int,
        mode: str = "pread",
        beat: Callable[[], None] | None = None,
    ) -> None:
        self.hasher = hasher
        self.beat = beat or (lambda: None)
        self.dst = dst
        self.mode = mode
        self.hashed = start
        self.copied = start
        self.done = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if hasher is not None:
            self._thread = threading.Thread(target=self._run, name="locpick-hash", daemon=True)
            self._thread.start()

    def advance(self, end: int) -> None:
        with self._cond:
            self.copied = end
            self._cond.notify()

    def _run(self) -> None:
        if self.mode == "mmap":
            self._run_mmap()
            return
        view = memoryview(bytearray(HASH_CHUNK))
        try:
            while (end := self._wait()) is not None:
                while self.hashed < end:
                    n = os.preadv(
                        self.dst, [view[: min(HASH_CHUNK, end - self.hashed)]], self.hashed
                    )
                    if n <= 0:
                        raise OSError(errno.EIO, "short read of the copied bytes")
                    self.hasher.update(view[:n])
                    self.hashed += n
                    self.beat()
        except BaseException as exc:  # noqa: BLE001 - surfaced by finish()
            self.error = exc

    def _wait(self) -> int | None:
        """Block until there are copied bytes to hash; their end, or None when all are."""
        with self._cond:
            while self.copied <= self.hashed and not self.done:
                self._cond.wait()
            return None if (self.copied <= self.hashed and self.done) else self.copied

    def _run_mmap(self) -> None:
        """Hash through read-only mappings of the temp file: no copy into a buffer. Safe from
        SIGBUS because only bytes already written are mapped and nobody else truncates it."""
        try:
            while (end := self._wait()) is not None:
                while self.hashed < end:
                    base = self.hashed - self.hashed % mmap.ALLOCATIONGRANULARITY
                    length = min(end, base + MMAP_WINDOW) - base
                    with mmap.mmap(self.dst, length, access=mmap.ACCESS_READ, offset=base) as mm:
                        mm.madvise(mmap.MADV_SEQUENTIAL)
                        with memoryview(mm) as whole, whole[self.hashed - base :] as part:
                            self.hasher.update(part)
                    self.hashed = base + length
                    self.beat()
        except BaseException as exc:  # noqa: BLE001 - surfaced by finish()
            self.error = exc

    def finish(self) -> None:
        """Wait until every copied byte is hashed."""
        if self._thread is None:
            return
        with self._cond:
            self.done = True
            self._cond.notify()
        self._thread.join()
        if self.error is not None:
            raise DestinationError(f"re-reading copied bytes failed ({self.error})")


def system_copy(
    src: int,
    dst: int,
    offset: int,
    end: int,
    hasher: Any,
    advance: Advance,
    *,
    label: str,
    engines: Sequence[str] = ("reflink", "copy_file_range", "sendfile", "buffered"),
    follow: str = "pread",
    beat: Callable[[], None] | None = None,
) -> str:
    """Copy ``src[offset:end]`` to ``dst`` at the same offsets, hashing what lands in ``dst``.

    ``advance(n)`` is called after every ``n`` bytes; when this returns or raises, every byte
    advanced has been fed to ``hasher`` (if any). Returns the engine that did the work (the
    last one used). Raises TransferError (source side) or DestinationError (dest side).
    ``beat()`` is called from the hashing thread as it progresses (a liveness signal).
    """
    if tuple(engines) == ("pipeline",):
        _pipeline(src, dst, offset, end, hasher, advance, label)
        return "pipeline"
    follower = _Follower(hasher, dst, offset, follow, beat)
    pos = offset
    used = "none"

    def step(n: int) -> None:
        nonlocal pos
        pos += n
        follower.advance(pos)
        advance(n)

    try:
        for engine in engines:
            if pos >= end:
                break
            if engine == "reflink" and pos != 0:
                continue
            try:
                _ENGINES[engine](src, dst, pos, end, step, label)
                used = engine
            except _Unsupported:
                continue
            if pos >= end:
                break
        if pos < end:
            raise TransferError(f"{label}: no copy method could copy the file")
    finally:
        follower.finish()
    return used


def guarded_copy(
    src: int,
    dst: int,
    offset: int,
    end: int,
    hasher: Any,
    advance: Advance,
    *,
    label: str,
    idle_timeout: float,
) -> str:
    """``system_copy`` in a worker thread, so a filesystem that stops answering mid-copy (dead
    NFS) cannot hang the caller: no progress for ``idle_timeout`` seconds raises
    ``EngineAbandoned`` (the sink then drops that temp file and its hash). The worker uses its
    own duplicates of both fds, so an fd number the caller closes or reuses is never touched.
    """
    from locpick.sink.atomic import EngineAbandoned

    wsrc, wdst = os.dup(src), os.dup(dst)
    steps: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    cancel = threading.Event()
    outcome: list[str] = []
    failure: list[BaseException] = []

    def step(n: int) -> None:
        if cancel.is_set():
            raise TransferError(f"{label}: copy cancelled")
        steps.put(n)

    def work() -> None:
        try:
            outcome.append(
                system_copy(
                    wsrc, wdst, offset, end, hasher, step, label=label, beat=lambda: steps.put(0)
                )
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
        finally:
            os.close(wsrc)
            os.close(wdst)
            steps.put(None)

    worker = threading.Thread(target=work, name="locpick-copy", daemon=True)
    worker.start()
    try:
        while (n := steps.get(timeout=idle_timeout)) is not None:
            if n:  # 0 = the hasher is alive (it may lag the copy by seconds)
                advance(n)
    except queue.Empty:
        cancel.set()
        raise EngineAbandoned(
            f"{label}: copy stalled: no progress for {idle_timeout:g}s "
            "(hung filesystem?); copy abandoned"
        ) from None
    except BaseException:
        cancel.set()
        worker.join(idle_timeout)
        if worker.is_alive():
            raise EngineAbandoned(f"{label}: copy did not stop; copy abandoned") from None
        raise
    if failure:
        raise failure[0]
    return outcome[0]


class _Unsupported(Exception):
    """This engine cannot be used for this pair of files; try the next one."""


def _os_error(exc: OSError, label: str, pos: int, progressed: bool) -> Exception:
    if exc.errno in _UNSUPPORTED and not progressed:
        return _Unsupported()
    if exc.errno in _DEST_ERRORS:
        return DestinationError(f"{label}: writing the copy failed at byte {pos} ({exc.strerror})")
    return TransferError(f"{label}: copy failed at byte {pos} ({exc.strerror})")


def _shrank(label: str, pos: int, end: int) -> TransferError:
    return TransferError(f"{label}: source ended at byte {pos} of {end} (file shrank?)")


def _reflink(src: int, dst: int, pos: int, end: int, step: Advance, label: str) -> None:
    if os.fstat(src).st_dev != os.fstat(dst).st_dev:
        raise _Unsupported()
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as exc:  # nothing written: any refusal means "try the next engine"
        raise _Unsupported() from exc
    size = os.fstat(dst).st_size
    if size != end:
        os.ftruncate(dst, 0)
        raise _shrank(label, min(size, end), end)
    step(end)


def _kernel_copy(
    call: Callable[[int, int], int], pos: int, end: int, step: Advance, label: str
) -> None:
    """Loop ``call(offset, count) -> bytes copied`` (copy_file_range, sendfile) up to ``end``."""
    progressed = False
    while pos < end:
        try:
            n = call(pos, min(COPY_CHUNK, end - pos))
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise _os_error(exc, label, pos, progressed) from exc
        if n == 0:
            raise _shrank(label, pos, end)
        progressed = True
        pos += n
        step(n)


def _copy_file_range(src: int, dst: int, pos: int, end: int, step: Advance, label: str) -> None:
    _kernel_copy(lambda at, n: os.copy_file_range(src, dst, n, at, at), pos, end, step, label)


def _sendfile(src: int, dst: int, pos: int, end: int, step: Advance, label: str) -> None:
    os.lseek(dst, pos, os.SEEK_SET)
    _kernel_copy(lambda at, n: os.sendfile(dst, src, at, n), pos, end, step, label)


def _read_write(src: int, dst: int, view: memoryview, pos: int, end: int, label: str) -> int:
    """Read up to ``len(view)`` bytes of ``src`` at ``pos`` and write them to ``dst`` at the
    same offset; returns how many."""
    try:
        n = os.preadv(src, [view[: min(len(view), end - pos)]], pos)
    except OSError as exc:
        raise TransferError(f"{label}: read failed at byte {pos} ({exc.strerror})") from exc
    if n == 0:
        raise _shrank(label, pos, end)
    done = 0
    while done < n:
        try:
            done += os.pwrite(dst, view[done:n], pos + done)
        except OSError as exc:
            raise _os_error(exc, label, pos + done, True) from exc
    return n


def _buffered(src: int, dst: int, pos: int, end: int, step: Advance, label: str) -> None:
    view = memoryview(bytearray(HASH_CHUNK * 4))
    while pos < end:
        n = _read_write(src, dst, view, pos, end, label)
        pos += n
        step(n)


def _pipeline(
    src: int, dst: int, pos: int, end: int, hasher: Any, advance: Advance, label: str
) -> None:
    """read -> write -> hash the same buffer in a second thread (no re-read of the copy)."""
    from locpick.sink.hashing import BackgroundHasher

    pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(3):
        pool.put(bytearray(PIPE_CHUNK))
    bg = BackgroundHasher(hasher, release=pool.put)
    try:
        while pos < end:
            buf = pool.get()
            try:
                n = _read_write(src, dst, memoryview(buf), pos, end, label)
            except BaseException:
                pool.put(buf)
                raise
            bg.submit(buf, n)
            pos += n
            advance(n)
    finally:
        bg.stop()


_ENGINES: dict[str, Callable[[int, int, int, int, Advance, str], None]] = {
    "reflink": _reflink,
    "copy_file_range": _copy_file_range,
    "sendfile": _sendfile,
    "buffered": _buffered,
}
