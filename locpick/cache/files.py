"""The files of a node cache (layout: ``locpick.cache.store``): which names an id may take, the
trust
checks on an opened file or directory, the sidecar record, and the crash leftovers a sweep
removes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

import attrs

from locpick.cache.fill.tee import fill_id, remove_if_dead
from locpick.redact import redact_url
from locpick.sink.atomicfile import replace_file

log = logging.getLogger(__name__)

#: Image ids a cache accepts: Glance ids are UUIDs; anything path-like is refused.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
SIDECAR = ".json"
TMP_SUFFIX = ".locpick-tmp"
#: A copy still being filled (stream-through): its data and its fill record.
FILLING_SUFFIX = ".filling"
FILL_SUFFIX = ".fill"
#: Bytes per write when copying into the cache.
COPY_CHUNK = 1 << 20


def valid_image_id(image_id: str) -> bool:
    """True for an id that can name a cache file (no dots, slashes or other path syntax)."""
    return isinstance(image_id, str) and _ID.fullmatch(image_id) is not None


@attrs.frozen
class CacheEntry:
    """One visible cached image."""

    image_id: str
    path: Path
    size: int
    algo: str
    digest: str
    last_used: float
    #: The location URL this node registered in Glance for it, if any.
    registered_url: str | None = None
    #: The image's Glance visibility when it was cached (``serve``'s ``open_public`` reads it).
    visibility: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "path": str(self.path),
            "size": self.size,
            "algo": self.algo,
            "digest": self.digest,
            "last_used": round(self.last_used, 3),
            "registered_url": redact_url(self.registered_url) if self.registered_url else None,
            "visibility": self.visibility,
        }


def dir_problem(path: Path, st: os.stat_result) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return f"cache dir {path}: not a directory"
    if st.st_uid != os.geteuid():
        return f"cache dir {path}: owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return (
            f"cache dir {path}: group/world-writable (mode {stat.S_IMODE(st.st_mode):04o}); "
            "others could plant images in it: chmod 700 it and evict what you do not trust"
        )
    return None


def file_problem(st: os.stat_result) -> str | None:
    """Why a cache file cannot be trusted (shown in logs), else None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} links"
    if st.st_mode & 0o022:
        return "group/world-writable"
    return None


def read_sidecar(side: Path) -> tuple[dict[str, Any], float] | None:
    """(metadata, mtime) of a trustworthy sidecar, else None."""
    try:
        fd = os.open(side, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        reason = file_problem(st)
        if reason is not None or st.st_size > 1 << 16:
            if reason is not None:
                log.warning("cache: ignoring sidecar %s: %s", side, reason)
            return None
        with os.fdopen(os.dup(fd), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return (meta, st.st_mtime) if isinstance(meta, dict) else None


def entry_from(
    image_id: str, data: Path, st: os.stat_result, meta: dict[str, Any], last_used: float
) -> CacheEntry | None:
    reason = file_problem(st)
    if reason is not None:  # a symlink, device, hardlink or foreign file planted in the cache
        log.warning("cache: ignoring %s: %s", data, reason)
        return None
    algo, digest = meta.get("algo"), meta.get("digest")
    if meta.get("size") != st.st_size or not isinstance(algo, str) or not isinstance(digest, str):
        return None
    reg, vis = meta.get("registered_url"), meta.get("visibility")
    return CacheEntry(
        image_id=image_id,
        path=data,
        size=st.st_size,
        algo=algo,
        digest=digest,
        last_used=last_used,
        registered_url=reg if isinstance(reg, str) else None,
        visibility=vis if isinstance(vis, str) else None,
    )


def write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def remove_if_abandoned(path: Path) -> None:
    """Unlink a temp file unless a live writer holds its flock (sidecar temps are written
    under the cache lock, which the sweeper holds, so theirs is always free)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    try:
        if os.fstat(fd).st_ino == os.lstat(path).st_ino:
            path.unlink()
            log.info("cache: removed %s, left by a writer that died", path.name)
    finally:
        os.close(fd)


def sweep_leftovers(images: Path) -> None:
    """Drop crash leftovers in ``images`` (the caller holds the cache lock): data without
    sidecar, sidecars without data, temp files whose writer is gone (their flock is free) and
    the files of a fill whose downloader died (its record's flock is free)."""
    for path in images.iterdir():
        name = path.name
        with contextlib.suppress(OSError):
            image_id = fill_id(name)
            if image_id is not None and valid_image_id(image_id):
                remove_if_dead(images, image_id)
            elif name.endswith(TMP_SUFFIX):
                remove_if_abandoned(path)
            elif name.endswith(SIDECAR):
                if not (images / name[: -len(SIDECAR)]).exists():
                    path.unlink()
            elif not (images / (name + SIDECAR)).exists() and valid_image_id(name):
                path.unlink()


def write_sidecar(side: Path, meta: dict[str, Any]) -> None:
    """Replace an entry's sidecar (0600, through a temp file a sweep recognises)."""
    replace_file(side, json.dumps(meta).encode(), mode=0o600, suffix=TMP_SUFFIX)
