"""Shared filesystems: mount table, reachability you can trust, confinement and system copy.

A ``file://`` location is usable only when it maps onto a configured ``[[filesystems]]`` entry
(Nova ``image_file_url`` semantics: the path is re-rooted from the location's ``mountpoint``
onto the local one) that is really mounted here, answers within a timeout, is the right
filesystem (optional marker file / fs UUID), and holds a regular file of the image's size whose
real path stays under the mountpoint. Every failed condition has its own reason code::

    not-on-configured-filesystem   no configured filesystem, '..', remote host, symlink escape
    not-mounted                    the mountpoint is a plain directory (or missing)
    mount-unresponsive             stat/open did not answer within the timeout (stale/hung mount)
    wrong-filesystem               marker file missing or fs UUID/source differs
    other-mount                    the path crosses into another filesystem mounted below
    file-missing / not-regular-file / size-mismatch / not-readable

The system copy (``system_copy``) tries, in order: a reflink (``FICLONE``) when source and
destination share a filesystem that supports it, ``os.copy_file_range``, ``os.sendfile``, and a
buffered read/write. The hash is computed *while* the copy runs: a follower thread reads back
the destination bytes just written (from the page cache) and hashes them, so what is verified
is what will be renamed onto ``dest``.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import stat
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from locpick.config import Filesystem
from locpick.errors import (
    DestinationError,
    LocationError,
    LocationUnreachable,
    TransferError,
    UnsupportedLocation,
)

NOT_ON_FS = "not-on-configured-filesystem"
NOT_MOUNTED = "not-mounted"
UNRESPONSIVE = "mount-unresponsive"
WRONG_FS = "wrong-filesystem"
OTHER_MOUNT = "other-mount"
MISSING = "file-missing"
NOT_REGULAR = "not-regular-file"
SIZE_MISMATCH = "size-mismatch"
NOT_READABLE = "not-readable"

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

MOUNTINFO = "/proc/self/mountinfo"


# -- mount table ------------------------------------------------------------------------------
@attrs.frozen
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    dev: str  # "major:minor"
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        code = field[i + 1 : i + 4]
        if c == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """Parse /proc/self/mountinfo text; malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    dev=fields[2],
                    root=_unescape(fields[3]),
                    mountpoint=_unescape(fields[4]),
                    options=fields[5],
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return tuple(mounts)


def read_mounts(path: str = MOUNTINFO) -> tuple[Mount, ...]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return parse_mountinfo(fh.read())
    except OSError:
        return ()


def mount_at(mountpoint: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount whose mount point is exactly ``mountpoint`` (the last one: it is on top)."""
    found = None
    for m in mounts:
        if m.mountpoint == mountpoint:
            found = m
    return found


# -- mapping and confinement (pure) -----------------------------------------------------------
def under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


def map_location(
    url: str, metadata: Any, filesystems: Sequence[Filesystem]
) -> tuple[str, Filesystem]:
    """The local path and filesystem a file:// URL maps to; UnsupportedLocation if refused.

    Pure: no filesystem access. Symlinks are checked later, by ``inspect``.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedLocation(f"{NOT_ON_FS} (remote host {parts.netloc!r} in file URL)")
    path = urllib.parse.unquote(parts.path)
    if "\x00" in path or not path.startswith("/"):
        raise UnsupportedLocation(f"{NOT_ON_FS} (not an absolute path)")
    if any(seg == ".." for seg in path.split("/")):
        raise UnsupportedLocation(f"{NOT_ON_FS} ('..' segment in path)")
    meta = metadata if isinstance(metadata, dict) else dict(metadata or {})
    meta_id, meta_mount = meta.get("id"), meta.get("mountpoint")
    for fs in filesystems:
        if meta_id is not None:
            if fs.id != meta_id or not isinstance(meta_mount, str) or not under(path, meta_mount):
                continue
            rel = os.path.relpath(path, meta_mount)
            return os.path.normpath(os.path.join(fs.mountpoint, rel)), fs
        if under(path, fs.mountpoint):
            return os.path.normpath(path), fs
    if meta_id is not None:
        return _refuse(f"{NOT_ON_FS} (no configured filesystem with id {meta_id!r})")
    return _refuse(NOT_ON_FS)


def _refuse(reason: str) -> tuple[str, Filesystem]:
    raise UnsupportedLocation(reason)


# -- reachability (I/O, bounded by a timeout) -------------------------------------------------
@attrs.frozen
class FsReport:
    """What the reachability check found; ``reason`` is None when the file can be copied."""

    fs: Filesystem
    path: str
    reason: str | None
    fstype: str | None = None
    same_device_as_dest: bool | None = None
    size: int | None = None

    def describe(self) -> str:
        """The ``shared_fs`` reason shown by ``rank``."""
        where = f"{self.fs.id} at {self.fs.mountpoint}"
        bits = [self.fstype or "unknown fs"]
        if self.same_device_as_dest is not None:
            bits.append("same device as dest" if self.same_device_as_dest else "other device")
        if self.fs.trusted:
            bits.append("trusted: size check only")
        return f"system copy from {where} ({', '.join(bits)})"


T = TypeVar("T")
_stuck_lock = threading.Lock()
#: Mountpoints whose check thread never came back: later checks answer at once, no new thread.
_stuck: dict[str, threading.Thread] = {}


def run_bounded(key: str, fn: Callable[[], T], timeout: float) -> T | None:
    """Run ``fn`` in a daemon thread; None if it did not finish within ``timeout`` seconds.

    A thread stuck in the kernel on a dead NFS mount cannot be killed, so it is remembered and
    no second one is started for the same mountpoint until it returns.
    """
    with _stuck_lock:
        old = _stuck.get(key)
        if old is not None:
            if old.is_alive():
                return None
            del _stuck[key]
    box: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            err.append(exc)

    t = threading.Thread(target=target, name=f"locpick-fscheck {key}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        with _stuck_lock:
            _stuck[key] = t
        return None
    if err:
        raise err[0]
    return box[0]


def inspect(
    fs: Filesystem,
    path: str,
    size: int | None,
    *,
    dest_dir: str | None = None,
    mounts: Sequence[Mount] | None = None,
) -> FsReport:
    """Every check, in order, on the calling thread (``check`` bounds it with a timeout)."""
    root = os.path.realpath(fs.mountpoint)
    fstype: str | None = None
    try:
        root_st = os.stat(root)
    except OSError as exc:
        return FsReport(fs, path, f"{NOT_MOUNTED}: {fs.mountpoint} ({exc.strerror})")
    if fs.require_mount:
        table = read_mounts() if mounts is None else mounts
        m = mount_at(root, table)
        if m is None:  # bind mounts count: they are in the table though on the same device
            why = "is not a mount point" if table else f"unknown (cannot read {MOUNTINFO})"
            return FsReport(fs, path, f"{NOT_MOUNTED}: {fs.mountpoint} {why}")
        fstype = m.fstype
        if fs.fs_uuid is not None and not _same_source(fs.fs_uuid, m):
            return FsReport(
                fs,
                path,
                f"{WRONG_FS}: {fs.mountpoint} holds {m.source!r}, expected {fs.fs_uuid!r}",
                fstype,
            )
    else:
        fstype = "directory (require_mount off)"
    same_dev = None
    if dest_dir is not None:
        try:
            same_dev = os.stat(dest_dir).st_dev == root_st.st_dev
        except OSError:
            same_dev = None
    rep = attrs.evolve
    base = FsReport(fs, path, None, fstype, same_dev)
    if fs.marker is not None:
        marker = os.path.join(root, fs.marker)
        try:
            mst = os.lstat(marker)
            ok = stat.S_ISREG(mst.st_mode) and under(os.path.realpath(marker), root)
        except OSError:
            ok = False
        if not ok:
            return rep(base, reason=f"{WRONG_FS}: marker {fs.marker!r} missing in {fs.mountpoint}")
    real = os.path.realpath(path)
    if not under(real, root):
        return rep(base, reason=f"{NOT_ON_FS} (resolves outside {fs.mountpoint})")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return rep(base, path=real, reason=f"{MISSING}: {path}")
    except OSError as exc:
        return rep(base, path=real, reason=f"{NOT_READABLE}: {path} ({exc.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return rep(base, path=real, reason=f"{NOT_REGULAR}: {path} is a {_kind(st.st_mode)}")
    if st.st_dev != root_st.st_dev:
        return rep(base, path=real, reason=f"{OTHER_MOUNT}: {path} is on another filesystem")
    if size is not None and st.st_size != size:
        return rep(
            base,
            path=real,
            reason=f"{SIZE_MISMATCH}: file has {st.st_size} bytes, image {size}",
        )
    try:
        fd = open_confined(real, root_st.st_dev)
    except LocationError as exc:
        return rep(base, path=real, reason=str(exc))
    else:
        os.close(fd)
    return rep(base, path=real, size=st.st_size)


def _same_source(expected: str, m: Mount) -> bool:
    want = expected.removeprefix("UUID=")
    if want in (m.source, m.dev):
        return True
    by_uuid = f"/dev/disk/by-uuid/{want}"
    try:
        return os.path.exists(by_uuid) and os.path.realpath(by_uuid) == os.path.realpath(m.source)
    except OSError:
        return False


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def open_confined(real: str, dev: int) -> int:
    """Open a checked path without following a symlink or blocking on a FIFO; re-check by fd."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise UnsupportedLocation(f"{NOT_READABLE}: {real} ({exc.strerror})") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_dev != dev:
        os.close(fd)
        raise UnsupportedLocation(f"{NOT_REGULAR}: {real} changed while being opened")
    os.set_blocking(fd, True)
    return fd


def open_checked(report: FsReport, timeout: float) -> int:
    """Open a file that passed ``check``, again bounded by ``timeout`` (the mount may have
    died since); UnsupportedLocation / LocationUnreachable with the reason otherwise."""
    fs = report.fs

    def do_open() -> int:
        dev = os.stat(os.path.realpath(fs.mountpoint)).st_dev
        return open_confined(report.path, dev)

    try:
        fd = run_bounded(os.path.abspath(fs.mountpoint), do_open, timeout)
    except OSError as exc:
        raise LocationUnreachable(f"{NOT_READABLE}: {report.path} ({exc.strerror})") from exc
    if fd is None:
        raise LocationUnreachable(_unresponsive(fs, timeout))
    return fd


def check(
    fs: Filesystem,
    path: str,
    size: int | None,
    *,
    dest_dir: str | None = None,
    timeout: float = 2.0,
) -> FsReport:
    """``inspect`` bounded by ``timeout``: a hung mount yields ``mount-unresponsive``."""
    found = run_bounded(
        os.path.abspath(fs.mountpoint),
        lambda: inspect(fs, path, size, dest_dir=dest_dir),
        timeout,
    )
    if found is None:
        return FsReport(fs, path, _unresponsive(fs, timeout))
    return found


def _unresponsive(fs: Filesystem, timeout: float) -> str:
    hint = "(stale or hung mount?)"
    return f"{UNRESPONSIVE}: {fs.mountpoint} did not answer within {timeout:g}s {hint}"


# -- system copy ------------------------------------------------------------------------------
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
    from locpick.sink import EngineAbandoned

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
    from locpick.hashing import BackgroundHasher

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
