"""The time arithmetic of the swarm scheduler, pure: how many pieces one claim takes, where a
steal splits a slow run and what it gains, and whether an endgame duplicate beats the owner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from locpick.fetch.swarm.pieces import Geometry

if TYPE_CHECKING:
    from locpick.fetch.swarm.scheduler import Run, Worker

#: A connection that has not delivered a byte for this long (and 4x the time the thief took
#: to answer) is presumed dead for stealing.
GRACE = 0.3
#: A duplicate is started only if it is expected to finish in this fraction of the time the
#: owner still needs for that piece.
ENDGAME_MARGIN = 0.5
#: A claim covers at most this many seconds of transfer at the connection's rate, or this
#: many times its time to first byte when longer (so a request's latency costs <~12 %).
RUN_SECONDS = 0.2
RUN_PER_LATENCY = 8.0


def claim_share(me: Worker, live: Sequence[Worker], free: int, piece: int) -> int:
    """Pieces for one claim: one to start with (the first piece is the probe), then in
    proportion to the measured rate among the live connections, but no more than
    RUN_SECONDS' worth (longer for a high latency): every connection stays near the
    hash's frontier, so little is left to read back and hash once the last piece is in."""
    if me.rate() is None:
        return 1
    total = sum(w.expected_bps() for w in live)
    share = max(1, round(free * me.expected_bps() / total)) if total > 0 else free
    seconds = max(RUN_SECONDS, RUN_PER_LATENCY * me.latency)
    boxed = max(1, int(seconds * me.expected_bps() / piece))
    return min(share, boxed)


def steal_gain(
    g: Geometry, run: Run, untouched: int, thief: Worker, victim_bps: float
) -> tuple[float, int] | None:
    """(seconds saved, first piece taken) when ``thief`` takes the tail of ``run`` from the
    point where both would finish together (not before its ``untouched`` piece); None when
    that point leaves nothing to take."""
    rt, lat, rv = thief.expected_bps(), thief.latency, victim_bps
    end_b = g.end(run.end - 1)
    if rv <= 0:
        split_b = g.start(untouched)
        stay = float("inf")
    else:
        split_b = int((end_b / rt + lat + run.pos / rv) / (1 / rv + 1 / rt))
        stay = (end_b - run.pos) / rv
    s = max(untouched, -(-split_b // g.piece))
    if s >= run.end:
        return None
    go = lat + (end_b - g.start(s)) / rt
    return stay - max(go, (g.start(s) - run.pos) / rv if rv > 0 else 0.0), s


def duplicate_beats(g: Geometry, run: Run, thief: Worker, victim_bps: float) -> float | None:
    """The owner's time left on ``run``'s current piece when ``thief`` would fetch it again in
    under ENDGAME_MARGIN of that time, else None."""
    p = run.first
    left = g.end(p) - max(run.pos, g.start(p))
    owner_eta = left / victim_bps if victim_bps > 0 else float("inf")
    mine = thief.latency + g.length(p) / thief.expected_bps()
    return owner_eta if mine < ENDGAME_MARGIN * owner_eta else None


def untouched(g: Geometry, run: Run) -> int:
    """First piece of ``run`` with no byte received yet."""
    return run.first + 1 if run.pos > g.start(run.first) else run.first


def victim_bps(owner: Worker, run: Run, thief: Worker, now: float) -> float:
    """The rate ``thief`` counts on from ``owner`` for ``run``: its measured rate, else the
    thief's own while the owner may still answer, else 0 (presumed dead)."""
    if owner.rate() is not None:
        return owner.rate() or 0.0
    waited = now - (owner.asked_at if owner.asked_at is not None else run.started)
    return 0.0 if waited > max(GRACE, 4 * thief.latency) else thief.expected_bps()


def spared(thief: Worker, owner: Worker) -> bool:
    """A filling peer does not steal or duplicate a complete copy's pieces: they lie past
    what it holds (it would only wait for them), and the complete copy has them now. Nor does
    a copy of a farther topology class take a nearer one's pieces (topology is a cost)."""
    return (thief.filling and not owner.filling) or thief.topology > owner.topology
