"""The node cache: verified images kept by image id, least-recently-used out first.

Layout of ``DIR`` (nothing else is ever read or served)::

    DIR/.lock                 filelock: held briefly while an entry is added or removed
    DIR/.secret               the key of this node's capability URLs (locpick.capability)
    DIR/images/<id>           the image bytes (complete and verified, or absent)
    DIR/images/<id>.json      the sidecar: size, hash algorithm and value, registered URL
    DIR/images/<id>.filling   a copy still being downloaded (stream-through), with its fill
    DIR/images/<id>.fill      record (locpick.fillstate); served only while a live writer fills it
    DIR/images/<id>.fill.json the URL registered for it (locpick.cachefill); all three are
                              never an entry, and swept once their writer died
    DIR/downloads.json, DIR/stats.json   operator records (locpick.journal), never served raw

An entry is *visible* only when both files exist and agree (the data file's size equals the
sidecar's). Adding one: the bytes go to a temp file that its writer keeps ``flock``-ed; then,
under the lock, the old sidecar goes (the entry turns invisible), the data is renamed into
place, and the new sidecar is renamed in last. A process killed at any step (kill -9) leaves
no visible half entry, only invisible leftovers, and no stale lock (the kernel releases a dead
process's flocks): the next ``add``/``evict``/``recover`` removes them, a temp file as soon as
its flock is free.
A cached copy is trusted for an image when its sidecar records the image's own hash (the copy
was verified against exactly that hash on the way in) and its size matches: re-checking is a
``stat`` and a JSON read, not a re-hash. Last use is the sidecar's mtime.

That trust needs that nobody else could have written there: ``DIR`` and ``DIR/images`` must be
owned by the running user and not group/world-writable (else the cache is refused, with the
reason), and an entry's files must be regular, ours, not group/world-writable and with one link
(a hardlink planted from elsewhere is not an entry). Data is opened with ``O_NOFOLLOW`` and the
checks are made on the opened file (``fstat``), not on the path. ``DIR`` is made 0700 and
entries 0600: a private image in the cache is readable by this user only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import filelock

from locpick import journal
from locpick.atomicfile import replace_file
from locpick.capability import UntrustedCache, image_token, load_secret, rotate_secret
from locpick.errors import DestinationError, InputError
from locpick.filltee import fill_id, remove_if_dead
from locpick.hashing import Expected
from locpick.models import Image
from locpick.redact import redact_url

log = logging.getLogger("locpick")

#: Image ids a cache accepts: Glance ids are UUIDs; anything path-like is refused.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_SIDECAR = ".json"
_TMP_SUFFIX = ".locpick-tmp"
#: A copy still being filled (stream-through): its data and its fill record.
FILLING_SUFFIX = ".filling"
FILL_SUFFIX = ".fill"
#: Bytes per write when copying into the cache.
_COPY_CHUNK = 1 << 20


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


class NodeCache:
    """A directory of verified images, safe to share between processes (filelock)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        self.dir = Path(directory).absolute()
        self.max_bytes = max_bytes
        self.images = self.dir / "images"
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.images.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cache dir {self.dir}: cannot create ({exc.strerror})") from exc
        self._tighten()
        self._lock = filelock.FileLock(str(self.dir / ".lock"), timeout=60)

    # -- trust --------------------------------------------------------------------------------
    def _tighten(self) -> None:
        """Make our own, otherwise safe, cache directories private (0700)."""
        for d in (self.dir, self.images):
            with contextlib.suppress(OSError):
                st = os.stat(d, follow_symlinks=False)
                if _dir_problem(d, st) is None and stat.S_IMODE(st.st_mode) != 0o700:
                    os.chmod(d, 0o700)

    def problem(self) -> str | None:
        """Why this cache cannot be trusted (someone else could write there), else None."""
        for d in (self.dir, self.images):
            try:
                st = os.stat(d, follow_symlinks=False)
            except OSError as exc:
                return f"cache dir {d}: cannot stat ({exc.strerror})"
            reason = _dir_problem(d, st)
            if reason is not None:
                return reason
        return None

    def check(self) -> None:
        """Raise :class:`UntrustedCache` naming the reason when the cache cannot be trusted."""
        reason = self.problem()
        if reason is not None:
            raise UntrustedCache(reason)

    def secret(self) -> bytes:
        """This node's capability secret (created 0600 on first use)."""
        self.check()
        return load_secret(self.dir)

    def token(self, image_id: str) -> str:
        """The capability token that ``serve`` expects for ``image_id``."""
        return image_token(self.secret(), image_id)

    def rotate_secret(self) -> None:
        """A new secret: every capability URL made with the old one is refused from now on."""
        self.check()
        rotate_secret(self.dir)

    # -- reading ------------------------------------------------------------------------------
    def _paths(self, image_id: str) -> tuple[Path, Path]:
        if not valid_image_id(image_id):
            raise InputError(f"cache: {image_id!r} is not a valid image id")
        return self.images / image_id, self.images / (image_id + _SIDECAR)

    def entry(self, image_id: str) -> CacheEntry | None:
        """The visible entry for ``image_id`` (complete data + agreeing sidecar), else None.

        None also when the cache or the entry's files could have been planted by someone else.
        """
        if not valid_image_id(image_id) or self.problem() is not None:
            return None
        data, side = self._paths(image_id)
        meta = _read_sidecar(side)
        if meta is None:
            return None
        try:
            st = os.lstat(data)
        except OSError:
            return None
        return _entry_from(image_id, data, st, *meta)

    def open_entry(self, image_id: str) -> tuple[int, CacheEntry] | None:
        """(fd, entry) of a visible entry, opened with ``O_NOFOLLOW`` and checked on the fd.

        The caller closes the fd. Serving or copying from the fd reads exactly the file that
        was checked, whatever is renamed over the path meanwhile.
        """
        if not valid_image_id(image_id) or self.problem() is not None:
            return None
        data, side = self._paths(image_id)
        meta = _read_sidecar(side)
        if meta is None:
            return None
        try:
            fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        entry = _entry_from(image_id, data, os.fstat(fd), *meta)
        if entry is None:
            os.close(fd)
            return None
        return fd, entry

    def fill_paths(self, image_id: str) -> tuple[Path, Path]:
        """(data, record) of a copy of ``image_id`` still being filled: ``images/<id>.filling``
        and its fill record ``images/<id>.fill`` (:mod:`locpick.fillstate`)."""
        data = self._paths(image_id)[0]
        return data.with_name(data.name + FILLING_SUFFIX), data.with_name(data.name + FILL_SUFFIX)

    def open_filling(self, image_id: str) -> int | None:
        """A read-only fd on the ``.filling`` data of ``image_id``, opened and checked as an
        entry's data is (``O_NOFOLLOW``; regular, ours, one link, checked on the fd); else None.
        """
        if not valid_image_id(image_id) or self.problem() is not None:
            return None
        try:
            fd = os.open(
                self.fill_paths(image_id)[0],
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            )
        except OSError:
            return None
        reason = _file_problem(os.fstat(fd))
        if reason is not None:
            log.warning("cache: ignoring the filling copy of %s: %s", image_id, reason)
            os.close(fd)
            return None
        return fd

    def lookup(self, image: Image) -> CacheEntry | None:
        """A cached copy proven to be ``image``: same size and the record's own hash."""
        entry = self.entry(image.id)
        if entry is None:
            return None
        expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
        if expected.value is None:
            return None
        if (
            entry.algo != expected.algo
            or entry.digest != expected.value
            or (image.size is not None and entry.size != image.size)
        ):
            log.info("cache: copy of %s does not match the current record; ignoring it", image.id)
            return None
        return entry

    def entries(self) -> list[CacheEntry]:
        """Every visible entry, least recently used first."""
        found = []
        for side in self.images.glob("*" + _SIDECAR):
            entry = self.entry(side.name[: -len(_SIDECAR)])
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: (e.last_used, e.image_id))

    def touch(self, image_id: str) -> None:
        """Mark an entry as just used (LRU order)."""
        with contextlib.suppress(OSError, InputError):
            os.utime(self._paths(image_id)[1])

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    # -- changing -----------------------------------------------------------------------------
    def add_file(self, image: Image, source: str | os.PathLike[str]) -> list[CacheEntry]:
        """Copy a verified file of ``image`` into the cache; returns the entries evicted.

        The caller vouches that ``source`` was verified against the image's hash just now.
        Images without a hash, or larger than ``max_bytes``, are not cached. Crash-safe: a
        process killed at any point leaves either no entry or a complete one, plus at most
        invisible leftovers that the next change (or :meth:`recover`) removes.
        """
        self.check()
        expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
        if expected.value is None or expected.algo is None:
            log.info("cache: image %s has no hash; not cached", image.id)
            return []
        size = os.stat(source).st_size
        if self.max_bytes is not None and size > self.max_bytes:
            log.warning(
                "cache: image %s (%d bytes) is larger than [cache] max_bytes (%d); not cached",
                image.id,
                size,
                self.max_bytes,
            )
            return []
        data = self._paths(image.id)[0]
        fd, tmp = self._copy_to_temp(source, data)
        try:
            _crashpoint("copied")
            return self.install(image, tmp, size)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def install(
        self, image: Image, tmp: Path, size: int, *, registered_url: str | None = None
    ) -> list[CacheEntry]:
        """Make the complete, verified file ``tmp`` (in ``images``) the entry of ``image``:
        under the lock, room is made, the old sidecar goes, ``tmp`` is renamed into place and
        the sidecar written last. Returns the entries evicted. ``registered_url``: the URL
        already registered for it (else the previous entry's is kept)."""
        expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
        data, side = self._paths(image.id)
        with self._lock:
            _crashpoint("locked")
            self._sweep()
            evicted = self._make_room(size, keep=image.id)
            previous = self.entry(image.id)
            with contextlib.suppress(FileNotFoundError):
                side.unlink()  # the old entry is invisible before its data is replaced
            _crashpoint("hidden")
            os.replace(tmp, data)
            _crashpoint("replaced")
            if registered_url is None and previous is not None:
                registered_url = previous.registered_url
            self._write_sidecar(
                side,
                {
                    "size": size,
                    "algo": expected.algo,
                    "digest": expected.value,
                    "stored_at": time.time(),
                    "registered_url": registered_url,
                    "visibility": image.visibility,
                },
            )
            _crashpoint("visible")
        return evicted

    def recover(self) -> None:
        """Remove what a killed writer left behind (see :meth:`_sweep`); cheap, idempotent."""
        with self._lock:
            self._sweep()

    def _locked_temp(self, stem: str) -> tuple[int, Path]:
        """A new temp file in ``images`` whose flock this process holds until it closes it.

        The lock tells a sweeper that the writer is alive: a killed writer's lock is released
        by the kernel, so its temp file can be removed at once, whatever its age."""
        while True:
            fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=_TMP_SUFFIX, dir=self.images)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(name).st_ino == os.fstat(fd).st_ino:
                    return fd, Path(name)
            except FileNotFoundError:
                pass  # a sweeper took it between mkstemp and flock: make another
            os.close(fd)

    def _copy_to_temp(self, source: str | os.PathLike[str], data: Path) -> tuple[int, Path]:
        """Copy ``source`` into a locked temp file; returns its (still open, locked) fd and path."""
        fd, tmp = self._locked_temp(data.name)
        try:
            with open(source, "rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    _write_all(fd, chunk)
                    _crashpoint("copying")
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise DestinationError(
                f"cache dir {self.dir}: cannot store image {data.name} ({exc.strerror})"
            ) from exc
        return fd, tmp

    def _write_sidecar(self, side: Path, meta: dict[str, Any]) -> None:
        replace_file(side, json.dumps(meta).encode(), mode=0o600, suffix=_TMP_SUFFIX)

    def set_registered(self, image_id: str, url: str | None) -> None:
        """Record (or clear) the Glance location URL this node published for an entry."""
        self.update_meta(image_id, registered_url=url)

    def update_meta(self, image_id: str, **changes: Any) -> None:
        """Change sidecar fields of an entry (e.g. ``visibility``), keeping its LRU time."""
        side = self._paths(image_id)[1]
        with self._lock:
            found = _read_sidecar(side)
            if found is None:
                return
            meta, mtime = found
            if all(meta.get(k) == v for k, v in changes.items()):
                return
            meta.update(changes)
            self._write_sidecar(side, meta)
            with contextlib.suppress(OSError):
                os.utime(side, (mtime, mtime))

    def evict(self, image_id: str) -> CacheEntry | None:
        """Remove one entry (sidecar first, so it is invisible at once); returns what it was."""
        with self._lock:
            removed = self._remove(image_id)
            self._sweep()
            return removed

    def _remove(self, image_id: str) -> CacheEntry | None:
        entry = self.entry(image_id)
        data, side = self._paths(image_id)
        for path in (side, data):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if entry is not None:
            journal.bump(self.dir, evictions=1)
        return entry

    def _make_room(self, incoming: int, *, keep: str) -> list[CacheEntry]:
        if self.max_bytes is None:
            return []
        entries = [e for e in self.entries() if e.image_id != keep]
        used = sum(e.size for e in entries)
        evicted = []
        for e in entries:  # least recently used first
            if used + incoming <= self.max_bytes:
                break
            removed = self._remove(e.image_id)
            if removed is not None:
                evicted.append(removed)
                used -= removed.size
                log.info("cache: evicted %s (%d bytes, least recently used)", e.image_id, e.size)
        return evicted

    def _sweep(self) -> None:
        """Drop crash leftovers (caller holds the lock): data without sidecar, sidecars
        without data, temp files whose writer is gone (their flock is free) and the files of
        a fill whose downloader died (its record's flock is free)."""
        for path in self.images.iterdir():
            name = path.name
            with contextlib.suppress(OSError):
                image_id = fill_id(name)
                if image_id is not None and valid_image_id(image_id):
                    remove_if_dead(self.images, image_id)
                elif name.endswith(_TMP_SUFFIX):
                    _remove_if_abandoned(path)
                elif name.endswith(_SIDECAR):
                    if not (self.images / name[: -len(_SIDECAR)]).exists():
                        path.unlink()
                elif not (self.images / (name + _SIDECAR)).exists() and valid_image_id(name):
                    path.unlink()


def _dir_problem(path: Path, st: os.stat_result) -> str | None:
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


def _file_problem(st: os.stat_result) -> str | None:
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


def _read_sidecar(side: Path) -> tuple[dict[str, Any], float] | None:
    """(metadata, mtime) of a trustworthy sidecar, else None."""
    try:
        fd = os.open(side, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        reason = _file_problem(st)
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


def _entry_from(
    image_id: str, data: Path, st: os.stat_result, meta: dict[str, Any], last_used: float
) -> CacheEntry | None:
    reason = _file_problem(st)
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


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _remove_if_abandoned(path: Path) -> None:
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


def _crashpoint(name: str) -> None:
    """Test hook for the crash-safety tests: ``LOCPICK_TEST_CRASH_AT=name`` makes this process
    SIGKILL itself at that named step of :meth:`NodeCache.add_file` (a real kill -9)."""
    if os.environ.get("LOCPICK_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


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
    reason = _file_problem(st)
    if reason is not None or st.st_size != entry.size:
        src.close()
        log.warning("cache: not using %s: %s", entry.path, reason or "size changed")
        return False
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TMP_SUFFIX, dir=parent)
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
