"""Copying a cached image out onto a destination, checked on the opened file."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from locpick.cache.files import TMP_SUFFIX, CacheEntry, file_problem
from locpick.errors import DestinationError, InputError

log = logging.getLogger(__name__)


def copy_out(entry: CacheEntry, dest: str | os.PathLike[str], *, mode: int = 0o644) -> bool:
    """Copy a cached image onto ``dest`` atomically (temp beside dest, fsync, rename).

    False when the entry vanished meanwhile (evicted by another process) or its file no longer
    passes the cache's trust checks (checked on the opened file): dest is untouched. True means
    the bytes came from a file only this user could have written, verified when it was added,
    so the caller may report the entry's hash as ``verified``.
    """
    target = Path(dest)
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"dest {target}: directory {parent} does not exist")
    if target.is_dir():
        raise InputError(f"dest {target}: is a directory")
    try:
        src_fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    src = os.fdopen(src_fd, "rb")
    st = os.fstat(src_fd)
    reason = file_problem(st)
    if reason is not None or st.st_size != entry.size:
        src.close()
        log.warning("cache: not using %s: %s", entry.path, reason or "size changed")
        return False
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=parent)
    try:
        with src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 4 << 20)
            dst.flush()
            if dst.tell() != entry.size:
                raise DestinationError(
                    f"dest {target}: cached copy of {entry.image_id} changed while copying"
                )
            os.fchmod(dst.fileno(), mode)
            os.fsync(dst.fileno())
        os.replace(name, target)
        return True
    except OSError as exc:
        raise DestinationError(f"dest {target}: copy from cache failed ({exc.strerror})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
