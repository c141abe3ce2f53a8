"""The transfer engine: pieces of one image from one or several locations at once. A single
copy is a swarm of one.

``plan`` turns the ranked locations into the engine's sources (every usable location whose
transport streams bytes: http/https, swift, s3; not a shared filesystem's system copy);
``fetch`` runs them into the usual atomic part file, verified, and keeps the part (with its
piece map) for the next run when cancelled, past ``[transfer] total_timeout`` or interrupted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from locpick.config.model import TransferConfig
from locpick.errors import Cancelled, LocationError, LocpickError
from locpick.fetch.policy import Observer, Timing
from locpick.fetch.swarm.partfile import SwarmSink
from locpick.fetch.swarm.pieces import Geometry, PieceMap, auto_piece_size
from locpick.fetch.swarm.repair import Verdict, check_and_repair
from locpick.fetch.swarm.run import Source, Swarm
from locpick.models import Attempt, ByteProgress, Image, Location, Result, Score
from locpick.sink.hashing import Expected
from locpick.transports import Transports

log = logging.getLogger(__name__)

__all__ = ["fetch", "plan", "swarm_probes"]

#: The topology class of a location (``locpick.choose.score.CLASSES`` index).
Classify = Callable[[Location], int]


def swarm_probes(image: Image, cfg: TransferConfig) -> bool:
    """Whether a download of ``image`` goes through the engine, whose first bytes from each
    copy are the probe (so no separate probe is needed): every image of known size."""
    return image.size is not None


def plan(
    image: Image, ranked: Sequence[Score], transports: Transports, classify: Classify
) -> list[Source]:
    """The engine's sources, best first: every usable location that streams bytes.

    When a probe found a live copy, copies that stayed silent in it (black holes) or were not
    measured at all are last resorts (drawn on only once every other copy has dropped out):
    the engine never waits a header deadline on a copy that did not answer while one that did
    is there, and still has them if the live ones fail."""
    sources: list[Source] = []
    live = any(s.usable and s.reasons.probe == "live" for s in ranked)
    for score in ranked:
        if not score.usable:
            continue
        try:
            transport = transports.for_location(score.location)
        except LocationError:
            continue
        caps = transport.capabilities
        if caps.system_copy:
            continue
        sources.append(
            Source(
                len(sources), score, transport, classify(score.location),
                bounded=caps.bounded_ranges,
                last_resort=score.location.kind == "glance-file"
                or score.reasons.fallback_only
                or (live and (score.reasons.probe == "silent" or score.reasons.not_probed)),
            )
        )  # fmt: skip
    return sources


def fetch(
    image: Image,
    sources: Sequence[Source],
    dest: str | os.PathLike[str],
    sink_args: Mapping[str, Any],
    cfg: TransferConfig,
    *,
    tolerance: float,
    progress: ByteProgress | None,
    observer: Observer | None,
    started: float,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    timing: Timing | None = None,
) -> Result:
    """Fetch ``image`` in pieces from ``sources`` into ``dest``, verified and atomic.

    ``cancel`` set or ``deadline`` (a ``clock()`` value) passed: ``Cancelled`` or
    ``AllLocationsFailed`` within a tick, dest untouched, the part kept for resume (also on
    KeyboardInterrupt). ``progress`` is called from the calling thread only."""
    assert image.size is not None
    g = Geometry(image.size, auto_piece_size(image.size, cfg.piece_size))
    expected: Expected = sink_args["expected"]
    identity = {"image_id": image.id, "size": image.size, "hash": expected.value}
    pieces = PieceMap(g, None, identity)
    with SwarmSink(dest, pieces=pieces, **sink_args) as sink:
        resumed = sum(pieces.done)
        swarm = Swarm(
            image, sources, sink, cfg, tolerance, progress, observer,
            timing=timing, cancel=cancel, deadline=deadline,
        )  # fmt: skip
        attempts = swarm.attempts

        def filler(fd: int, hasher: Any) -> Any:
            while True:
                hasher = swarm.fill(fd, hasher)
                verdict, hasher = check_and_repair(swarm, fd, hasher, expected, attempts)
                if verdict is Verdict.OK:
                    return hasher
                live = [s for s in sources if not s.dead]
                if not live:
                    raise swarm.all_failed()
                if verdict is Verdict.UNDECIDED:
                    solo = swarm.solo
                    nxt = live[0] if solo is None or solo.dead else solo
                    log.info("swarm: the whole image from %s alone, verified", nxt.url)
                    swarm.set_solo(nxt)
                hasher = sink.truncate()
                swarm.restart()

        try:
            sink.fill(filler)
        except BaseException as exc:
            swarm.close()
            # cancelled, timed out, interrupted, or the caller's callback raised: what was
            # fetched stays for the next run; a failure of every copy or of the disk does not
            if isinstance(exc, Cancelled) or swarm.timed_out or not isinstance(exc, LocpickError):
                sink.keep()
            raise
        finally:
            swarm.close()
        log.debug("swarm: all pieces in and hashed")
        shares = swarm.shares()
        top = shares[0].url if shares else sources[0].url
        served = next((s.final_url for s in sources if s.url == top and s.final_url), None)
        sink.label = f"image {image.id} from {top}"
        verified = sink.commit()
        log.debug("swarm: committed")
    joined = {s.url: s.joined for s in sources if s.joined}
    dead = {s.url for s in sources if s.dead}
    earlier: list[Attempt] = []  # a copy that delivered pieces and then dropped out: its
    for share in shares:  # share comes before its failure, so its last word is the failure
        note = "swarm" if len(shares) > 1 else None
        if share.url in joined:
            note = f"swarm; {joined[share.url]}"
        ok = Attempt(url=share.url, outcome="ok", bytes=share.bytes, note=note)
        (earlier if share.url in dead else attempts).append(ok)
    attempts[:0] = earlier
    if observer is not None:  # history learns each copy's outcome once per download
        for src in sources:
            if src.bytes:
                observer(src.score.location, True, src.bytes, src.busy, None)
            elif not src.dead:  # broke off (retried) and delivered nothing: a failure
                errors = [a.error for a in attempts if a.url == src.url and a.outcome == "failed"]
                if errors:
                    observer(src.score.location, False, 0, src.busy, errors[-1])
    used = {s.url for s in shares} | {a.url for a in attempts}
    for src in sources:
        if src.url in used:
            continue
        if src in swarm.admitted and src.ttfb is None:
            why = "no response headers while the others delivered every piece"
            attempts.append(Attempt(url=src.url, outcome="failed", error=why))
        else:
            why = "swarm: not needed (the others delivered every piece first)"
            attempts.append(Attempt(url=src.url, outcome="skipped", error=why))
    delivered = sum(s.bytes for s in shares)
    if resumed:
        attempts.append(Attempt(url=top, outcome="ok", note=f"{resumed} pieces resumed"))
    return Result(
        image_id=image.id,
        dest=str(dest),
        source_url=served or top,
        method="download",
        bytes=delivered,
        seconds=time.monotonic() - started,
        verified=verified,
        attempts=tuple(attempts),
        sources=shares,
    )
