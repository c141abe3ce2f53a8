"""Bad bytes in a swarm fetch: find the location that sent them, by comparison, never by guess.

Without piece digests a bad copy shows only at the final hash. Then, in order:

1. the file is hashed again (the running hash may have seen bytes a late write replaced);
2. the pieces of each suspect (the copy that delivered the fewest pieces first: a copy that
   corrupts shows on its first pieces; a copy already dropped is still a suspect) are fetched
   again from the live copy that delivered the most and compared; a differing piece is
   rewritten and the file re-hashed. A copy is blamed only when that proves it (the hash then
   matches), or when every byte in the file is its own and the hash fails;
3. when comparison cannot decide, the caller fetches the whole image from one copy at a time
   (best first), each verified alone (``Verdict.UNDECIDED``).

A good copy is therefore never dropped for another copy's bytes.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import TYPE_CHECKING, Any

from locpick.errors import LocationError
from locpick.models import Attempt
from locpick.sink.hashing import Expected

if TYPE_CHECKING:
    from locpick.fetch.swarm.run import Source, Swarm

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    """The outcome of a failed final hash."""

    #: The file is the image (after repair, or the running hash was stale).
    OK = "ok"
    #: A copy was proven wrong and dropped: fetch again from the others.
    RESTART = "restart"
    #: Comparison could not tell: fetch the whole image from one copy at a time.
    UNDECIDED = "undecided"


def check_and_repair(
    swarm: Swarm, fd: int, hasher: Any, expected: Expected, attempts: list[Attempt]
) -> tuple[Verdict, Any]:
    """(verdict, hash of the file when OK) after the swarm filled ``fd``."""
    if expected.value is None or hasher is None or hasher.copy().hexdigest() == expected.value:
        return Verdict.OK, hasher
    h = _rehash(fd, swarm.g.size, expected)
    if h.hexdigest() == expected.value:
        return Verdict.OK, h
    what = f"{expected.algo} mismatch"
    #: Which copy's bytes each piece holds now (-1: resumed from an earlier run).
    holder = [swarm.workers[wid].source if wid >= 0 else -1 for wid in swarm.sched.by]
    if swarm.solo is not None:  # whole-image mode: judge the solo copy by its own bytes
        return _judge_alone(swarm, holder, swarm.solo, what), None
    involved = sorted({i for i in holder if i >= 0})
    if -1 not in holder and len(involved) == 1:
        _blame(swarm, swarm.sources[involved[0]], f"{what}: every byte came from here; dropped")
        return Verdict.RESTART, None
    counts = {i: holder.count(i) for i in involved}
    refetched = 0
    for idx in sorted(involved, key=lambda i: counts[i]):
        suspect = swarm.sources[idx]
        witness = _witness(swarm, holder, suspect)
        if witness is None:  # no live copy but this one: it may witness the next suspect
            continue
        differed: list[int] = []
        for p in [q for q, i in enumerate(holder) if i == idx]:
            swarm.check_stop(swarm.clock())
            fresh = _piece(swarm, witness, p)
            if fresh is None:  # the witness failed (dropped): comparison cannot go on
                return Verdict.UNDECIDED, None
            refetched += 1
            start = swarm.g.start(p)
            if os.pread(fd, len(fresh), start) == fresh:
                continue
            os.pwrite(fd, fresh, start)
            if swarm.sink.tee is not None:
                swarm.sink.tee.write(fresh, start)
            holder[p] = witness.index
            with swarm.lock:  # the piece in the file is now the witness's, in the shares too
                suspect.bytes -= len(fresh)
                witness.bytes += len(fresh)
            differed.append(p)
            if len(differed) == 1:  # one bad piece is the common case: check it at once
                h = _fixed(fd, swarm, suspect, witness, differed, refetched, expected, attempts)
                if h is not None:
                    return Verdict.OK, h
        if len(differed) > 1:  # a re-hash per piece would cost a whole read each
            h = _fixed(fd, swarm, suspect, witness, differed, refetched, expected, attempts)
            if h is not None:
                return Verdict.OK, h
        if differed and all(i == witness.index for i in holder):
            # every byte is now the witness's, and still wrong: the witness is proven bad
            _blame(swarm, witness, f"{what}: every byte came from here; dropped")
            return Verdict.RESTART, None
        if differed:
            break  # two copies disagree and neither is proven: let each show its own bytes
    log.warning(
        "image %s: %s not explained by comparing pieces (%d re-fetched); fetching the whole "
        "image from one copy at a time",
        swarm.image.id, what, refetched,
    )  # fmt: skip
    return Verdict.UNDECIDED, None


def _fixed(
    fd: int,
    swarm: Swarm,
    suspect: Source,
    witness: Source,
    differed: list[int],
    refetched: int,
    expected: Expected,
    attempts: list[Attempt],
) -> Any:
    """The hash of the file when replacing ``differed`` made it the image (``suspect`` is then
    proven wrong and blamed), else None."""
    h = _rehash(fd, swarm.g.size, expected)
    if h.hexdigest() != expected.value:
        return None
    _blame(swarm, suspect, f"{expected.algo} mismatch: wrong bytes in piece(s) {differed}")
    note = f"repaired piece(s) {differed} from {witness.url}; {refetched} re-fetched"
    attempts.append(Attempt(url=witness.url, outcome="ok", note=note))
    log.warning("%s", note)
    return h


def _judge_alone(swarm: Swarm, holder: list[int], solo: Source, what: str) -> Verdict:
    """Whole-image mode: the solo copy is blamed only when every byte is its own."""
    if all(i == solo.index for i in holder):
        _blame(swarm, solo, f"{what}: every byte came from here (verified alone); dropped")
    return Verdict.UNDECIDED


def _witness(swarm: Swarm, holder: list[int], suspect: Source) -> Source | None:
    """The live copy (not ``suspect``) that delivered the most pieces, else the best live one."""
    live = [s for s in swarm.sources if s is not suspect and not s.dead]
    if not live:
        return None
    return max(live, key=lambda s: (holder.count(s.index), -s.index))


def _blame(swarm: Swarm, src: Source, error: str) -> None:
    """Drop ``src`` for bytes proven wrong; a copy already dropped for another reason (a peer
    whose fill failed after it sent pieces) gets the proof recorded as a failed attempt too."""
    with swarm.lock:
        if not src.dead:
            swarm.drop_source(src, error, src.bytes, src.busy)
        else:
            swarm.attempts.append(Attempt(url=src.url, outcome="failed", error=error))
            log.info("%s: proven wrong after it was dropped (%s)", src.url, error)


def _piece(swarm: Swarm, src: Source, p: int) -> bytes | None:
    """Piece ``p`` from ``src``, in memory; None (and ``src`` dropped) when it fails."""
    start, end = swarm.g.start(p), swarm.g.end(p)
    buf = bytearray(end - start)
    view, got = memoryview(buf), 0
    try:
        if src.bounded:
            stream = src.transport.open(src.score.location, swarm.image, offset=start, end=end)
        else:
            stream = src.transport.open(src.score.location, swarm.image, offset=start)
        try:
            if stream.start != start:
                _blame(swarm, src, f"{stream.final_url}: ignores Range: cannot compare pieces")
                return None
            while got < len(buf):
                n = stream.readinto(view[got:])
                if n == 0:
                    _blame(swarm, src, f"{stream.final_url}: connection ended mid-piece")
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
