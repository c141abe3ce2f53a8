"""Pure decisions of a swarm fetch: which connection fetches which pieces, when a fast one
takes over a slow one's untouched tail (work stealing), when the last pieces are duplicated
(endgame), and when another location may join. No I/O and no clock of its own: callers pass
``now`` (seconds, monotonic), so every rule is testable with made-up times and rates. The time
arithmetic behind a claim's size, a steal and a duplicate comes first, then the scheduler that
uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from locpick.fetch.swarm.pieces import Geometry

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


__all__ = ["RISE", "Run", "Scheduler", "Worker", "admit", "may_join", "rises"]

#: Another location joins only while the aggregate rate rose at least this much since the
#: last one joined.
RISE = 1.05


@attrs.define
class Worker:
    """One connection to one location, and what the fetch learnt about it."""

    id: int
    source: int
    #: Expected bytes/s before any measurement (ranking: probe, history or prior).
    prior_bps: float
    latency: float = 0.05
    bytes: int = 0
    #: Seconds spent receiving (from request to last byte), summed over its runs.
    busy: float = 0.0
    live: bool = True
    #: When the current request was sent, and whether any byte of it came back yet.
    asked_at: float | None = None
    answered: bool = False
    #: Its location is a peer's copy still filling (boot storm): it holds a growing prefix.
    filling: bool = False
    #: Topology class of its location (``choose.score.CLASSES`` index; lower is nearer).
    topology: int = 0

    def rate(self) -> float | None:
        return self.bytes / self.busy if self.bytes and self.busy > 0 else None

    def expected_bps(self) -> float:
        return self.rate() or self.prior_bps


@attrs.define(eq=False)
class Run:
    """Consecutive pieces ``[first, end)`` a worker reads with one request, at byte ``pos``."""

    worker: int
    first: int
    end: int
    pos: int
    started: float
    #: An endgame duplicate of piece ``first`` (read to memory; written only if it wins).
    dup: bool = False
    cancelled: bool = False


class Scheduler:
    """Owner of the piece states; every method is called under the caller's lock."""

    def __init__(self, geometry: Geometry, done: Sequence[bool], workers: Sequence[Worker]):
        self.g = geometry
        self.done = list(done)
        self.owner: list[Run | None] = [None] * geometry.count
        self.dups: dict[int, Run] = {}
        self.workers = {w.id: w for w in workers}
        self.runs: dict[int, Run] = {}
        #: Who delivered each done piece (worker id; -1 = an earlier run).
        self.by = [-1] * geometry.count
        #: One connection and nobody to share with (a single copy): a claim takes every
        #: missing piece, so the copy is read with one request.
        self.alone = False
        #: Pieces a connection broke off inside: (byte reached, worker) — the next claim
        #: continues there (a server that cuts every response still makes progress).
        self.held: dict[int, tuple[int, int]] = {}
        #: Pieces whose bytes came from two copies: no single copy delivered them.
        self.mixed: set[int] = set()

    # -- queries --------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return all(self.done)

    def missing_bytes(self) -> int:
        return sum(self.g.length(i) for i, d in enumerate(self.done) if not d)

    # -- decisions ------------------------------------------------------------------------
    def next_task(self, wid: int, now: float) -> Run | None:
        """The next run for worker ``wid``: unclaimed pieces, else a steal, else a duplicate."""
        if self.finished:
            return None
        run = (
            self._rescue(wid, now)
            or self._claim(wid, now)
            or self._steal(wid, now)
            or self._endgame(wid, now)
        )
        if run is not None:
            self.runs[wid] = run
        return run

    def _claim(self, wid: int, now: float) -> Run | None:
        free = [i for i in range(self.g.count) if not self.done[i] and self.owner[i] is None]
        if not free:
            return None
        live = [w for w in self.workers.values() if w.live]
        share = (
            len(free)
            if self.alone
            else claim_share(self.workers[wid], live, len(free), self.g.piece)
        )
        if self._from_tail(wid):
            return self._claim_tail(wid, free[-1], share, now)
        first = end = free[0]
        while end < self.g.count and end - first < share:
            if self.done[end] or self.owner[end] is not None:
                break
            end += 1
        run = Run(wid, first, end, self._resume_at(first, wid), now)
        for i in range(first, end):
            self.owner[i] = run
        return run

    def _resume_at(self, p: int, wid: int) -> int:
        """Where a run starting at piece ``p`` begins: where an earlier one broke off."""
        held = self.held.pop(p, None)
        if held is None:
            return self.g.start(p)
        pos, by = held
        if self.workers[by].source != self.workers[wid].source:
            self.mixed.add(p)
        return pos

    def _from_tail(self, wid: int) -> bool:
        """A copy that is complete (the origin) takes pieces from the end while a filling peer
        reads from the front: the peer holds the beginning first, so the origin is asked only
        for pieces nobody near holds yet, and the two meet in the middle. So does a copy of a
        farther topology class while a nearer one reads from the front: the nearer one may
        take over the farther one's untouched tail, never the other way round."""
        me = self.workers[wid]
        if me.filling:
            return False
        return any(
            w.live and (w.filling or w.topology < me.topology) for w in self.workers.values()
        )

    def _claim_tail(self, wid: int, last: int, share: int, now: float) -> Run:
        first = last
        while (
            first > 0
            and last + 1 - first < share
            and not self.done[first - 1]
            and self.owner[first - 1] is None
        ):
            first -= 1
        run = Run(wid, first, last + 1, self._resume_at(first, wid), now)
        for i in range(first, last + 1):
            self.owner[i] = run
        return run

    def _rescue(self, wid: int, now: float) -> Run | None:
        """Take over, before anything else, the untouched pieces of a connection that has sent
        nothing for too long (a black hole must not hold the hash's frontier)."""
        thief = self.workers[wid]
        for run in sorted(self.runs.values(), key=lambda r: r.first):
            if run.worker == wid or run.dup or run.cancelled:
                continue
            u = untouched(self.g, run)
            if u < run.end and victim_bps(self.workers[run.worker], run, thief, now) <= 0:
                return self._split(run, u, wid, now)
        return None

    def _split(self, victim: Run, s: int, wid: int, now: float) -> Run:
        """Pieces ``[s, victim.end)`` move from ``victim`` to a new run of ``wid``."""
        run = Run(wid, s, victim.end, self.g.start(s), now)
        victim.end = s
        for i in range(s, run.end):
            self.owner[i] = run
        return run

    def _steal(self, wid: int, now: float) -> Run | None:
        thief = self.workers[wid]
        best: tuple[float, Run, int] | None = None
        for run in self.runs.values():
            owner = self.workers[run.worker]
            if run.worker == wid or run.dup or run.cancelled or spared(thief, owner):
                continue
            u = untouched(self.g, run)
            if u >= run.end:
                continue
            found = steal_gain(self.g, run, u, thief, victim_bps(owner, run, thief, now))
            if found is None:
                continue
            gain, s = found
            if gain > thief.latency and (best is None or gain > best[0]):
                best = (gain, run, s)
        if best is None:
            return None
        _, victim, s = best
        return self._split(victim, s, wid, now)

    def _endgame(self, wid: int, now: float) -> Run | None:
        thief = self.workers[wid]
        best: tuple[float, Run] | None = None
        for run in self.runs.values():
            if run.worker == wid or run.dup or run.cancelled or run.first >= run.end:
                continue
            owner = self.workers[run.worker]
            if spared(thief, owner):
                continue
            p = run.first
            if self.done[p] or p in self.dups:
                continue
            owner_eta = duplicate_beats(self.g, run, thief, victim_bps(owner, run, thief, now))
            if owner_eta is not None and (best is None or owner_eta > best[0]):
                best = (owner_eta, run)
        if best is None:
            return None
        p = best[1].first
        run = Run(wid, p, p + 1, self.g.start(p), now, dup=True)
        self.dups[p] = run
        return run

    # -- progress -------------------------------------------------------------------------
    def advance(self, run: Run, pos: int) -> bool:
        """``run`` wrote up to byte ``pos``; pieces it completed are done. Returns whether the
        run should go on (False: over, cancelled, or its current piece finished elsewhere)."""
        if run.cancelled:
            return False
        run.pos = pos
        while run.first < run.end and self.g.end(run.first) <= pos:
            self._complete(run.first, run)
            run.first += 1
        if run.first >= run.end:
            return False
        return not self.done[run.first]

    def _complete(self, p: int, run: Run) -> None:
        if not self.done[p]:
            self.done[p] = True
            self.by[p] = -1 if p in self.mixed else run.worker
        self.mixed.discard(p)
        self.held.pop(p, None)
        self.owner[p] = None
        dup = self.dups.pop(p, None)
        if dup is not None and dup is not run:
            dup.cancelled = True

    def won(self, run: Run) -> bool:
        """A duplicate finished its piece: True if it was first (the owner is then cut off)."""
        p = run.first
        self.dups.pop(p, None)
        if self.done[p]:
            return False
        owner = self.owner[p]
        self.done[p] = True
        self.by[p] = run.worker
        self.mixed.discard(p)
        self.held.pop(p, None)
        self.owner[p] = None
        if owner is not None:
            owner.cancelled = True
            self._free(owner, p + 1)
        return True

    def release(self, run: Run) -> None:
        """The run ended (failed, cancelled, or done): its unfinished pieces are free again."""
        if self.runs.get(run.worker) is run:
            del self.runs[run.worker]
        if run.dup:
            if self.dups.get(run.first) is run:
                del self.dups[run.first]
            return
        p = run.first
        if (
            not run.cancelled
            and p < run.end
            and not self.done[p]
            and self.g.start(p) < run.pos < self.g.end(p)
        ):
            self.held[p] = (run.pos, run.worker)
        self._free(run, run.first)

    def _free(self, run: Run, start: int) -> None:
        for i in range(start, run.end):
            if self.owner[i] is run:
                self.owner[i] = None
        run.end = min(run.end, start)

    def reopen(self, pieces: Sequence[int]) -> None:
        """Pieces found bad after the fact: fetch them again."""
        for p in pieces:
            self.done[p] = False
            self.by[p] = -1
            self.owner[p] = None
            self.held.pop(p, None)
            self.mixed.discard(p)


def admit(
    classes: Sequence[int],
    bps: Sequence[float],
    max_sources: int,
    tolerance: float,
    measured: Sequence[bool] | None = None,
) -> list[int]:
    """Which candidates (ranked, best first) start at once: the nearest topology class up to
    ``max_sources``; a farther one only when the nearer copies together are expected to be
    slower by more than ``tolerance`` than with it, on measured rates (``measured[i]``: probe
    or history): on priors alone the nearer copies start, and a farther one joins later if
    what they show is too slow (``Swarm._maybe_join``)."""
    if not classes:
        return []
    near = min(classes)
    known = list(measured) if measured is not None else [True] * len(classes)
    chosen = [i for i, c in enumerate(classes) if c == near][:max_sources]
    for i, c in enumerate(classes):
        if len(chosen) >= max_sources:
            break
        if c == near:
            continue
        agg = sum(bps[j] for j in chosen)
        evidence = all(known[j] for j in chosen)
        if evidence and may_join(agg, bps[i], tolerance):
            chosen.append(i)
    return chosen


def may_join(near_bps: float, far_bps: float, tolerance: float) -> bool:
    """A farther copy joins when the nearer ones alone would take longer than with it by more
    than ``tolerance``: ``1/near > (1/(near + far)) / (1 - tolerance)``."""
    if near_bps <= 0:
        return True
    return (near_bps + far_bps) * (1 - tolerance) > near_bps


def rises(before_bps: float, now_bps: float) -> bool:
    """The aggregate rate rose since the last source joined (so another may be worth it)."""
    return before_bps <= 0 or now_bps >= RISE * before_bps
