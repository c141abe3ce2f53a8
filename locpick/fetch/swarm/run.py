"""The threads of a swarm fetch: one per connection, each reading its runs of pieces into the
part file with pwrite, a hash following the written prefix, and a coordinator (the calling
thread) that admits locations, gives up on silent ones, reports progress, honours the cancel
event and ``[transfer] total_timeout``, and ends the fetch. Decisions come from ``scheduler``.

A single copy is a swarm of one: it claims every missing piece with one request (the first
bytes are its probe); a copy that ignores Range serves the whole body, its head discarded."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from locpick.choose.peer import filling_since
from locpick.choose.score import CLASSES
from locpick.config.model import TransferConfig
from locpick.errors import (
    AllLocationsFailed,
    Cancelled,
    LocationError,
    LocationUnreachable,
    TransferError,
    reason_of,
)
from locpick.fetch.policy import FetchPolicy, Observer, Timing
from locpick.fetch.swarm.ordered_hash import OrderedHasher
from locpick.fetch.swarm.partfile import SwarmSink
from locpick.fetch.swarm.scheduler import Run, Scheduler, Worker, admit, may_join, rises
from locpick.models import Attempt, ByteProgress, Image, Score, SourceShare
from locpick.redact import SCRUB
from locpick.sink.check import disk_error
from locpick.transports.base import Stream, Transport

log = logging.getLogger(__name__)

#: How often an idle connection looks for work again, and the coordinator at rates
#: (admission, silent locations).
TICK = 0.1


class Connection:
    """The loop of one connection (a thread) to one location."""

    def __init__(self, swarm: Swarm, worker: Worker, source: Source) -> None:
        self.swarm = swarm
        self.w = worker
        self.src = source

    def run(self) -> None:
        """The thread: ask for a run, read it, until closed or the location is dropped."""
        sw, w, src = self.swarm, self.w, self.src
        while True:
            with sw.lock:
                if sw.closed or not w.live:
                    return
                now = sw.clock()
                ready = src.not_before <= now and sw.takes_part(src)
                run = sw.sched.next_task(w.id, now) if ready else None
                if run is None:
                    sw.lock.wait(TICK)
                    continue
                w.asked_at, w.answered = now, False
                log.debug(
                    "swarm: %s pieces %d-%d%s", src.url, run.first, run.end - 1,
                    " (endgame duplicate)" if run.dup else "",
                )  # fmt: skip
            try:
                self._fetch(run)
            except LocationError as exc:
                self._failed(run, exc)
            except BaseException as exc:  # noqa: BLE001 - the disk (pwrite) or a bug: re-raised by the coordinator
                with sw.lock:
                    if sw.fatal is None:
                        sw.fatal = exc
                    w.live = False
                return
            finally:
                with sw.lock:
                    sw.sched.release(run)
                    w.asked_at = None
                    sw.lock.notify_all()

    def _fetch(self, run: Run) -> int:
        """Read ``run``'s pieces with one ranged request; returns the bytes delivered."""
        sw, w, src = self.swarm, self.w, self.src
        t0 = sw.clock()
        end = sw.g.end(run.end - 1)
        if src.bounded:
            stream = src.transport.open(src.score.location, sw.image, offset=run.pos, end=end)
        else:  # the object from run.pos to its end; cut off once the run is done
            stream = src.transport.open(src.score.location, sw.image, offset=run.pos)
        src.final_url = stream.final_url
        try:
            with sw.lock:
                w.latency = sw.clock() - t0
                w.answered = True
                src.ttfb = w.latency if src.ttfb is None else min(src.ttfb, w.latency)
            skip = run.pos - stream.start
            if skip and (stream.start > run.pos or not self._only_one()):
                raise TransferError(
                    f"{stream.final_url}: ignores Range (asked for byte {run.pos}, got "
                    f"{stream.start}): not usable for pieces while other copies are",
                    url=stream.final_url,
                    permanent=True,
                )
            if skip:
                log.info(
                    "%s: server ignored Range: discarding the %d bytes already held",
                    stream.final_url, skip,
                )  # fmt: skip
                _discard(stream, skip, sw.buffer(), sw.pool.put)
            if src.transport.capabilities.idle_timeout:
                stream.set_idle_timeout(min(sw.cfg.stall_timeout, sw.cfg.idle_timeout))
            # rates count from the response headers on: the wait for them is the latency
            t1 = sw.clock()
            if run.dup:
                return self._read_dup(run, stream, t1)
            return self._read_run(run, stream, t1)
        finally:
            stream.close()

    def _only_one(self) -> bool:
        """No other copy could serve these pieces (so a whole body is worth reading)."""
        sw = self.swarm
        with sw.lock:
            return all(s.dead or s is self.src for s in sw.sources)

    def _read_run(self, run: Run, stream: Stream, t0: float) -> int:
        sw, w, src = self.swarm, self.w, self.src
        pos, last, got = run.pos, t0, 0
        assert sw.hasher is not None
        while True:
            with sw.lock:
                end = sw.g.end(run.end - 1) if run.end > run.first else pos
            if pos >= end or run.cancelled:
                return got
            buf = sw.buffer()
            try:
                n = stream.readinto(memoryview(buf)[: min(len(buf), end - pos)])
            except BaseException:  # a broken connection must not keep a buffer from the pool
                sw.pool.put(buf)
                raise
            if n == 0:
                sw.pool.put(buf)
                raise TransferError(
                    f"{stream.final_url}: connection ended at byte {pos} (piece run to {end})",
                    url=stream.final_url,
                )
            with sw.wlock:
                if sw.closed or run.cancelled:
                    sw.pool.put(buf)
                    return got
                _pwrite(sw.fd, memoryview(buf)[:n], pos)
                if sw.sink.tee is not None:  # marked when its pieces are complete (below)
                    sw.sink.tee.write(memoryview(buf)[:n], pos, mark=False)
                sw.hasher.offer(pos, buf, n, sw.pool.put)
            pos += n
            got += n
            if got >= sw.cfg.progress_bytes:
                src.failures = 0  # progress resets the retry budget
            now = sw.clock()
            with sw.lock:
                w.bytes += n
                w.busy += now - last
                src.received += n
                src.busy += now - last
                first = run.first
                go = sw.sched.advance(run, pos)
                if run.first != first:
                    done_to = min(sw.g.start(run.first), sw.g.size)
                    src.bytes += done_to - sw.g.start(first)
                    sw.save(now)
                    if sw.sink.tee is not None:
                        sw.sink.tee.mark(sw.g.start(first), done_to)
            last = now
            if not go:
                return got

    def _read_dup(self, run: Run, stream: Stream, t0: float) -> int:
        """An endgame duplicate: read the piece to memory; write it only if first."""
        sw, w, src = self.swarm, self.w, self.src
        assert sw.hasher is not None
        length = sw.g.length(run.first)
        buf = bytearray(length)
        view, got, last = memoryview(buf), 0, t0
        while got < length:
            if run.cancelled or sw.closed:
                return got
            n = stream.readinto(view[got : min(length, got + (4 << 20))])
            if n == 0:
                raise TransferError(f"{stream.final_url}: connection ended", url=stream.final_url)
            got += n
            now = sw.clock()
            with sw.lock:
                w.bytes += n
                w.busy += now - last
            last = now
        with sw.lock:
            won = sw.sched.won(run)
            src.received += got
            src.busy += sw.clock() - t0
            if won:
                src.bytes += length
                sw.save(sw.clock())
        if won:
            with sw.wlock:
                if not sw.closed:
                    _pwrite(sw.fd, view, sw.g.start(run.first))
                    if sw.sink.tee is not None:
                        sw.sink.tee.write(view, sw.g.start(run.first))
                    sw.hasher.offer(sw.g.start(run.first), buf, length, None)
            log.info("%s: endgame duplicate of piece %d won", src.url, run.first)
            with sw.lock:
                sw.lock.notify_all()
        return got

    def _failed(self, run: Run, exc: LocationError) -> None:
        sw, w, src = self.swarm, self.w, self.src
        error = SCRUB(reason_of(exc))
        now = sw.clock()
        with sw.lock:
            if src.dead or sw.closed:
                return
            retry_after = exc.retry_after
            too_long = retry_after is not None and retry_after > sw.cfg.retry_after_max
            # no response at all while other copies answer: one attempt is enough
            silent = isinstance(exc, LocationUnreachable) and exc.status is None
            # (or none answered yet but another copy can go on: a black hole is not retried)
            others = any(not s.dead and s is not src for s in sw.sources)
            never = silent and not w.answered and (others or any(x.answered for x in sw.workers))
            if exc.permanent or too_long or never:
                sw.drop_source(src, error, src.received, now - (w.asked_at or now))
                return
            src.failures += 1
            if src.failures > sw.cfg.retries:
                sw.drop_source(src, error, src.received, now - (w.asked_at or now))
                return
            # history hears of a copy once per download (dropped, or delivered), not per retry
            sw.attempts.append(Attempt(url=src.url, outcome="failed", error=error))
            delay = FetchPolicy(sw.cfg).delay(src.failures, retry_after, sw.timing.rng)
            src.not_before = now + delay
            log.info("%s: will retry (%s)", src.url, SCRUB(str(exc)))


def _discard(stream: Stream, n: int, buf: bytearray, release: Callable[[bytearray], None]) -> None:
    """Read and drop the first ``n`` bytes of ``stream`` (a server that ignored Range)."""
    try:
        view = memoryview(buf)
        while n > 0:
            got = stream.readinto(view[: min(len(buf), n)])
            if got == 0:
                raise TransferError(
                    f"{stream.final_url}: connection ended before the bytes wanted",
                    url=stream.final_url,
                )
            n -= got
    finally:
        release(buf)


def _pwrite(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


#: A location that sent no response headers this many times slower than the slowest that did
#: (and at least MIN_HEADER_WAIT s) is given up when nothing else is left.
HEADER_FACTOR = 4.0
MIN_HEADER_WAIT = 1.0


def silent_limit(sources: Sequence[Source]) -> float:
    """Seconds a location may take to send its response headers."""
    answered = [s.ttfb for s in sources if s.ttfb is not None]
    return max(MIN_HEADER_WAIT, HEADER_FACTOR * max(answered, default=0.0))


def holding_slots(workers: Sequence[Worker], limit: float, now: float) -> set[int]:
    """Sources that hold a slot: live, and answered or still within the header deadline."""
    return {
        w.source
        for w in workers
        if w.live and (w.answered or w.asked_at is None or now - w.asked_at <= limit)
    }


def overdue(
    sources: Sequence[Source], workers: Sequence[Worker], now: float
) -> Iterator[tuple[Worker, str, float]]:
    """(worker, reason, seconds waited) of each connection past the header deadline (none
    before any location answered); lazily, so a caller dropping one source is seen by the
    next check. Three times as patient while another connection is receiving."""
    answered = [s.ttfb for s in sources if s.ttfb is not None]
    if not answered:
        return
    limit = max(MIN_HEADER_WAIT, HEADER_FACTOR * max(answered))
    receiving = any(w.live and w.answered for w in workers)
    for w in workers:
        if not w.live or w.answered or w.asked_at is None:
            continue
        waited = now - w.asked_at
        if waited > limit and (not receiving or waited > 3 * limit):
            yield (
                w,
                f"no response headers within {limit:.1f}s (the others answered within "
                f"{max(answered):.2f}s)",
                waited,
            )


__all__ = ["JOIN_EVERY", "TICK", "Source", "Swarm", "prior_bps"]


#: Seconds between two locations joining a running swarm.
JOIN_EVERY = 0.25


@attrs.define(eq=False)
class Source:
    """One location taking part, and its outcome so far."""

    index: int
    score: Score
    #: Declares ``capabilities.bounded_ranges``: ``open(..., end=)`` asks for a piece only.
    transport: Transport
    topology: int
    #: ``transport.capabilities.bounded_ranges``: a piece is asked with ``end``; else the
    #: request runs to the end of the object and is cut off when the run is done.
    bounded: bool = True
    failures: int = 0
    not_before: float = 0.0
    dead: bool = False
    #: Bytes of the pieces it completed (that are in the file), and all bytes it sent.
    bytes: int = 0
    received: int = 0
    busy: float = 0.0
    #: Seconds to the response headers, when it ever answered.
    ttfb: float | None = None
    why: str | None = None
    #: Why a copy of a farther topology class was drawn on (for the report and ``--json``).
    joined: str | None = None
    #: Glance's own ``/file``: drawn on only when every other copy has dropped out.
    last_resort: bool = False
    #: The URL that answered its last request (after redirects): what served the bytes.
    final_url: str | None = None

    @property
    def url(self) -> str:
        return self.score.url


class Swarm:
    """One swarm fetch into ``sink`` from ``sources`` (ranked, best first)."""

    def __init__(
        self,
        image: Image,
        sources: Sequence[Source],
        sink: SwarmSink,
        cfg: TransferConfig,
        tolerance: float,
        progress: ByteProgress | None,
        observer: Observer | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        timing: Timing | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> None:
        """``cancel``: set by the caller to end the fetch (``Cancelled``); ``deadline``: the
        ``clock()`` value past which it ends (``[transfer] total_timeout``); ``progress`` is
        called from the coordinator (the calling thread) only, with a growing count."""
        self.image = image
        self.sources = list(sources)
        self.sink = sink
        self.cfg = cfg
        self.tolerance = tolerance
        self.progress = progress
        self.observer = observer
        #: The clock, the sleep of a backoff every connection waits out, and the backoff rng
        #: (``timing`` overrides ``clock``; fakes in tests).
        self.timing = timing or Timing(clock=clock)
        self.clock = self.timing.clock
        self.g = sink.pieces.geometry
        self.lock = threading.Condition()
        self.wlock = threading.Lock()
        self.closed = False
        self.attempts: list[Attempt] = []
        self.workers: list[Worker] = []
        self.sched = Scheduler(self.g, sink.pieces.done, [])
        self.admitted: list[Source] = []
        self.last_join_bps = 0.0
        self.last_join = self.clock()
        self.sample: tuple[float, int] = (self.clock(), 0)
        self.pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self.allocated = 0
        self.hasher: OrderedHasher | None = None
        self.fd = -1
        self.cancel = cancel
        self.deadline = deadline
        #: Whole-image mode (a hash failure comparison could not explain): only this source
        #: is read, so its bytes alone are judged.
        self.solo: Source | None = None
        self.reported = -1
        self.timed_out = False
        #: What ended a connection thread other than its location (a full disk): re-raised
        #: by the coordinator.
        self.fatal: BaseException | None = None

    # -- the whole fetch ----------------------------------------------------------------------
    def fill(self, fd: int, prefix_hasher: Any) -> Any:
        """SwarmSink filler: fetch every missing piece; returns the hash of the whole file.
        Called again after ``restart`` (the connections stay, a silent one keeps waiting)."""
        self.fd = fd
        start = self.sink.offset
        with self.wlock:
            tee = self.sink.tee
            self.hasher = OrderedHasher(
                prefix_hasher, fd, start, tee.hashed_to if tee is not None else None
            )
        for i, done in enumerate(self.sched.done):
            if done and self.g.end(i) > start:
                self.hasher.note(self.g.start(i), self.g.length(i))
        with self.lock:
            self._update_alone()
            if self.solo is not None:
                if self.solo not in self.admitted:
                    self._admit(self.solo)
            elif not self.admitted:
                live = [s for s in self.sources if not s.dead and not s.last_resort]
                live = live or [s for s in self.sources if not s.dead]
                bps = [prior_bps(s.score) for s in live]
                measured = [s.score.reasons.throughput_bps is not None for s in live]
                first = admit(
                    [s.topology for s in live], bps, self.cfg.max_sources, self.tolerance,
                    measured,
                )  # fmt: skip
                near = min((live[i].topology for i in first), default=0)
                for i in first:
                    if live[i].topology > near:
                        live[i].joined = (
                            f"farther than {CLASSES[min(near, len(CLASSES) - 1)]}: drawn on "
                            f"from the start, the nearer copies measured more than "
                            f"{self.tolerance:.0%} slower without it"
                        )
                    self._admit(live[i])
        self._coordinate()
        return self.hasher.finish()

    def set_solo(self, src: Source | None) -> None:
        """Read every piece from ``src`` alone (None: back to the swarm)."""
        with self.lock:
            self.solo = src
            self._update_alone()
            self.lock.notify_all()

    def _update_alone(self) -> None:
        """A connection with nobody to share with claims every missing piece at once."""
        live = {s.index for s in self.sources if not s.dead}
        self.sched.alone = self.solo is not None or (
            min(len(live), self.cfg.max_sources) == 1 and self.cfg.connections_per_source <= 1
        )

    def takes_part(self, src: Source) -> bool:
        """Whether ``src``'s connections may take pieces now (all, or the solo source)."""
        return self.solo is None or self.solo is src

    def restart(self) -> None:
        """Every piece again (after the file was truncated): runs in flight are cut off."""
        with self.lock, self.wlock:
            for run in self.sched.runs.values():
                run.cancelled = True
            self.sched.reopen(range(self.g.count))
            for src in self.sources:
                src.bytes = 0
            self.lock.notify_all()

    def close(self) -> None:
        """No byte is written any more; the connections end as soon as they notice."""
        with self.wlock:
            self.closed = True
        with self.lock:
            self.lock.notify_all()

    def _coordinate(self) -> None:
        with self.lock:
            while not self.sched.finished:
                self.lock.wait(TICK)
                now = self.clock()
                self.check_stop(now)
                self._wait_out_backoff(now)
                self._give_up_silent(now)
                self._maybe_join(now)
                if not any(w.live for w in self.workers if self.takes_part(self._src(w))):
                    self._admit_next()
                    if not any(w.live for w in self.workers if self.takes_part(self._src(w))):
                        raise self.all_failed()
                self._report()
        assert self.hasher is not None
        log.debug("swarm: last piece in (hash at %d)", self.hasher.frontier)
        while not self.hasher.wait_for(self.g.size, TICK):
            self.check_stop(self.clock())
        self._report()

    def _wait_out_backoff(self, now: float) -> None:
        """Every live copy waits out a backoff and nothing is in flight: sleep until the first
        may retry (``timing.sleep``: a fake clock advances), or end now if that is past the
        deadline (the attempt is not made, nor slept for)."""
        live = [s for s in self.admitted if not s.dead and self.takes_part(s)]
        if not live or self.sched.runs or any(s.not_before <= now for s in live):
            return
        wake = min(s.not_before for s in live)
        if self.deadline is not None and wake >= self.deadline:
            self.timed_out = True
            raise self.all_failed(deadline=True)
        self.lock.release()
        try:
            # a real sleep in ticks (cancel and the deadline stay responsive); a fake one
            # (tests) is given the whole wait at once
            real = self.timing.sleep is time.sleep
            self.timing.sleep(min(wake - now, TICK) if real else wake - now)
        finally:
            self.lock.acquire()

    def _src(self, w: Worker) -> Source:
        return self.sources[w.source]

    def _report(self) -> None:
        """Progress, from this (the calling) thread only, never going backwards."""
        if self.progress is None:
            return
        done = self.g.size - self.sched.missing_bytes()
        if done > self.reported:
            self.reported = done
            self.progress(done, self.g.size)

    def check_stop(self, now: float) -> None:
        """Raise when the caller cancelled or ``[transfer] total_timeout`` ran out."""
        if self.fatal is not None:
            fatal, self.fatal = self.fatal, None
            if isinstance(fatal, OSError):
                sink = self.sink
                raise disk_error(fatal, sink.dest, sink.label, sink.size, sink.offset) from fatal
            raise fatal
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(
                f"image {self.image.id}: download cancelled; the part file is kept for resume"
            )
        if self.deadline is not None and now >= self.deadline:
            self.timed_out = True
            raise self.all_failed(deadline=True)

    def all_failed(self, *, deadline: bool = False) -> AllLocationsFailed:
        attempts = list(self.attempts)
        if deadline:
            error = f"total_timeout {self.cfg.total_timeout:g} s exceeded"
            busy = {self.workers[wid].source for wid in self.sched.runs}
            for src in self.admitted:
                if not src.dead and src.index in busy:  # cut off mid-transfer
                    attempts.append(
                        Attempt(url=src.url, outcome="failed", error=error, bytes=src.received)
                    )
        failed = "; ".join(f"{a.url}: {a.error}" for a in attempts if a.outcome != "ok")
        within = (
            f" within [transfer] total_timeout = {self.cfg.total_timeout:g} s" if deadline else ""
        )
        return AllLocationsFailed(
            SCRUB(
                f"image {self.image.id}: no location delivered a verified image{within} "
                f"({failed or 'no locations'})"
            ),
            attempts,
        )

    # -- admission ----------------------------------------------------------------------------
    def _admit(self, src: Source) -> None:
        log.debug("swarm: %s joins", src.url)
        self.admitted.append(src)
        self.last_join = self.clock()
        self.last_join_bps = self._aggregate()
        for _ in range(max(1, self.cfg.connections_per_source)):
            w = Worker(len(self.workers), src.index, prior_bps(src.score), _latency(src.score))
            w.filling = filling_since(src.score.location.metadata) is not None
            w.topology = src.topology
            self.workers.append(w)
            self.sched.workers[w.id] = w
            conn = Connection(self, w, src)
            threading.Thread(target=conn.run, name=f"locpick-swarm-{w.id}", daemon=True).start()

    def _reserve(self) -> list[Source]:
        """Copies that may still join, in rank order; a last resort (Glance's own ``/file``)
        only once every other copy has dropped out."""
        waiting = [s for s in self.sources if s not in self.admitted and not s.dead]
        if any(not s.last_resort for s in self.sources if not s.dead):
            return [s for s in waiting if not s.last_resort]
        return waiting

    def _admit_next(self) -> None:
        """A location dropped out: the next one in rank order takes its place (in whole-image
        mode, the next live one becomes the solo source)."""
        self._update_alone()
        if self.solo is not None:
            if self.solo.dead:
                nxt = next((s for s in self.sources if not s.dead), None)
                if nxt is not None:
                    self.solo = nxt
                    if nxt not in self.admitted:
                        self._admit(nxt)
            return
        live = holding_slots(self.workers, silent_limit(self.sources), self.clock())
        if len(live) < self.cfg.max_sources and not self.sched.finished:
            for src in self._reserve():
                self._admit(src)
                return

    def _maybe_join(self, now: float) -> None:
        """Another location joins while the aggregate rate still rises and topology allows;
        a copy that has not answered within the scaled header deadline does not hold a slot."""
        if now - self.last_join < JOIN_EVERY or self.solo is not None:
            return
        reserve = self._reserve()
        limit = silent_limit(self.sources)
        if not reserve or len(holding_slots(self.workers, limit, now)) >= self.cfg.max_sources:
            return
        last = self.admitted[-1] if self.admitted else None
        if last is not None and last.ttfb is None and now - self.last_join < limit:
            return  # wait to see what the last one brings
        agg = self._aggregate()
        if last is not None and last.ttfb is not None and not rises(self.last_join_bps, agg):
            return
        cand = reserve[0]
        near = min((s.topology for s in self.admitted if not s.dead), default=cand.topology)
        if cand.topology > near:
            if not may_join(agg, prior_bps(cand.score), self.tolerance):
                return
            cand.joined = (
                f"farther than {CLASSES[min(near, len(CLASSES) - 1)]}: joined as the nearer "
                f"copies delivered {agg / 1e6:.1f} MB/s, expected more than "
                f"{self.tolerance:.0%} slower without it"
            )
        self._admit(cand)

    def _aggregate(self) -> float:
        now = self.clock()
        total = sum(w.bytes for w in self.workers)
        t0, b0 = self.sample
        self.sample = (now, total)
        return (total - b0) / (now - t0) if now > t0 else 0.0

    def _give_up_silent(self, now: float) -> None:
        """Locations that never answered get one header deadline scaled to those that did."""
        for w, error, waited in overdue(self.sources, self.workers, now):
            self.drop_source(self.sources[w.source], error, 0, waited)

    def drop_source(self, src: Source, error: str, got: int, secs: float) -> None:
        src.dead = True
        src.why = error
        for w in self.workers:
            if w.source == src.index:
                w.live = False
        self.attempts.append(Attempt(url=src.url, outcome="failed", error=error, bytes=got))
        if self.observer is not None:
            self.observer(src.score.location, False, got, secs, error)
        log.info("%s: dropped (%s)", src.url, error)
        self._admit_next()

    # -- one connection -----------------------------------------------------------------------
    def save(self, now: float) -> None:
        """Persist the piece map (throttled); called under the lock when pieces completed."""
        self.sink.pieces.done = list(self.sched.done)
        self.sink.pieces.save(now)
        self.lock.notify_all()

    def buffer(self) -> bytearray:
        try:
            return self.pool.get_nowait()
        except queue.Empty:
            with self.lock:
                grow = self.allocated < 2 * len(self.workers) + 2
                if grow:
                    self.allocated += 1
            if grow:
                return bytearray(self.cfg.buffer_bytes)
        while True:  # all in use: wait for one, but never past the swarm's end
            try:
                return self.pool.get(timeout=TICK)
            except queue.Empty:
                if self.closed:  # the reader sees ``closed`` next and writes nothing
                    return bytearray(self.cfg.buffer_bytes)

    # -- result -------------------------------------------------------------------------------
    def shares(self) -> tuple[SourceShare, ...]:
        out = [
            SourceShare(url=s.url, bytes=s.bytes, rate_bps=s.received / s.busy if s.busy else None)
            for s in self.sources
            if s.bytes
        ]
        return tuple(sorted(out, key=lambda s: -s.bytes))


def prior_bps(score: Score) -> float:
    return score.reasons.throughput_bps or 50e6


def _latency(score: Score) -> float:
    ms = score.reasons.latency_ms
    return ms / 1000 if ms is not None else 0.05
