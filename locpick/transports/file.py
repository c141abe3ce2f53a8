"""file:// locations, confined to configured shared filesystems (Nova image_file_url rules)."""

from __future__ import annotations

import os
import stat
import time
import urllib.parse
from pathlib import Path

from locpick.config import Filesystem
from locpick.errors import LocationUnreachable, UnsupportedLocation
from locpick.models import Image, Location, Probe
from locpick.transports.base import Context

NOT_ON_FS = "not-on-configured-filesystem"


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


class FileStream:
    """A local file read from an offset."""

    def __init__(self, path: str, offset: int, final_url: str) -> None:
        # O_NONBLOCK: a FIFO swapped in after check() must not block open(); O_NOFOLLOW: nor
        # may a symlink. What was opened is checked again on the descriptor itself.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsupportedLocation(f"{final_url}: not a regular file", url=final_url)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._file.seek(offset)
        self.start = offset
        self.total: int | None = st.st_size
        self.final_url = final_url
        self.path = path

    def readinto(self, buf: memoryview) -> int:
        try:
            return self._file.readinto(buf) or 0
        except OSError as exc:
            raise LocationUnreachable(
                f"{self.final_url}: read failed ({exc.strerror})", url=self.final_url
            ) from exc

    def close(self) -> None:
        self._file.close()


class FileTransport:
    """``file``: only paths that map onto a configured, mounted filesystem are ever opened."""

    schemes: tuple[str, ...] = ("file",)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def resolve(self, location: Location) -> tuple[str, Filesystem]:
        """Map the location onto a local path; UnsupportedLocation with the reason if refused."""
        shown = location.display_url
        parts = urllib.parse.urlsplit(location.url)
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedLocation(f"{shown}: {NOT_ON_FS} (remote host in file URL)", url=shown)
        path = urllib.parse.unquote(parts.path)
        if "\x00" in path or not path.startswith("/"):
            raise UnsupportedLocation(f"{shown}: {NOT_ON_FS} (bad path)", url=shown)
        if any(seg == ".." for seg in path.split("/")):
            raise UnsupportedLocation(f"{shown}: {NOT_ON_FS} ('..' in path)", url=shown)
        meta_id = location.metadata.get("id")
        meta_mount = location.metadata.get("mountpoint")
        candidates: list[tuple[str, Filesystem]] = []
        for fs in self.ctx.config.filesystems:
            if meta_id is not None:
                if fs.id != meta_id or not isinstance(meta_mount, str):
                    continue
                if not _under(path, meta_mount):
                    continue
                rel = os.path.relpath(path, meta_mount)
                candidates.append((os.path.join(fs.mountpoint, rel), fs))
            elif _under(path, fs.mountpoint):
                candidates.append((path, fs))
        if not candidates:
            raise UnsupportedLocation(f"{shown}: {NOT_ON_FS}", url=shown)
        local, fs = candidates[0]
        root = os.path.realpath(fs.mountpoint)
        real = os.path.realpath(local)
        if not _under(real, root):
            raise UnsupportedLocation(
                f"{shown}: {NOT_ON_FS} (resolves outside {fs.mountpoint})", url=shown
            )
        if fs.require_mount and not os.path.ismount(fs.mountpoint):
            raise UnsupportedLocation(
                f"{shown}: filesystem {fs.id} is not mounted at {fs.mountpoint}", url=shown
            )
        return real, fs

    def check(self, location: Location, image: Image) -> str | None:
        try:
            path, _fs = self.resolve(location)
        except UnsupportedLocation as exc:
            return str(exc).split(": ", 1)[-1]
        try:
            st = os.stat(path)
        except OSError as exc:
            return f"file not readable ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if image.size is not None and st.st_size != image.size:
            return f"size mismatch: file has {st.st_size} bytes, image {image.size}"
        if not os.access(path, os.R_OK):
            return "file not readable (permission denied)"
        return None

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        t0 = time.monotonic()
        reason = self.check(location, image)
        if reason:
            return Probe(url=shown, ok=False, error=reason)
        path, _ = self.resolve(location)
        return Probe(
            url=shown,
            ok=True,
            ttfb=time.monotonic() - t0,
            size=Path(path).stat().st_size,
            final_url=shown,
        )

    def open(self, location: Location, image: Image, *, offset: int) -> FileStream:
        reason = self.check(location, image)
        if reason:
            raise UnsupportedLocation(f"{location.display_url}: {reason}", url=location.display_url)
        path, _ = self.resolve(location)
        try:
            return FileStream(path, offset, location.display_url)
        except OSError as exc:
            raise LocationUnreachable(
                f"{location.display_url}: cannot open ({exc.strerror})", url=location.display_url
            ) from exc

    def close(self) -> None:
        """Nothing pooled."""
