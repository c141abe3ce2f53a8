"""The swarm scheduler (pure): piece claims, work stealing, endgame, admission."""

from __future__ import annotations

from locpick.fetch.swarm.pieces import Geometry
from locpick.fetch.swarm.scheduler import Scheduler, Worker, admit, may_join, rises

MiB = 1 << 20
G = Geometry(16 * MiB, MiB)


def _sched(*rates: float | None) -> Scheduler:
    workers = [Worker(i, i, prior_bps=10e6, latency=0.01) for i in range(len(rates))]
    for w, r in zip(workers, rates, strict=True):
        if r is not None:
            w.bytes, w.busy = int(r), 1.0
    return Scheduler(G, [False] * G.count, workers)


def test_first_claim_is_one_piece_then_in_proportion_to_rate() -> None:
    """The first request to a copy is a single piece (the probe); later shares follow rates."""
    s = _sched(None, None)
    assert (s.next_task(0, 0.0).first, s.runs[0].end) == (0, 1)  # type: ignore[union-attr]
    s2 = _sched(30e6, 10e6)
    s2.workers[0].latency = 0.5  # a far copy: long runs pay for its latency
    run = s2.next_task(0, 0.0)
    assert run is not None and run.end - run.first == 12  # 3/4 of 16 pieces
    s3 = _sched(30e6, 10e6)  # a near copy: at most RUN_SECONDS (0.2 s) of pieces per claim
    run = s3.next_task(0, 0.0)
    assert run is not None and run.end - run.first == int(0.2 * 30e6 / MiB)


def test_fast_worker_steals_the_untouched_tail_of_a_slow_one() -> None:
    s = _sched(100e6, 1e6)
    slow = s.next_task(1, 0.0)
    assert slow is not None
    slow.end = G.count  # the slow one holds everything
    for i in range(G.count):
        s.owner[i] = slow
    s.advance(slow, MiB // 2)  # half-way into piece 0
    thief = s.next_task(0, 0.1)
    assert thief is not None and not thief.dup
    assert thief.first == 1 and thief.end == G.count  # everything but the piece in progress
    assert slow.end == 1


def test_no_steal_between_equal_workers_with_little_left() -> None:
    s = _sched(10e6, 10e6)
    a = s.next_task(0, 0.0)
    assert a is not None
    a.end = 2
    for i in range(2, G.count):
        s.done[i] = True
    s.owner[0] = s.owner[1] = a
    s.advance(a, MiB // 2)
    assert s.next_task(1, 0.1) is None  # one untouched piece: stealing would not pay


def test_endgame_duplicates_a_stuck_piece_and_the_first_to_finish_wins() -> None:
    s = _sched(50e6, None)
    stuck = s.next_task(1, 0.0)
    assert stuck is not None and stuck.end == 1
    for i in range(1, G.count):
        s.done[i] = True
    s.advance(stuck, 1000)  # a few bytes, then nothing
    s.workers[1].asked_at = 0.0
    dup = s.next_task(0, 5.0)
    assert dup is not None and dup.dup and dup.first == 0
    assert s.won(dup) and s.finished
    assert stuck.cancelled
    assert not s.advance(stuck, 2000)


def test_admission_keeps_the_nearest_class_unless_too_slow() -> None:
    # two same-zone copies at 50 MB/s; a region copy at 10 MB/s adds < 20 %: stays out
    assert admit([2, 2, 3], [50e6, 50e6, 10e6], 4, 0.2) == [0, 1]
    # a region copy at 100 MB/s: the zone copies alone are far slower: it joins
    assert admit([2, 2, 3], [50e6, 50e6, 100e6], 4, 0.2) == [0, 1, 2]
    assert admit([0, 0, 0, 0, 0], [1.0] * 5, 4, 0.2) == [0, 1, 2, 3]
    assert may_join(10e6, 10e6, 0.2) and not may_join(10e6, 2e6, 0.2)
    assert rises(0, 5) and rises(100, 110) and not rises(100, 101)


def test_origin_takes_the_tail_while_a_filling_peer_reads_the_front() -> None:
    """Boot storm: a filling peer holds a growing prefix, so it reads from the front and the
    complete copy (the origin) is asked for pieces from the end, nobody near holds those yet;
    without a filling peer both claim from the front as before."""
    s = _sched(20e6, 20e6)
    s.workers[0].filling = True
    peer, origin = s.next_task(0, 0.0), s.next_task(1, 0.0)
    assert peer is not None and origin is not None
    assert peer.first == 0 and origin.end == G.count and origin.first > peer.end
    s.workers[0].live = False  # the peer died: the origin goes back to the front
    again = _sched(20e6, 20e6)
    assert again.next_task(0, 0.0).first == 0 and again.next_task(1, 0.0).first > 0  # type: ignore[union-attr]
    s.release(origin)
    nxt = s.next_task(1, 0.1)
    assert nxt is not None and nxt.first == peer.end


def test_a_filling_peer_never_steals_the_origins_tail() -> None:
    """However fast the filling peer measured, the origin's pieces at the end are not taken
    from it (the peer does not hold them yet); a complete copy still steals from a slow one."""
    s = _sched(500e6, 1e6)
    s.workers[0].filling = True
    tail = s.next_task(1, 0.0)
    assert tail is not None
    tail.first = G.count - 6  # the slow origin holds the last six pieces
    tail.pos = G.start(tail.first)
    for i in range(tail.first, G.count):
        s.owner[i] = tail
    for i in range(G.count):
        if s.owner[i] is None and i < tail.first:
            s.done[i] = True
    s.advance(tail, G.start(tail.first) + 1)
    assert s.next_task(0, 1.0) is None
    s.workers[0].filling = False
    stolen = s.next_task(0, 1.0)
    assert stolen is not None and stolen.worker == 0
