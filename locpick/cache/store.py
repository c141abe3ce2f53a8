"""The node cache: verified images kept by image id, least-recently-used out first.

Layout of ``DIR`` (nothing else is ever read or served)::

    DIR/.lock                 filelock: held briefly while an entry is added or removed
    DIR/.secret               the key of this node's capability URLs (locpick.cache.capability)
    DIR/images/<id>           the image bytes (complete and verified, or absent)
    DIR/images/<id>.json      the sidecar: size, hash algorithm and value, registered URL
    DIR/images/<id>.filling   a copy still being downloaded (stream-through), with its fill
    DIR/images/<id>.fill      record (locpick.cache.fill.state); served only while a live writer
    fills it
    DIR/images/<id>.fill.json the URL registered for it (locpick.cache.fill.fill); all three are
                              never an entry, and swept once their writer died
    DIR/downloads.json, DIR/stats.json   operator records (locpick.cache.journal), never served raw

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

Code: ``cachefiles`` (names, trust checks on files, sidecars, the leftovers sweep),
``cacheview`` (trust of the directory, secret, finding and opening entries), this module
(adding and evicting under the lock) and ``cachecopy`` (copying an entry onto a DEST).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from locpick.cache import journal
from locpick.cache.files import (
    COPY_CHUNK,
    TMP_SUFFIX,
    CacheEntry,
    read_sidecar,
    sweep_leftovers,
    write_all,
    write_sidecar,
)
from locpick.cache.view import CacheView
from locpick.errors import DestinationError
from locpick.models import Image
from locpick.sink.hashing import Expected

__all__ = ["NodeCache"]

log = logging.getLogger(__name__)


class NodeCache(CacheView):
    """A directory of verified images, safe to share between processes (filelock): reading
    (:class:`~locpick.cache.view.CacheView`) plus adding and evicting under the lock."""

    def _step(self, name: str) -> None:
        """Marks each named step of an add (``copying``, ``copied``, ``locked``, ``hidden``,
        ``replaced``, ``visible``); a no-op, the seam where crash-safety tests kill the process."""

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
            self._step("copied")
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
            self._step("locked")
            self._sweep()
            evicted = self._make_room(size, keep=image.id)
            previous = self.entry(image.id)
            with contextlib.suppress(FileNotFoundError):
                side.unlink()  # the old entry is invisible before its data is replaced
            self._step("hidden")
            os.replace(tmp, data)
            self._step("replaced")
            if registered_url is None and previous is not None:
                registered_url = previous.registered_url
            write_sidecar(
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
            self._step("visible")
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
            fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=TMP_SUFFIX, dir=self.images)
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
                while chunk := src.read(COPY_CHUNK):
                    write_all(fd, chunk)
                    self._step("copying")
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

    def set_registered(self, image_id: str, url: str | None) -> None:
        """Record (or clear) the Glance location URL this node published for an entry."""
        self.update_meta(image_id, registered_url=url)

    def update_meta(self, image_id: str, **changes: Any) -> None:
        """Change sidecar fields of an entry (e.g. ``visibility``), keeping its LRU time."""
        side = self._paths(image_id)[1]
        with self._lock:
            found = read_sidecar(side)
            if found is None:
                return
            meta, mtime = found
            if all(meta.get(k) == v for k, v in changes.items()):
                return
            meta.update(changes)
            write_sidecar(side, meta)
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
        """Drop crash leftovers (caller holds the lock): see :func:`sweep_leftovers`."""
        sweep_leftovers(self.images)
