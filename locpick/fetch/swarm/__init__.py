"""Swarm fetch: pieces of one image from several locations at once.

``plan`` decides whether a download is a swarm (at least two locations that can serve byte
ranges, an image of at least ``MIN_SWARM_BYTES``, ``[transfer] max_sources`` > 1, and the best
location is not a system copy); ``fetch`` runs it into the usual atomic part file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from locpick.config.model import TransferConfig
from locpick.errors import LocationError
from locpick.fetch.swarm.partfile import SwarmSink
from locpick.fetch.swarm.pieces import Geometry, PieceMap, auto_piece_size
from locpick.fetch.swarm.repair import check_and_repair
from locpick.fetch.swarm.run import Source, Swarm
from locpick.fetch.swarm.scheduler import topology_class
from locpick.models import Attempt, Image, Location, Result, Score
from locpick.sink.hashing import Expected
from locpick.transports import Transports

log = logging.getLogger("locpick")

__all__ = ["MIN_SWARM_BYTES", "fetch", "plan", "swarm_probes"]

#: Smaller images go to one location at a time (which switches when slow): a swarm's extra
#: connections cost more than they bring on a few MiB.
MIN_SWARM_BYTES = 16 << 20

Progress = Callable[[int, int | None], None]
Observer = Callable[[Location, bool, int, float, str | None], None]


def swarm_probes(image: Image, cfg: TransferConfig) -> bool:
    """Whether a download of ``image`` would be a swarm, which needs no separate probe."""
    return cfg.max_sources > 1 and image.size is not None and image.size >= MIN_SWARM_BYTES


def plan(
    image: Image, ranked: Sequence[Score], transports: Transports, cfg: TransferConfig
) -> list[Source] | None:
    """The locations of a swarm fetch, best first; None when one location at a time is right."""
    if not swarm_probes(image, cfg):
        return None
    sources: list[Source] = []
    for score in ranked:
        if not score.usable:
            continue
        try:
            transport = transports.for_location(score.location)
        except LocationError:
            continue
        if not transport.capabilities.bounded_ranges:
            if not sources:
                return None  # the best is a system copy (or streams only): keep it whole
            continue
        sources.append(Source(len(sources), score, transport, topology_class(score)))
    return sources if len(sources) >= 2 else None


def fetch(
    image: Image,
    sources: Sequence[Source],
    dest: str | os.PathLike[str],
    sink_args: Mapping[str, Any],
    cfg: TransferConfig,
    *,
    tolerance: float,
    progress: Progress | None,
    observer: Observer | None,
    started: float,
) -> Result:
    """Fetch ``image`` in pieces from ``sources`` into ``dest``, verified and atomic."""
    assert image.size is not None
    g = Geometry(image.size, auto_piece_size(image.size, cfg.piece_size))
    expected: Expected = sink_args["expected"]
    identity = {"image_id": image.id, "size": image.size, "hash": expected.value}
    pieces = PieceMap(g, None, identity)
    with SwarmSink(dest, pieces=pieces, **sink_args) as sink:
        resumed = sum(pieces.done)
        swarm = Swarm(image, sources, sink, cfg, tolerance, progress, observer)
        attempts = swarm.attempts

        def filler(fd: int, hasher: Any) -> Any:
            while True:
                hasher = swarm.fill(fd, hasher)
                ok, hasher = check_and_repair(swarm, fd, hasher, expected, attempts)
                if ok:
                    return hasher
                if all(s.dead for s in sources):
                    raise swarm.all_failed()
                hasher = sink.truncate()
                swarm.restart()

        try:
            sink.fill(filler)
        finally:
            swarm.close()
        log.debug("swarm: all pieces in and hashed")
        shares = swarm.shares()
        top = shares[0].url if shares else sources[0].url
        sink.label = f"image {image.id} from {top}"
        verified = sink.commit()
        log.debug("swarm: committed")
    for share in shares:
        attempts.append(Attempt(url=share.url, outcome="ok", bytes=share.bytes, note="swarm"))
    if observer is not None:  # history learns each copy's rate, as from a single download
        for src in sources:
            if src.bytes:
                observer(src.score.location, True, src.bytes, src.busy, None)
    used = {s.url for s in shares} | {a.url for a in attempts}
    for src in sources:
        if src.url not in used:
            why = "swarm: not needed (the others delivered every piece first)"
            attempts.append(Attempt(url=src.url, outcome="skipped", error=why))
    delivered = sum(s.bytes for s in shares)
    if resumed:
        attempts.append(Attempt(url=top, outcome="ok", note=f"{resumed} pieces resumed"))
    return Result(
        image_id=image.id,
        dest=str(dest),
        source_url=top,
        method="download",
        bytes=delivered,
        seconds=time.monotonic() - started,
        verified=verified,
        attempts=tuple(attempts),
        sources=shares,
    )
