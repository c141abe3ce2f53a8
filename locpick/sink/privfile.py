"""Files beside DEST, in a directory other local users may write: open only our own regular
files, write small JSON records atomically, and fsync a directory after a rename."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path

#: Flags for opening a file a local user may have planted: never follow a symlink, never block
#: (a FIFO opens at once instead of waiting for a writer), never leak into children.
SAFE_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

log = logging.getLogger(__name__)


def is_private(st: os.stat_result) -> bool:
    """A regular file owned by the running user with one link: nobody else planted or shares it."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def open_private(path: str | os.PathLike[str]) -> int | None:
    """A read-only fd on ``path`` if it is a regular file owned by us with one link, else None.

    For files in a directory other local users can write (beside DEST): a FIFO, device, symlink
    or someone else's file there is never read (and a FIFO never blocks the open)."""
    try:
        fd = os.open(path, os.O_RDONLY | SAFE_OPEN)
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


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable; errors are ignored (not every filesystem can)."""
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
