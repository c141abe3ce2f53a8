"""The read side of a node cache (layout: ``locpick.cache.store``): whether the directory can be
trusted, this node's capability secret, and finding and opening visible entries and filling
copies, each checked on the opened file."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

import filelock

from locpick.cache.capability import UntrustedCache, image_token, load_secret, rotate_secret
from locpick.cache.files import (
    FILL_SUFFIX,
    FILLING_SUFFIX,
    SIDECAR,
    CacheEntry,
    dir_problem,
    entry_from,
    file_problem,
    read_sidecar,
    valid_image_id,
)
from locpick.errors import InputError
from locpick.models import Image
from locpick.sink.hashing import Expected

log = logging.getLogger(__name__)


class CacheView:
    """A node cache directory as readers see it: trust checks, secret and visible entries."""

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
                if dir_problem(d, st) is None and stat.S_IMODE(st.st_mode) != 0o700:
                    os.chmod(d, 0o700)

    def problem(self) -> str | None:
        """Why this cache cannot be trusted (someone else could write there), else None."""
        for d in (self.dir, self.images):
            try:
                st = os.stat(d, follow_symlinks=False)
            except OSError as exc:
                return f"cache dir {d}: cannot stat ({exc.strerror})"
            reason = dir_problem(d, st)
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
        return self.images / image_id, self.images / (image_id + SIDECAR)

    def _recorded(self, image_id: str) -> tuple[Path, tuple[dict[str, Any], float]] | None:
        """The data path and trusted sidecar record of ``image_id`` in a trusted cache."""
        if not valid_image_id(image_id) or self.problem() is not None:
            return None
        data, side = self._paths(image_id)
        meta = read_sidecar(side)
        return None if meta is None else (data, meta)

    def entry(self, image_id: str) -> CacheEntry | None:
        """The visible entry for ``image_id`` (complete data + agreeing sidecar), else None.

        None also when the cache or the entry's files could have been planted by someone else.
        """
        found = self._recorded(image_id)
        if found is None:
            return None
        data, meta = found
        try:
            st = os.lstat(data)
        except OSError:
            return None
        return entry_from(image_id, data, st, *meta)

    def open_entry(self, image_id: str) -> tuple[int, CacheEntry] | None:
        """(fd, entry) of a visible entry, opened with ``O_NOFOLLOW`` and checked on the fd.

        The caller closes the fd. Serving or copying from the fd reads exactly the file that
        was checked, whatever is renamed over the path meanwhile.
        """
        found = self._recorded(image_id)
        if found is None:
            return None
        data, meta = found
        try:
            fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        entry = entry_from(image_id, data, os.fstat(fd), *meta)
        if entry is None:
            os.close(fd)
            return None
        return fd, entry

    def fill_paths(self, image_id: str) -> tuple[Path, Path]:
        """(data, record) of a copy of ``image_id`` still being filled: ``images/<id>.filling``
        and its fill record ``images/<id>.fill`` (:mod:`locpick.cache.fill.state`)."""
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
        reason = file_problem(os.fstat(fd))
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
        for side in self.images.glob("*" + SIDECAR):
            entry = self.entry(side.name[: -len(SIDECAR)])
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: (e.last_used, e.image_id))

    def touch(self, image_id: str) -> None:
        """Mark an entry as just used (LRU order)."""
        with contextlib.suppress(OSError, InputError):
            os.utime(self._paths(image_id)[1])

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())
