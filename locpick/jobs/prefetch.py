"""Warming a node cache before a rollout: fetch a list of images into it (and register them).

The images are named by id or chosen by a Glance list query (tags, properties). Each one
already cached (and proven to be the image: size and the record's hash) is skipped; each
other one is downloaded as any download with a node cache is, into a work file under
``DIR/prefetch/``, so its resumable part file (``.<id>.locpick-part``) outlives a kill and the
next run asks only for the rest. At most ``jobs`` images are fetched at once, and all of them
together at most ``max_rate`` bytes/s (:class:`Pacer`, paced in the reading threads). The
run's state is kept in ``DIR/prefetch.json`` (:mod:`locpick.cache.prefetch`) for ``/status``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from locpick.cache.files import valid_image_id
from locpick.cache.prefetch import PrefetchImage, PrefetchState, images_of, write_state
from locpick.cache.store import NodeCache
from locpick.errors import ConfigError, InputError, LocpickError
from locpick.jobs.cachesync import CacheSync
from locpick.jobs.download import Download
from locpick.jobs.ranking import Ranker
from locpick.jobs.session import Session
from locpick.models import ByteProgress
from locpick.redact import SCRUB
from locpick.report import Recorder

log = logging.getLogger(__name__)

#: The work directory (inside the cache dir) where part files wait between runs.
WORK_DIR = "prefetch"
#: The state file is rewritten at most this often while bytes arrive (seconds).
STATE_INTERVAL = 0.5
#: Whom ``progress`` is told about: an image row each time it changes (serialised calls).
PrefetchProgress = Callable[[PrefetchImage], None]


@attrs.frozen
class PrefetchReport:
    """What a prefetch did: one row per image, in the order asked."""

    images: tuple[PrefetchImage, ...]

    @property
    def ok(self) -> bool:
        """True when every image is in the cache (fetched now or already there)."""
        return all(i.status in ("cached", "fetched") for i in self.images)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "images": [i.to_json() for i in self.images]}


class Pacer:
    """A token bucket shared by every transfer of one prefetch: at most ``rate`` bytes/s
    on average, with at most one second's worth as a burst after an idle stretch.

    ``take(n)`` sleeps in the calling (reading) thread until ``n`` more bytes fit, so a paced
    transfer reads no faster and TCP slows the sender. ``clock``/``sleep`` are injectable.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._free_at = float("-inf")

    def wait_for(self, n: int) -> float:
        """Reserve ``n`` bytes; the seconds the caller must wait before using them."""
        with self._lock:
            now = self._clock()
            start = max(self._free_at, now - 1.0)  # idle time earns at most 1 s of credit
            self._free_at = start + n / self.rate
            return max(0.0, self._free_at - now)

    def take(self, n: int) -> None:
        delay = self.wait_for(n)
        if delay > 0:
            self._sleep(delay)


class Prefetch:
    """One prefetch run over ``image_ids`` into ``cache`` (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        ranker: Ranker,
        sync: CacheSync,
        image_ids: Sequence[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        register: bool | None = None,
        jobs: int = 2,
        max_rate: float = 0,
        progress: PrefetchProgress | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if jobs < 1:
            raise InputError(f"prefetch: --jobs must be at least 1, not {jobs}")
        if max_rate < 0:
            raise InputError(f"prefetch: --max-rate must be 0 (none) or more, not {max_rate}")
        for image_id in image_ids:
            if not valid_image_id(image_id):
                raise InputError(f"prefetch: {image_id!r} is not an image id")
        cache = session.node_cache(cache_dir)
        assert cache is not None
        self.cache: NodeCache = cache
        self.cache.check()
        self.session, self.ranker, self.sync = session, ranker, sync
        self.register = register
        self.publish = session.config.cache.register if register is None else register
        if self.publish and not session.config.cache.public_url:
            raise ConfigError(
                "--register needs [cache] public_url (how other nodes reach locpick serve here)"
            )
        self.jobs = jobs
        self.pacer = Pacer(max_rate) if max_rate else None
        self.progress = progress
        self.clock = clock
        self.work = self.cache.dir / WORK_DIR
        self._lock = threading.Lock()
        ids = list(dict.fromkeys(image_ids))  # each image once, in the order asked
        self._rows = {r.image_id: r for r in images_of(ids)}
        now = clock()
        self._state = PrefetchState(pid=os.getpid(), started_at=now, updated_at=now)
        self._written = 0.0

    def run(self) -> PrefetchReport:
        """Fetch every image (``jobs`` at a time); the report lists each one's outcome."""
        self.work.mkdir(mode=0o700, exist_ok=True)
        self._save(force=True)
        try:
            with concurrent.futures.ThreadPoolExecutor(
                max_workers=self.jobs, thread_name_prefix="locpick-prefetch"
            ) as pool:
                for future in [pool.submit(self.one, i) for i in self._rows]:
                    future.result()
        finally:
            with self._lock:
                self._state = attrs.evolve(self._state, finished_at=self.clock())
            self._save(force=True)
        return PrefetchReport(tuple(self._rows.values()))

    def one(self, image_id: str) -> None:
        """Skip an image already cached; else download it into the cache (and register it)."""
        try:
            image = self.session.image(image_id)
            self._set(image_id, size=image.size)
            entry = self.cache.lookup(image)
            if entry is not None:
                if self.publish:
                    self.sync.publish(self.cache, image, entry)
                self._set(image_id, status="cached", bytes=entry.size)
                return
            self._set(image_id, status="fetching")
            dest = self.work / image_id
            result = Download(
                self.session,
                self.ranker,
                self.sync,
                image_id,
                dest,
                recorder=_Paced(image_id, self._progress_for(image_id)),
                cache_dir=self.cache.dir,
                register=self.register,
            ).run()
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()  # the cache holds it now (or the download said why not)
            if result.cache is not None and result.cache.status == "failed":
                self._set(image_id, status="failed", error=f"not cached: {result.cache.error}")
            else:
                self._set(image_id, status="fetched", bytes=result.bytes)
        except LocpickError as exc:
            self._set(image_id, status="failed", error=SCRUB(str(exc)))

    def _progress_for(self, image_id: str) -> ByteProgress:
        """The engine's byte counts, on the reading thread: paces it, records the bytes."""
        last = [0]

        def progress(done: int, total: int | None) -> None:
            step = done - last[0]
            last[0] = done
            if self.pacer is not None and step > 0:
                self.pacer.take(step)
            self._set(image_id, bytes=done, quiet=True)

        return progress

    def _set(self, image_id: str, *, quiet: bool = False, **changes: Any) -> None:
        """Change an image's row; tell ``progress`` and rewrite the state file (a byte count
        alone at most every STATE_INTERVAL)."""
        with self._lock:
            row = attrs.evolve(self._rows[image_id], **changes)
            self._rows[image_id] = row
            now = time.monotonic()
            if quiet and now - self._written < STATE_INTERVAL:
                return
            if self.progress is not None:
                self.progress(row)
        self._save(force=not quiet)

    def _save(self, *, force: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._written < STATE_INTERVAL:
                return
            self._written = now
            self._state = attrs.evolve(
                self._state, updated_at=self.clock(), images=tuple(self._rows.values())
            )
            write_state(self.cache.dir, self._state)


def select_images(
    session: Session,
    image_ids: Sequence[str],
    *,
    tags: Sequence[str] = (),
    properties: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The ids to prefetch: ``image_ids`` as given, then every active image Glance lists with
    all of ``tags`` and every ``properties`` (key, value) (none when no filter is given)."""
    ids = list(image_ids)
    if tags or properties:
        query = [("status", "active"), *(("tag", t) for t in tags), *properties]
        api = session.glance_locations()
        ids.extend(str(img["id"]) for img in api.images(query=query))
    if not ids:
        raise InputError("prefetch: name IMAGE_IDs or select images with --tag/--property")
    return list(dict.fromkeys(ids))


class _Paced(Recorder):
    """The download's recorder, plus ``pace`` called with the engine's byte counts on the
    thread that reads them (the caller's ``progress`` runs on a thread of its own, too late to
    slow a reader down)."""

    def __init__(self, image_id: str, pace: ByteProgress) -> None:
        super().__init__(image_id)
        self._pace = pace

    def progress(self, inner: ByteProgress | None = None) -> ByteProgress:
        recorded = super().progress(inner)

        def update(done: int, total: int | None) -> None:
            self._pace(done, total)
            recorded(done, total)

        return update
