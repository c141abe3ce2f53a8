"""Verified, atomic transfer from ranked locations: the one entry of the transfer engine.

Under the dest lock (another process may have delivered meanwhile): a shared filesystem's
location is one kernel copy (``transports/file/syscopy.py``); every location that streams
bytes (http/https, swift, s3) goes through the engine (``locpick.fetch.swarm``), where a single
copy is a swarm of one; an image of unknown size is read whole from one copy at a time
(``swarm/whole.py``). Retry, backoff, stall and header deadlines, ``[transfer] total_timeout``,
the cancel event, resume and "never a partial dest" hold on every path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from locpick.config.model import TransferConfig
from locpick.errors import AllLocationsFailed, Cancelled, InputError, LocationError, reason_of
from locpick.fetch import swarm
from locpick.fetch.policy import Observer, Timing
from locpick.fetch.swarm.partfile import discard_pieced_part
from locpick.fetch.swarm.run import Source
from locpick.fetch.swarm.whole import fetch_whole
from locpick.models import Attempt, ByteProgress, Image, Location, Result, Score
from locpick.redact import SCRUB
from locpick.sink.atomic import AtomicSink
from locpick.sink.hashing import Expected
from locpick.sink.lock import dest_lock
from locpick.sink.pipe import Mirror
from locpick.sink.privfile import open_private
from locpick.transports import Transports

log = logging.getLogger(__name__)

__all__ = ["fetch"]


def _unknown_class(location: Location) -> int:
    """Without the node's topology every location is in the farthest class."""
    return 4


def fetch(
    image: Image,
    ranked: Sequence[Score],
    dest: str | os.PathLike[str],
    transports: Transports,
    *,
    buffer_bytes: int = 4 << 20,
    file_mode: int = 0o644,
    progress: ByteProgress | None = None,
    observer: Observer | None = None,
    transfer: TransferConfig | None = None,
    topology_tolerance: float = 0.2,
    classify: swarm.Classify | None = None,
    max_bytes: int | None = None,
    timing: Timing | None = None,
    tee: Mirror | None = None,
    cancel: threading.Event | None = None,
) -> Result:
    """Deliver ``image`` to ``dest`` from the locations in ``ranked``, verified and atomic.

    ``classify``: the topology class of a location (``locpick.choose.score.topology_class``
    of its place); ``max_bytes`` bounds what one location may write when the record has no
    size; ``timing`` replaces the clock, sleep and rng of the retry policy (tests); ``cancel``
    set: ``Cancelled`` within a fraction of a second, the part kept for resume."""
    timing = timing or Timing()
    started = time.monotonic()
    expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
    parent = Path(dest).parent
    if not parent.is_dir():
        raise InputError(f"dest {dest}: directory {parent} does not exist")
    cfg = transfer or TransferConfig()
    deadline = timing.clock() + cfg.total_timeout if cfg.total_timeout > 0 else None
    with dest_lock(dest, timeout=cfg.lock_timeout) as waited:
        if waited:
            done = _already_delivered(image, expected, dest, started)
            if done is not None:
                return done
        sink_args: dict[str, Any] = {
            "size": image.size,
            "expected": expected,
            "buffer_bytes": buffer_bytes,
            "mode": file_mode,
            "label": f"image {image.id}",
            "resume": {
                "image_id": image.id,
                "size": image.size,
                "algo": expected.algo,
                "hash": expected.value,
            },
            "max_bytes": max_bytes,
            "tee": tee,
        }
        run = _Run(image, dest, sink_args, cfg, progress, observer, started, timing, cancel)
        run.attempts.extend(
            Attempt(url=s.url, outcome="skipped", error=s.reasons.error)
            for s in ranked
            if not s.usable
        )
        usable = [s for s in ranked if s.usable]
        copies = [s for s in usable if _system_copy(transports, s)]
        sources = swarm.plan(image, usable, transports, classify or _unknown_class)
        # a shared filesystem ranked first is copied first; else it is the fallback
        copy_first = bool(copies) and usable[0] is copies[0]
        for step in ("copy", "engine", "copy") if copy_first else ("engine", "copy"):
            if step == "copy":
                for score in copies:
                    result = run.system_copy(score, transports)
                    if result is not None:
                        return result
                copies = []
            elif sources:
                try:
                    return run.engine(sources, topology_tolerance, deadline)
                except AllLocationsFailed as exc:
                    if run.timed_out(deadline) or not copies:
                        raise AllLocationsFailed(str(exc), (*run.attempts, *exc.attempts)) from None
                    run.attempts.extend(exc.attempts)
                sources = []
        raise run.all_failed()


class _Run:
    """One call of :func:`fetch`: its sink arguments, attempts and callbacks."""

    def __init__(
        self,
        image: Image,
        dest: str | os.PathLike[str],
        sink_args: dict[str, Any],
        cfg: TransferConfig,
        progress: ByteProgress | None,
        observer: Observer | None,
        started: float,
        timing: Timing,
        cancel: threading.Event | None,
    ) -> None:
        self.image, self.dest, self.sink_args, self.cfg = image, dest, sink_args, cfg
        self.progress, self.observer, self.started = progress, observer, started
        self.timing, self.cancel = timing, cancel
        self.attempts: list[Attempt] = []

    def timed_out(self, deadline: float | None) -> bool:
        return deadline is not None and self.timing.clock() >= deadline

    def all_failed(self) -> AllLocationsFailed:
        failed = "; ".join(f"{a.url}: {a.error}" for a in self.attempts if a.outcome != "ok")
        return AllLocationsFailed(
            SCRUB(
                f"image {self.image.id}: no location delivered a verified image "
                f"({failed or 'no locations'})"
            ),
            self.attempts,
        )

    def engine(self, sources: list[Source], tolerance: float, deadline: float | None) -> Result:
        """The streaming copies, in pieces (known size) or whole (unknown size)."""
        if self.image.size is None:
            discard_pieced_part(self.dest)
            with AtomicSink(self.dest, **self.sink_args) as sink:
                result = fetch_whole(
                    self.image, sources, sink, self.cfg, progress=self.progress,
                    observer=self.observer, started=self.started, timing=self.timing,
                    cancel=self.cancel, deadline=deadline,
                )  # fmt: skip
        else:
            result = swarm.fetch(
                self.image, sources, self.dest, self.sink_args, self.cfg,
                tolerance=tolerance, progress=self.progress, observer=self.observer,
                started=self.started, cancel=self.cancel, deadline=deadline,
                timing=self.timing,
            )  # fmt: skip
        return _with_earlier(result, self.attempts)

    def system_copy(self, score: Score, transports: Transports) -> Result | None:
        """One kernel copy from a shared filesystem; None (attempt recorded) when it fails."""
        loc = score.location
        transport = transports.for_location(loc)
        t0 = time.monotonic()
        cancel, progress = self.cancel, self.progress

        def watched(done: int, total: int | None) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"image {self.image.id}: download cancelled")
            if progress is not None:
                progress(done, total)

        discard_pieced_part(self.dest)
        got = 0
        try:
            with AtomicSink(self.dest, **self.sink_args) as sink:
                sink.label = f"image {self.image.id} from {loc.display_url}"
                before = sink.offset
                via = transport.copy_to(loc, self.image, sink, watched)
                got = sink.offset - before
                verified = sink.commit()
        except LocationError as exc:
            error = SCRUB(reason_of(exc))
            self.attempts.append(Attempt(url=score.url, outcome="failed", error=error, bytes=got))
            if self.observer is not None:
                self.observer(loc, False, got, time.monotonic() - t0, str(exc))
            log.info("location failed: %s", SCRUB(str(exc)))
            return None
        note = f"system copy via {via}"
        self.attempts.append(Attempt(url=score.url, outcome="ok", bytes=got, note=note))
        if self.observer is not None:
            self.observer(loc, True, got, time.monotonic() - t0, None)
        return Result(
            image_id=self.image.id,
            dest=str(self.dest),
            source_url=loc.display_url,
            method="copy",
            bytes=got,
            seconds=time.monotonic() - self.started,
            verified=verified,
            attempts=tuple(self.attempts),
        )


def _system_copy(transports: Transports, score: Score) -> bool:
    try:
        return transports.for_location(score.location).capabilities.system_copy
    except LocationError:
        return False


def _with_earlier(result: Result, earlier: Sequence[Attempt]) -> Result:
    if not earlier:
        return result
    return attrs.evolve(result, attempts=(*earlier, *result.attempts))


def _already_delivered(
    image: Image, expected: Expected, dest: str | os.PathLike[str], started: float
) -> Result | None:
    """After waiting for another process on the same dest: is its result our image?"""
    path = Path(dest)
    fd = open_private(path)  # never a FIFO or a symlink planted at dest meanwhile
    if fd is None:
        return None
    try:
        with open(fd, "rb") as fh:
            if image.size is not None and os.fstat(fh.fileno()).st_size != image.size:
                return None
            hasher = expected.new()
            if hasher is None:
                return None
            while chunk := fh.read(4 << 20):
                hasher.update(chunk)
    except OSError:
        return None
    if hasher.hexdigest() != expected.value:
        return None
    log.info("dest %s: already delivered and verified by another locpick process", dest)
    return Result(
        image_id=image.id,
        dest=str(dest),
        source_url=path.resolve().as_uri(),
        method="download",
        bytes=0,
        seconds=time.monotonic() - started,
        verified=expected.algo,
        attempts=(),
    )
