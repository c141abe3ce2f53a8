"""file:// locations: a thin transport over ``locpick.transports.file.sharedfs`` (mapping,
reachability,
confinement and the system copy all live there)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from locpick.config.model import Filesystem
from locpick.errors import LocationUnreachable, UnsupportedLocation, reason_of
from locpick.models import Image, Location, Probe
from locpick.sink.atomic import AtomicSink
from locpick.transports.base import Capabilities, Context, StreamDefaults, TransportDefaults
from locpick.transports.file import sharedfs, syscopy


class FileStream(StreamDefaults):
    """A confined local file from an offset (``verify`` reads it; downloads use ``copy_to``)."""

    def __init__(self, fd: int, offset: int, final_url: str) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._file.seek(offset)
        self.start = offset
        self.total: int | None = os.fstat(fd).st_size
        self.final_url = final_url

    def readinto(self, buf: memoryview) -> int:
        try:
            return self._file.readinto(buf) or 0
        except OSError as exc:
            raise LocationUnreachable(
                f"{self.final_url}: read failed ({exc.strerror})", url=self.final_url
            ) from exc

    def close(self) -> None:
        self._file.close()


class FileTransport(TransportDefaults):
    """``file``: only paths that map onto a configured, mounted filesystem are ever opened."""

    schemes: tuple[str, ...] = ("file",)
    capabilities = Capabilities(system_copy=True)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def resolve(self, location: Location) -> tuple[str, Filesystem]:
        """Map the location onto a local path (no I/O); UnsupportedLocation if refused."""
        shown = location.display_url
        try:
            return sharedfs.map_location(
                location.url, location.metadata, self.ctx.config.filesystems
            )
        except UnsupportedLocation as exc:
            raise UnsupportedLocation(f"{shown}: {exc}", url=shown) from None

    def report(
        self, location: Location, image: Image, dest_dir: str | None = None
    ) -> sharedfs.FsReport:
        """The full reachability report (bounded by the filesystem's timeout)."""
        path, fs = self.resolve(location)
        return sharedfs.check(fs, path, image.size, dest_dir=dest_dir, timeout=fs.timeout)

    def shared_fs(
        self, location: Location, image: Image, dest_dir: str | None
    ) -> sharedfs.FsReport:
        """The reachability report, judged for a destination in ``dest_dir``."""
        return self.report(location, image, dest_dir)

    def check(self, location: Location, image: Image) -> str | None:
        try:
            return self.report(location, image).reason
        except UnsupportedLocation as exc:
            return reason_of(exc)

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        t0 = time.monotonic()
        try:
            rep = self.report(location, image)
        except UnsupportedLocation as exc:
            return Probe(url=shown, ok=False, error=reason_of(exc))
        if rep.reason:
            return Probe(url=shown, ok=False, error=rep.reason)
        return Probe(url=shown, ok=True, ttfb=time.monotonic() - t0, size=rep.size, final_url=shown)

    def _open_fd(self, location: Location, image: Image) -> tuple[int, sharedfs.FsReport]:
        shown = location.display_url
        rep = self.report(location, image)
        if rep.reason:
            raise UnsupportedLocation(f"{shown}: {rep.reason}", url=shown)
        try:
            fd = sharedfs.open_checked(rep, rep.fs.timeout)
        except UnsupportedLocation as exc:
            raise UnsupportedLocation(f"{shown}: {exc}", url=shown) from None
        except LocationUnreachable as exc:
            raise LocationUnreachable(f"{shown}: {exc}", url=shown) from None
        return fd, rep

    def open(
        self,
        location: Location,
        image: Image,
        *,
        offset: int,
        end: int | None = None,
        if_range: str | None = None,
    ) -> FileStream:
        """The file from ``offset`` to its end."""
        fd, _rep = self._open_fd(location, image)
        return FileStream(fd, offset, location.display_url)

    def copy_to(
        self,
        location: Location,
        image: Image,
        sink: AtomicSink,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> str:
        """System-copy the file into ``sink`` (hashing while copying unless the filesystem is
        trusted); returns the copy engine used. The caller commits the sink."""
        shown = location.display_url
        fd, rep = self._open_fd(location, image)
        end = image.size if image.size is not None else os.fstat(fd).st_size
        idle = self.ctx.config.transfer.idle_timeout

        def engine(dst: int, offset: int, hasher: Any, advance: Callable[[int], None]) -> str:
            def step(n: int) -> None:
                advance(n)
                if progress is not None:
                    progress(sink.offset, sink.size)

            return syscopy.guarded_copy(
                fd, dst, offset, end, hasher, step, label=shown, idle_timeout=idle
            )

        try:
            return sink.adopt(engine, verify=not rep.fs.trusted)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing pooled."""
