"""Bad bytes in a swarm fetch: find the location that sent them and repair only their pieces.

Without piece digests a bad source shows only at the final hash. Its pieces are then fetched
again from another location and compared with what it delivered; differing pieces are rewritten
and the location is dropped (and recorded as failed, which demotes it in history).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from locpick.errors import LocationError
from locpick.models import Attempt
from locpick.sink.hashing import Expected

if TYPE_CHECKING:
    from locpick.fetch.swarm.run import Source, Swarm

log = logging.getLogger(__name__)


def check_and_repair(
    swarm: Swarm, fd: int, hasher: Any, expected: Expected, attempts: list[Attempt]
) -> tuple[bool, Any]:
    """(True, hash) when the file is the image, possibly after repair; (False, None) when it
    must start over (every byte came from the location that was wrong, now dropped)."""
    if expected.value is None or hasher is None or hasher.copy().hexdigest() == expected.value:
        return True, hasher
    by_source: dict[int, list[int]] = {}
    for p, wid in enumerate(swarm.sched.by):
        if wid >= 0:
            by_source.setdefault(swarm.workers[wid].source, []).append(p)
    resumed = any(wid < 0 for wid in swarm.sched.by)
    involved = [swarm.sources[i] for i in by_source]
    what = f"{expected.algo} mismatch"
    if len(involved) == 1 and not resumed:
        _blame(swarm, involved[0], f"{what}: every byte came from here; dropped")
        return False, None
    order = sorted(involved, key=lambda s: len(by_source[s.index]))
    queues = {s.index: list(by_source[s.index]) for s in order}
    bad: dict[int, list[int]] = {}
    refetched = 0
    while any(queues.values()):
        # breadth first over the copies (a copy that corrupts shows on its first pieces),
        # depth first on a copy once it was caught
        proven = [s for s in order if bad.get(s.index) and queues[s.index]]
        for src in proven[:1] or [s for s in order if queues[s.index]]:
            p = queues[src.index].pop(0)
            other = next((s for s in swarm.sources if s is not src and not s.dead), None)
            fresh = None if other is None else _piece(swarm, other, p)
            if other is None or fresh is None:
                continue
            refetched += 1
            start = swarm.g.start(p)
            if os.pread(fd, len(fresh), start) == fresh:
                continue
            os.pwrite(fd, fresh, start)
            if swarm.sink.tee is not None:
                swarm.sink.tee.write(fresh, start)
            bad.setdefault(src.index, []).append(p)
            if swarm.sink.tee is not None:  # peers may have read them from our filling copy
                swarm.sink.tee.abandon(
                    f"piece {p} from {src.url} proved wrong after it was offered to peers"
                )
            h = _rehash(fd, swarm.g.size, expected)
            if h.hexdigest() == expected.value:
                for i, pieces in bad.items():
                    _blame(swarm, swarm.sources[i], f"{what}: wrong bytes in piece(s) {pieces}")
                fixed = sorted(p for pieces in bad.values() for p in pieces)
                note = f"repaired piece(s) {fixed} from {other.url}; "
                note += f"{refetched} re-fetched"
                attempts.append(Attempt(url=other.url, outcome="ok", note=note))
                log.warning("%s", note)
                return True, h
            break
    for src in involved:
        if not src.dead:
            _blame(swarm, src, f"{what}: bad bytes not found by comparison; dropped")
    return False, None


def _blame(swarm: Swarm, src: Source, error: str) -> None:
    with swarm.lock:
        swarm.drop_source(src, error, src.bytes, src.busy)


def _piece(swarm: Swarm, src: Source, p: int) -> bytes | None:
    """Piece ``p`` from ``src``, in memory; None (and ``src`` dropped) when it fails."""
    start, end = swarm.g.start(p), swarm.g.end(p)
    buf = bytearray(end - start)
    view, got = memoryview(buf), 0
    try:
        stream = src.transport.open(src.score.location, swarm.image, offset=start, end=end)
        try:
            if stream.start != start:
                return None
            while got < len(buf):
                n = stream.readinto(view[got:])
                if n == 0:
                    return None
                got += n
        finally:
            stream.close()
    except LocationError as exc:
        _blame(swarm, src, str(exc))
        return None
    return bytes(buf)


def _rehash(fd: int, size: int, expected: Expected) -> Any:
    h = expected.new()
    buf = bytearray(4 << 20)
    view, pos = memoryview(buf), 0
    while pos < size:
        n = os.preadv(fd, [view[: min(len(buf), size - pos)]], pos)
        if n <= 0:
            raise OSError(f"part file shorter than the image (at {pos})")
        h.update(view[:n])
        pos += n
    return h
