"""The per-destination lock: one locpick process writes a given DEST at a time
(``.DEST.locpick-lock``, flock), the waiter told who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from locpick.errors import DestinationError
from locpick.sink.privfile import SAFE_OPEN

log = logging.getLogger(__name__)


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
            fd = os.open(path, os.O_RDWR | os.O_CREAT | SAFE_OPEN, 0o600)
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
