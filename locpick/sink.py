"""A verified, atomic destination: bytes go to a private temp file beside ``dest``, are hashed
while they arrive, and only a file of the right size and hash is renamed onto ``dest``."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locpick.errors import (
    ChecksumMismatch,
    DestinationError,
    InputError,
    SizeMismatch,
    TransferError,
)
from locpick.hashing import BackgroundHasher, Expected

if TYPE_CHECKING:
    from locpick.filltee import Tee

_POOL_BUFFERS = 4
_PART_SUFFIX = ".locpick-part"
_SIDECAR_VERSION = 1
#: A sidecar is a few hundred bytes; anything larger was not written by locpick.
_SIDECAR_MAX = 1 << 20
#: Flags for opening a file a local user may have planted: never follow a symlink, never block
#: (a FIFO opens at once instead of waiting for a writer), never leak into children.
_SAFE_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

log = logging.getLogger("locpick")


class EngineAbandoned(TransferError):
    """A copy engine stalled and was left behind, possibly still writing to the temp file and
    its hash: the sink discards that temp file and its hash and starts a new one at offset 0."""


#: ``(fd, offset, hasher, advance) -> engine name``: see ``AtomicSink.adopt``.
CopyEngine = Callable[[int, int, Any, Callable[[int], None]], str]


class _Writer:
    """Writes buffers at their offsets in a worker thread, then hands them to the hasher.

    Reading the socket, writing the file and hashing then run in three threads that all release
    the GIL, so the slowest stage (sha512 here) sets the pace (benchmarks/README.md).
    """

    def __init__(
        self,
        fd: int,
        hasher: BackgroundHasher,
        release: queue.SimpleQueue[bytearray],
        tee: Tee | None = None,
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
        resume: Mapping[str, Any] | None = None,
        max_bytes: int | None = None,
        tee: Tee | None = None,
    ) -> None:
        """``resume``: identity of the image (id, size, hash) -> write to a resumable
        ``.DEST.locpick-part`` with a JSON sidecar, reusing a matching part left by a crashed run
        (the caller holds :func:`dest_lock`). Without it, a private random temp file is used.

        Writes never go past ``size``; without a size, past the first Content-Length of the
        bytes held (:meth:`learn_total`) nor ``max_bytes``, and a full disk is then blamed on
        the location (an endless body), not on the destination. ``tee``: every write (and resumed
        byte) is mirrored into the node cache's filling copy (``locpick.cachefill``)."""
        self.dest = Path(dest)
        self.size = size
        self.max_bytes = max_bytes
        #: Total announced by the source of the bytes held, when the record has no size.
        self.learned: int | None = None
        self.expected = expected
        self.mode = mode
        self.buffer_bytes = buffer_bytes
        self.label = label
        parent = self.dest.parent
        if not parent.is_dir():
            raise InputError(f"dest {self.dest}: directory {parent} does not exist")
        if self.dest.is_dir():
            raise InputError(f"dest {self.dest}: is a directory")
        self.offset = 0
        #: Bytes taken over from a part file of an earlier run (0 when starting fresh).
        self.reused = 0
        #: Source validators known for the bytes held: {url: {"etag": .., "last_modified": ..}}.
        self.validators: dict[str, dict[str, str | None]] = {}
        self._pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._allocated = 0
        self.tee = tee
        self._hasher = self._new_hasher(expected.new())
        self._writer: _Writer | None = None
        #: Set by ``adopt(..., verify=False)``: commit checks the size alone.
        self.size_only = False
        self._resume = dict(resume) if resume is not None else None
        self.sidecar: Path | None = None
        self.fd: int | None = None
        try:
            if self._resume is None:
                self._check_free_space(parent, 0)
                self.fd, self.tmp = self._open_temp(parent)
            else:
                self.tmp = parent / f".{self.dest.name}{_PART_SUFFIX}"
                self.sidecar = parent / f".{self.dest.name}{_PART_SUFFIX}.json"
                self.fd = self._open_part()
                self._check_free_space(parent, self.offset)
            self._writer = _Writer(self.fd, self._hasher, self._pool, self.tee)
            if self.tee is not None and self.reused:
                self._tee_reused()
        except BaseException:
            self.abort()
            raise

    def _new_hasher(self, hasher: Any) -> BackgroundHasher:
        on_hashed = self.tee.hashed_to if self.tee is not None else None
        return BackgroundHasher(hasher, release=self._pool.put, on_hashed=on_hashed)

    def _tee_reused(self) -> None:
        """The bytes taken over from an earlier run's part file go into the filling copy too."""
        assert self.tee is not None and self.fd is not None
        self.tee.copy_from(self.fd, 0, self.reused)

    def _open_temp(self, parent: Path) -> tuple[int, Path]:
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.dest.name}.", suffix=".locpick-tmp", dir=parent
            )
        except OSError as exc:
            raise DestinationError(
                f"dest {self.dest}: cannot create a temporary file ({exc.strerror})"
            ) from exc
        return fd, Path(tmp)

    def _open_part(self) -> int:
        """Reuse a matching part file (hashing what it holds) or create a fresh one (O_EXCL)."""
        assert self.sidecar is not None
        fd = self._reuse_part()
        if fd is not None:
            return fd
        for stale in (self.tmp, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.tmp, flags, 0o600)
        except OSError as exc:
            raise DestinationError(
                f"dest {self.dest}: cannot create the part file {self.tmp.name} ({exc.strerror})"
            ) from exc
        self._write_sidecar()
        return fd

    def _reuse_part(self) -> int | None:
        assert self.sidecar is not None and self._resume is not None
        raw = read_private(self.sidecar, _SIDECAR_MAX)
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("version") != _SIDECAR_VERSION:
            return None
        if any(meta.get(k) != v for k, v in self._resume.items()):
            return None
        try:
            fd = os.open(self.tmp, os.O_RDWR | _SAFE_OPEN)
        except OSError:
            return None
        st = os.fstat(fd)
        held = st.st_size
        if not is_private(st) or (self.size is not None and held > self.size):
            os.close(fd)
            return None
        validators = meta.get("validators")
        if isinstance(validators, dict):
            self.validators = {
                str(u): dict(v) for u, v in validators.items() if isinstance(v, dict)
            }
        try:
            self._rehash(fd, held)
        except OSError:
            os.close(fd)
            self._hasher.stop()
            self._hasher = self._new_hasher(self.expected.new())
            return None
        os.lseek(fd, held, os.SEEK_SET)
        self.offset = self.reused = held
        log.info("dest %s: resuming %d bytes left by an earlier run", self.dest, held)
        return fd

    def _rehash(self, fd: int, held: int) -> None:
        """Feed the bytes already in the part file to the hasher."""
        pos = 0
        while pos < held:
            buf = self.buffer()
            n = os.preadv(fd, [memoryview(buf)[: min(len(buf), held - pos)]], pos)
            if n <= 0:
                self.give_back(buf)
                raise OSError(errno.EIO, "part file shorter than its size")
            self._hasher.submit(buf, n)
            pos += n

    def _write_sidecar(self) -> None:
        if self.sidecar is None or self._resume is None:
            return
        meta = {"version": _SIDECAR_VERSION, **self._resume, "validators": self.validators}
        try:
            write_json_atomic(self.sidecar, meta)
        except OSError as exc:
            self._raise_disk(exc)

    def remember_validators(self, url: str, etag: str | None, last_modified: str | None) -> None:
        """Record the validators of the source of the bytes held (for If-Range on resume)."""
        entry = {"etag": etag, "last_modified": last_modified}
        if not (etag or last_modified) or self.validators.get(url) == entry:
            return
        self.validators[url] = entry
        self._write_sidecar()

    def _check_free_space(self, parent: Path, held: int) -> None:
        if not self.size:
            return
        try:
            free = shutil.disk_usage(parent).free
        except OSError:
            return
        need = self.size - held
        if free < need:
            raise DestinationError(
                f"dest {self.dest}: not enough free space in {parent} "
                f"(need {need} more bytes, {free} free)"
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

    def learn_total(self, total: int | None) -> None:
        """A source announced ``total`` bytes (Content-Length / Content-Range). Without a record
        size, the first total of the bytes held bounds every later write until a reset."""
        if self.size is None and total is not None and (self.learned is None or not self.offset):
            self.learned = total

    def _over_limit(self, n: int) -> str | None:
        """Why ``n`` more bytes would be too many, else None."""
        end = self.offset + n
        if self.size is not None:
            return f"the image size ({self.size} bytes)" if end > self.size else None
        if self.learned is not None and end > self.learned:
            return f"the first Content-Length of the bytes held ({self.learned} bytes)"
        if self.max_bytes is not None and end > self.max_bytes:
            return f"[security] max_image_bytes ({self.max_bytes} bytes; the record has no size)"
        return None

    def write(self, buf: bytearray, n: int) -> None:
        """Write ``buf[:n]`` at the current offset, then hand it to the hasher (which frees it)."""
        over = self._over_limit(n)
        if over is not None:
            self._pool.put(buf)
            raise SizeMismatch(f"{self.label}: sent more than {over}")
        assert self._writer is not None
        if self._writer.error is not None:
            self._pool.put(buf)
            self._raise_disk(self._writer.error)
        self._writer.submit(buf, n, self.offset)
        self.offset += n

    def adopt(self, engine: CopyEngine, *, verify: bool = True) -> str:
        """Let a copy engine write into the temp file at fd level, from ``self.offset`` on.

        ``engine(fd, offset, hasher, advance)`` writes the following bytes at their offsets,
        calls ``advance(n)`` after each ``n`` bytes, and before it returns or raises has fed
        every advanced byte, in order, to ``hasher`` (None = not hashing). The bytes before
        ``offset`` are already in the hash, so a copy can continue a partial download and the
        usual ``commit`` verifies the whole file. ``verify=False`` (a trusted filesystem, from
        offset 0 only) makes ``commit`` check the size alone. Returns what the engine returns.
        """
        assert self.fd is not None
        self._drain_writer()
        if self.tee is not None:
            self.tee.abandon("a system copy writes the file itself")
        hasher = self._hasher.detach()
        if not verify and self.offset == 0:
            hasher = None
            self.size_only = True

        def advance(n: int) -> None:
            over = self._over_limit(n)
            if over is not None:
                raise SizeMismatch(f"{self.label}: copied more than {over}")
            self.offset += n

        abandoned = False
        try:
            return engine(self.fd, self.offset, hasher, advance)
        except EngineAbandoned:
            abandoned = True
            self._renew_temp()
            raise
        finally:
            if not abandoned:
                self._start_pipeline(hasher)

    def _start_pipeline(self, hasher: Any) -> None:
        """Fresh hash and write threads on the current fd (``hasher``: None = not hashing)."""
        assert self.fd is not None
        self._hasher = self._new_hasher(hasher)
        self._writer = _Writer(self.fd, self._hasher, self._pool, self.tee)

    def _drain_writer(self) -> None:
        """Wait for the queued writes; a failed write surfaces here as a DestinationError."""
        assert self._writer is not None
        self._writer.drain()
        if self._writer.error is not None:
            self._raise_disk(self._writer.error)

    def _renew_temp(self) -> None:
        """Swap in a fresh temp file (offset 0, fresh hash); the old one is unlinked, so a
        thread still writing into it through its own fd only fills an orphaned inode."""
        assert self.fd is not None
        old_fd, old_tmp = self.fd, self.tmp
        if self._resume is not None:  # part mode: unlink first, then a fresh part (O_EXCL)
            with contextlib.suppress(FileNotFoundError):
                old_tmp.unlink()
            self.validators = {}
            self.offset = self.reused = 0
            fd, tmp = self._open_part(), self.tmp
        else:
            fd, tmp = self._open_temp(self.dest.parent)
        self.fd, self.tmp = fd, Path(tmp)
        os.close(old_fd)
        with contextlib.suppress(FileNotFoundError):
            if old_tmp != self.tmp:
                old_tmp.unlink()
        self.offset = 0
        self.size_only = False
        self._start_pipeline(self.expected.new())

    def give_back(self, buf: bytearray) -> None:
        """Return a buffer that was taken but not written."""
        self._pool.put(buf)

    def _raise_disk(self, exc: OSError) -> None:
        need = "" if self.size is None else f"; {self.size - self.offset} more bytes needed"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and self.size is None:
            # Without a size a full disk may be an endless body: blame the location, so that
            # the sink is reset (space freed) and the next location tried.
            raise SizeMismatch(
                f"{self.label}: sent more than the free space in {self.dest.parent} "
                f"({self.offset} bytes written; the record has no size)"
            ) from exc
        if exc.errno == errno.ENOSPC:
            raise DestinationError(f"dest {self.dest}: no space left on device{need}") from exc
        raise DestinationError(f"dest {self.dest}: write failed ({exc.strerror}){need}") from exc

    def reset(self) -> None:
        """Drop everything written so far (after a mismatch) and start again at offset 0."""
        assert self._writer is not None
        self._writer.drain()
        if self.tee is not None:  # peers may have read bytes that were wrong
            self.tee.abandon("the bytes held were dropped (wrong or changed)")
        self._hasher.stop()
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.offset = 0
        self.reused = 0
        self.learned = None
        self.size_only = False
        self._start_pipeline(self.expected.new())
        if self.validators:
            self.validators = {}
            self._write_sidecar()

    def commit(self) -> str | None:
        """Verify size and hash, fsync, and rename onto dest. Returns the verified algorithm."""
        self._drain_writer()
        digest = self._hasher.hexdigest()
        if self.size is not None and self.offset != self.size:
            raise SizeMismatch(f"{self.label}: got {self.offset} bytes, expected {self.size}")
        if self.size_only:
            digest = self.expected.value
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
            if self.sidecar is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.sidecar.unlink()
            _fsync_dir(self.dest.parent)
        except OSError as exc:
            self._raise_disk(exc)
        return None if self.size_only else self.expected.algo

    def abort(self) -> None:
        """Remove the temp file (and sidecar); safe to call repeatedly and after commit."""
        if self._writer is not None:
            self._writer.drain()
        self._hasher.stop()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            if self.sidecar is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.sidecar.unlink()


def is_private(st: os.stat_result) -> bool:
    """A regular file owned by the running user with one link: nobody else planted or shares it."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def open_private(path: str | os.PathLike[str]) -> int | None:
    """A read-only fd on ``path`` if it is a regular file owned by us with one link, else None.

    For files in a directory other local users can write (beside DEST): a FIFO, device, symlink
    or someone else's file there is never read (and a FIFO never blocks the open)."""
    try:
        fd = os.open(path, os.O_RDONLY | _SAFE_OPEN)
    except OSError:
        return None
    if not is_private(os.fstat(fd)):
        os.close(fd)
        log.info("%s: not a regular file of ours (planted?); ignored", path)
        return None
    return fd


def read_private(path: str | os.PathLike[str], limit: int) -> bytes | None:
    """The content of a small private file (see :func:`open_private`), at most ``limit`` bytes."""
    fd = open_private(path)
    if fd is None:
        return None
    try:
        if os.fstat(fd).st_size > limit:
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


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


@contextlib.contextmanager
def dest_lock(dest: str | os.PathLike[str], *, timeout: float | None = None) -> Iterator[bool]:
    """Hold an exclusive lock for ``dest`` (``.DEST.locpick-lock``, flock); yields whether another
    process held it first (it may have produced the file meanwhile).

    The wait is bounded by ``timeout`` seconds (None: forever); then a DestinationError names
    the holder's pid (from ``/proc/locks``, else the pid the holder wrote into the file). The
    lock file is removed on release, so nothing is left beside dest. Removal is safe because
    a waiter that locked a file which was unlinked meanwhile notices (inode differs from the
    path's) and locks again. Anything but a regular file at the lock's name (a planted FIFO)
    is removed and replaced.
    """
    path = Path(dest).parent / f".{Path(dest).name}.locpick-lock"
    waited = False
    give_up = None if timeout is None else time.monotonic() + timeout
    pause = 0.02
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _SAFE_OPEN, 0o600)
        except OSError as exc:
            raise DestinationError(
                f"dest {dest}: cannot create the lock file {path.name} ({exc.strerror})"
            ) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            log.warning("dest %s: %s is not a regular file (planted?); replacing it", dest, path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _wait_or_give_up(dest, path, None, give_up, timeout, pause)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                log.warning("dest %s: another locpick process is writing it; waiting", dest)
            waited = True
            try:
                _wait_or_give_up(dest, path, fd, give_up, timeout, pause)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            pause = min(0.5, pause * 2)
            continue
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield waited
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _wait_or_give_up(
    dest: str | os.PathLike[str],
    path: Path,
    fd: int | None,
    give_up: float | None,
    timeout: float | None,
    pause: float,
) -> None:
    """Sleep ``pause`` before the next try, or raise once ``give_up`` has passed."""
    now = time.monotonic()
    if give_up is not None and now >= give_up:
        pid = None if fd is None else lock_holder(fd)
        who = "another process" if pid is None else f"another process (pid {pid})"
        raise DestinationError(
            f"dest {dest}: {who} holds the lock {path.name}; gave up after {timeout:g}s "
            "([transfer] lock_timeout)"
        )
    time.sleep(pause if give_up is None else max(0.0, min(pause, give_up - now)))


def lock_holder(fd: int) -> int | None:
    """The pid holding a flock on ``fd``'s file: from ``/proc/locks``, else the pid written in
    the file by a locpick holder; None when unknown."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with (
        contextlib.suppress(OSError),
        open("/proc/locks", encoding="ascii", errors="replace") as fh,
    ):
        for line in fh:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == dev:
                with contextlib.suppress(ValueError):
                    if int(fields[4]) > 0:
                        return int(fields[4])
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None


def write_json_atomic(path: Path, obj: object) -> None:
    """Replace ``path`` with ``obj`` as JSON through a private temp file beside it (0600,
    ``O_EXCL|O_NOFOLLOW``, so a link planted at the temp name is never followed); on failure
    the temp file is removed and the OSError raised."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
