"""Shared filesystems: reachability you can trust, confinement, and the reason codes.

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

The mount table is ``locpick.transports.file.mounts``; the system copy (reflink, copy_file_range,
sendfile,
buffered, hashed while it runs) is ``locpick.transports.file.syscopy``: both re-exported here.
"""

from __future__ import annotations

import os
import stat
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from locpick.config.model import Filesystem
from locpick.errors import LocationError, LocationUnreachable, UnsupportedLocation
from locpick.transports.file.mounts import MOUNTINFO, Mount, mount_at, read_mounts

__all__ = ["FsReport", "check", "inspect", "map_location", "open_checked", "open_confined", "under"]

NOT_ON_FS = "not-on-configured-filesystem"
NOT_MOUNTED = "not-mounted"
UNRESPONSIVE = "mount-unresponsive"
WRONG_FS = "wrong-filesystem"
OTHER_MOUNT = "other-mount"
MISSING = "file-missing"
NOT_REGULAR = "not-regular-file"
SIZE_MISMATCH = "size-mismatch"
NOT_READABLE = "not-readable"


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
