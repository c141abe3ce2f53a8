"""Stream-through copies: a download into the node cache is servable while it runs.

:meth:`Fill.start` creates ``images/<id>.filling`` (0600, the full size, sparse) and its fill
record ``<id>.fill`` under the cache lock; the download's sink mirrors every write into it
(:class:`locpick.cache.fill.tee.Tee`). With registration, the copy becomes a Glance location at
once, marked filling (:mod:`locpick.cache.fill.register`), before any peer is chosen. A verified
download ends with :meth:`Fill.finish`: record ``complete``, the file renamed into place as the
entry (sidecar last, with the registered URL, so ``serve``'s renewer takes over): no second copy of
the bytes. Any failure ends with :meth:`Fill.abort`: record ``failed`` first, then the location
removed, then the files. A killed downloader leaves a dead record that the cache's sweep removes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import filelock

from locpick.cache.files import CacheEntry, valid_image_id
from locpick.cache.fill.record import FillBusy, default_piece_size
from locpick.cache.fill.register import FillRenewal, add_filling, filling_metadata, remove_once
from locpick.cache.fill.tee import (
    META,
    RECORD,
    Tee,
    fill_id,
    fill_paths,
    remove_if_dead,
    writer_gone,
)
from locpick.cache.fill.writer import FillWriter
from locpick.cache.store import NodeCache
from locpick.fetch.swarm import swarm_probes
from locpick.fetch.swarm.pieces import auto_piece_size
from locpick.glance.locations import cache_location_url
from locpick.models import Image
from locpick.sink.hashing import Expected
from locpick.sink.privfile import read_private

if TYPE_CHECKING:
    from locpick.config.model import Config
    from locpick.glance.locations import GlanceLocations
    from locpick.glance.vouch import FleetTrust


class Registrar(Protocol):
    """What registration needs of the client: its config and its Glance locations API."""

    @property
    def config(self) -> Config: ...

    def glance_locations(self) -> GlanceLocations: ...

    @property
    def fleet(self) -> FleetTrust: ...


log = logging.getLogger(__name__)


class Fill:
    """One entry being filled by this process's download."""

    def __init__(self, cache: NodeCache, image: Image, size: int, fd: int, writer: FillWriter):
        self.cache, self.image, self.size = cache, image, size
        self.filling, self.record, self.meta = fill_paths(cache.images, image.id)
        self.tee = Tee(fd, writer)
        self.writer = writer
        #: The Glance location registered for the filling copy, if any.
        self.url: str | None = None
        #: The image record as the add of :attr:`url` left it (the add's answer), if known.
        self.listing: Mapping[str, Any] | None = None
        #: Seconds the add took (its round trip, with any retries).
        self.add_seconds = 0.0
        self.renewal: FillRenewal | None = None
        self._client: Registrar | None = None
        self._closed = False

    @classmethod
    def start(cls, cache: NodeCache, image: Image, piece_size: int | None = None) -> Fill | None:
        """A new fill of ``image``, or None when it cannot be one (no hash or size, over
        ``max_bytes``, an untrusted cache, another live download of it on this node)."""
        expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
        size = image.size
        if expected.value is None or not size or cache.problem() is not None:
            return None
        if cache.max_bytes is not None and size > cache.max_bytes:
            return None
        try:
            return cls._create(cache, image, size, piece_size)
        except (OSError, filelock.Timeout) as exc:  # a read-only cache, a planted lock
            log.info("cache: no stream-through copy of %s (%s)", image.id, exc)
            return None

    @classmethod
    def _create(
        cls, cache: NodeCache, image: Image, size: int, piece_size: int | None
    ) -> Fill | None:
        filling, record, _meta = fill_paths(cache.images, image.id)
        with cache._lock:
            cache._sweep()  # a dead fill's files go; a live one's stay (FillBusy below)
            if record.exists():
                return None
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(filling, flags, 0o600)
            except OSError as exc:
                log.info("cache: no stream-through copy of %s (%s)", image.id, exc.strerror)
                return None
            try:
                os.ftruncate(fd, size)
                writer = FillWriter.create(record, size, piece_size)
            except (OSError, FillBusy, ValueError) as exc:
                os.close(fd)
                filling.unlink()
                log.info("cache: no stream-through copy of %s (%s)", image.id, exc)
                return None
        return cls(cache, image, size, fd, writer)

    def register(self, client: Registrar) -> None:
        """One Glance add of the filling copy (retried on 500/409); renewals if it runs long."""
        cfg = client.config
        assert cfg.cache.public_url is not None
        try:
            url = cache_location_url(
                cfg.cache.public_url, self.image.id, self.cache.token(self.image.id)
            )
        except OSError as exc:
            log.warning("filling copy not registered: %s", exc)
            return
        started, lease = time.time(), cfg.cache.lease
        self._client = client

        def meta() -> dict[str, str]:
            return client.fleet.sign(self.image.id, url, filling_metadata(cfg.topology, started))

        seen = {
            "status": self.image.status,
            "locations": [
                {"url": loc.url, "metadata": dict(loc.metadata)}
                for loc in self.image.locations
                if loc.kind != "glance-file"  # locpick's own candidate, not a listed location
            ],
        }
        began = time.monotonic()
        added = add_filling(client.glance_locations, self.image.id, url, meta(), seen=seen)
        if added is None:
            return
        self.url, self.listing = url, added.record
        self.add_seconds = time.monotonic() - began
        with contextlib.suppress(OSError):
            fd = os.open(self.meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"registered_url": url, "started": started}, fh)
        self.renewal = FillRenewal(client.glance_locations, self.image.id, url, meta, lease)

    def confirmed(self) -> None:
        """The add was seen listed in a record read after it settled: no later confirmation
        (the one Glance request it would cost)."""
        self._stop_renewal()

    def finish(self) -> list[CacheEntry] | None:
        """The download was verified: make the filled file the entry; returns the entries
        evicted for room, or None when the copy is not whole (the caller adds the dest)."""
        if not self.tee.whole:
            self.abort(f"incomplete ({self.tee.why or 'bytes written outside the tee'})")
            return None
        self._stop_renewal()
        self.tee.stop()  # every write is in; nothing may touch the record but us now
        try:
            os.fchmod(self.tee.fd, 0o600)
            os.fsync(self.tee.fd)
            self.writer.complete()
            evicted = self.cache.install(
                self.image, self.filling, self.size, registered_url=self.url
            )
        except BaseException:
            self.abort("could not be made the entry")
            raise
        self._close()
        return evicted

    def abort(self, why: str) -> None:
        """Failure of any kind: record ``failed`` first, then the location, then the files."""
        if self._closed:
            return
        self.tee.abandon(why)
        self._stop_renewal()
        if self.url is not None and self._client is not None:
            remove_once(self._client.glance_locations, self.image.id, self.url)
            self.url = None
        with contextlib.suppress(FileNotFoundError):
            self.filling.unlink()
        self._close()

    def _stop_renewal(self) -> None:
        if self.renewal is not None:
            self.renewal.stop()
            self.renewal = None

    def _close(self) -> None:
        self._closed = True
        self.tee.stop()
        with contextlib.suppress(FileNotFoundError):
            self.meta.unlink()
        self.writer.close(remove=True)
        os.close(self.tee.fd)


def open_fill(
    client: Registrar, cache: NodeCache | None, image: Image, publish: bool
) -> Fill | None:
    """The client's hook before ranking: start the stream-through copy and (``publish``)
    register it. The seam for a storm-aware refresh of the image record comes right after."""
    if cache is None:
        return None
    t = client.config.transfer
    piece = auto_piece_size(image.size or 0, t.piece_size) if swarm_probes(image, t) else None
    fill = Fill.start(cache, image, piece or (default_piece_size(image.size or 0)))
    if fill is not None and publish:
        fill.register(client)
    return fill


@contextlib.contextmanager
def aborting(fill: Fill | None) -> Iterator[None]:
    """Abort ``fill`` when the block raises anything (a failed download, Ctrl-C)."""
    try:
        yield
    except BaseException as exc:
        if fill is not None:
            fill.abort(f"download failed ({type(exc).__name__})")
        raise


def reap_dead_fills(cache: NodeCache, client: Registrar, *, dry_run: bool = False) -> list[str]:
    """Fills whose downloader died (kill -9): their Glance location (from ``<id>.fill.json``)
    is removed at once, not at the end of its lease, then their files. Returns what was done.

    Each fill is judged and removed under the cache lock, where a new downloader of the same
    image creates its record: a record that comes alive meanwhile (same image, same URL) is
    never deregistered by mistake. A fill that completed into a visible entry keeps its
    location (the entry's sidecar holds it; ``serve`` renews it)."""
    done = []
    for meta in sorted(cache.images.glob("*" + META)):
        image_id = fill_id(meta.name)
        if image_id is None or not valid_image_id(image_id):
            continue
        record = cache.images / (image_id + RECORD)
        if not writer_gone(record):
            continue
        if dry_run:
            done.append(f"would remove the dead fill of {image_id}")
            continue
        with cache._lock:
            if not writer_gone(record):
                continue
            raw = read_private(meta, 1 << 16)
            try:
                url = json.loads(raw or b"{}").get("registered_url")
            except (ValueError, AttributeError):
                url = None
            if isinstance(url, str) and cache.entry(image_id) is None:
                remove_once(client.glance_locations, image_id, url)
            remove_if_dead(cache.images, image_id)
        done.append(f"removed the dead fill of {image_id}")
    return done
