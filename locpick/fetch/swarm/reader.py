"""One connection of a swarm fetch: it asks the scheduler for a run of pieces, reads it with
one ranged request and ``pwrite``s it into the part file (or, for an endgame duplicate, into
memory, written only if it finishes first), and reports failures for retry or drop."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from locpick.errors import LocationError, LocationUnreachable, TransferError, reason_of
from locpick.fetch.policy import FetchPolicy
from locpick.fetch.swarm.scheduler import Run, Worker
from locpick.models import Attempt
from locpick.redact import SCRUB
from locpick.transports.base import Stream

if TYPE_CHECKING:
    from locpick.fetch.swarm.run import Source, Swarm

log = logging.getLogger(__name__)

#: How often an idle connection looks for work again.
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
            n = stream.readinto(memoryview(buf)[: min(len(buf), end - pos)])
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
