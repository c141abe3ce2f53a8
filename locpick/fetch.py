"""Verified, atomic transfer from ranked locations.

Resume on the next location by Range when one breaks off, stalls or crawls; switch mid-transfer
to a much faster known location; retry transient errors with backoff; start over when bytes
turn out wrong; keep a resumable ``.part`` for a crashed run; never leave a partial ``dest``.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from locpick import swarm
from locpick.config import TransferConfig
from locpick.errors import (
    AllLocationsFailed,
    ChecksumMismatch,
    InputError,
    IntegrityError,
    LocationError,
    TransferError,
    reason_of,
)
from locpick.fetchpolicy import FetchPolicy, Timing
from locpick.filltee import Tee
from locpick.hashing import Expected
from locpick.models import Attempt, Image, Location, Result, Score
from locpick.redact import SCRUB
from locpick.sink import AtomicSink, dest_lock, open_private
from locpick.transports import Stream, Transport, Transports

log = logging.getLogger("locpick")

Progress = Callable[[int, int | None], None]
#: Called after each attempt: (location, ok, bytes, seconds, error) — feeds history.
Observer = Callable[[Location, bool, int, float, str | None], None]


def fetch(
    image: Image,
    ranked: Sequence[Score],
    dest: str | os.PathLike[str],
    transports: Transports,
    *,
    buffer_bytes: int = 4 << 20,
    file_mode: int = 0o644,
    progress: Progress | None = None,
    observer: Observer | None = None,
    transfer: TransferConfig | None = None,
    topology_tolerance: float = 0.2,
    max_bytes: int | None = None,
    timing: Timing | None = None,
    tee: Tee | None = None,
) -> Result:
    """Deliver ``image`` to ``dest`` from the first location in ``ranked`` that can (or, with
    ``[transfer] max_sources`` > 1, in pieces from several at once: ``locpick.swarm``).

    ``max_bytes`` bounds what one location may write when the record has no size; ``timing``
    replaces the clock, sleep and rng of the retry policy (tests); ``tee`` mirrors every write into
    the node cache's filling copy (``locpick.cachefill``)."""
    started = time.monotonic()
    expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
    parent = Path(dest).parent
    if not parent.is_dir():
        raise InputError(f"dest {dest}: directory {parent} does not exist")
    cfg = transfer or TransferConfig()
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
        sources = swarm.plan(image, ranked, transports, cfg)
        if sources is not None:
            return swarm.fetch(
                image, sources, dest, sink_args, cfg, tolerance=topology_tolerance,
                progress=progress, observer=observer, started=started,
            )  # fmt: skip
        swarm.discard_pieced_part(dest)
        with AtomicSink(dest, **sink_args) as sink:
            run = _Download(image, ranked, sink, transports, cfg, progress, observer, started)
            return run.run(timing or Timing())


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


@attrs.define
class _Candidate:
    """A usable location and what this download learnt about it."""

    score: Score
    failures: int = 0
    not_before: float = 0.0
    dropped: bool = False
    #: Abandoned (stall, slowness, switch): never switched *to* again, only fallen back on.
    left: bool = False

    @property
    def url(self) -> str:
        return self.score.url

    @property
    def bps(self) -> float | None:
        return self.score.reasons.throughput_bps

    @property
    def latency_ms(self) -> float | None:
        return self.score.reasons.latency_ms


class _Deadline(Exception):
    """``[transfer] total_timeout`` ran out: the whole download ends."""


class _Abandon(Exception):
    """Stop reading this stream on purpose (switch to a faster location, cheaper elsewhere)."""

    def __init__(self, message: str, target: _Candidate) -> None:
        super().__init__(message)
        self.target = target


class _Download:
    """One download's state: candidates, sink, attempts. Each step is a small method."""

    def __init__(
        self,
        image: Image,
        ranked: Sequence[Score],
        sink: AtomicSink,
        transports: Transports,
        cfg: TransferConfig,
        progress: Progress | None,
        observer: Observer | None,
        started: float,
    ) -> None:
        self.image = image
        self.sink = sink
        self.transports = transports
        self.cfg = cfg
        self.policy = FetchPolicy(cfg)
        self.timing = Timing()
        self.deadline: float | None = None
        self.progress = progress
        self.observer = observer
        self.started = started
        self.cands = [_Candidate(s) for s in ranked if s.usable]
        self.attempts: list[Attempt] = [
            Attempt(url=s.url, outcome="skipped", error=s.reasons.error)
            for s in ranked
            if not s.usable
        ]
        self.switches = 0
        #: Where the next attempt goes (the target of a switch), if still usable.
        self.preferred: _Candidate | None = None
        #: Locations that delivered bytes since the sink was last (re)started.
        self.sources: set[str] = set()

    # -- loop ------------------------------------------------------------------------------
    def run(self, timing: Timing) -> Result:
        self.timing = timing
        self.deadline = self.policy.deadline(timing.clock())
        try:
            while True:
                cand = self._pick()
                if cand is None:
                    raise self._all_failed()
                result = self._attempt(cand)
                if result is not None:
                    return result
        except _Deadline:
            raise self._all_failed(deadline=True) from None

    def _pick(self) -> _Candidate | None:
        """The location to try next (``FetchPolicy.next_attempt``); waits out its backoff."""
        now = self.timing.clock()
        preferred, self.preferred = self.preferred, None
        pick = self.policy.next_attempt(
            self.cands, None if preferred is None else self.cands.index(preferred), now
        )
        if pick is None:
            return None
        if self.deadline is not None and now + pick[1] >= self.deadline:
            raise _Deadline
        if pick[1] > 0:
            self.timing.sleep(pick[1])
        return self.cands[pick[0]]

    def _all_failed(self, deadline: bool = False) -> AllLocationsFailed:
        failed = (
            "; ".join(f"{a.url}: {a.error}" for a in self.attempts if a.outcome != "ok")
            or "no locations"
        )
        within = (
            f" within [transfer] total_timeout = {self.cfg.total_timeout:g} s" if deadline else ""
        )
        return AllLocationsFailed(
            SCRUB(
                f"image {self.image.id}: no location delivered a verified image{within} ({failed})"
            ),
            self.attempts,
        )

    # -- one attempt -----------------------------------------------------------------------
    def _attempt(self, cand: _Candidate) -> Result | None:
        loc = cand.score.location
        t0 = time.monotonic()
        before = self.sink.offset
        stream: Stream | None = None
        note: str | None
        try:
            transport = self.transports.for_location(loc)
            if transport.capabilities.system_copy:  # a shared filesystem
                note, source = self._system_copy(cand, transport), loc.display_url
                before = min(before, self.sink.offset)
            else:
                stream = self._open(cand, transport)
                note = self._align(cand, stream)
                before = min(before, self.sink.offset)
                self._pump(cand, stream)
                self._check_complete(stream)
                source = stream.final_url
                stream.close()
                stream = None
            self.sink.label = f"image {self.image.id} from {source}"
            verified = self.sink.commit()
        except _Abandon as exc:
            self._record(cand, t0, before, exc, left=True)
            self.preferred = exc.target
            return None
        except _Deadline:
            got = max(self.sink.offset - before, 0)
            error = f"total_timeout {self.cfg.total_timeout:g} s exceeded"
            self.attempts.append(Attempt(url=cand.url, outcome="failed", error=error, bytes=got))
            raise
        except IntegrityError as exc:
            self._integrity_failed(cand, t0, before, exc)
            return None
        except LocationError as exc:
            self._record(cand, t0, before, exc, left=isinstance(exc, TransferError))
            return None
        finally:
            if stream is not None:
                stream.close()
        got = self.sink.offset - before
        if note:
            log.info("%s: %s", cand.url, note)
        self.attempts.append(Attempt(url=cand.url, outcome="ok", bytes=got, note=note))
        self._observe(loc, True, got, t0, None)
        return Result(
            image_id=self.image.id,
            dest=str(self.sink.dest),
            source_url=source,
            method="copy" if loc.scheme == "file" else "download",
            bytes=self.sink.offset,
            seconds=time.monotonic() - self.started,
            verified=verified,
            attempts=tuple(self.attempts),
        )

    def _system_copy(self, cand: _Candidate, transport: Transport) -> str:
        """Let the transport copy at the fd level (it continues from ``sink.offset``)."""
        loc = cand.score.location
        self.sink.label = f"image {self.image.id} from {loc.display_url}"
        self.sources.add(cand.url)
        return f"system copy via {transport.copy_to(loc, self.image, self.sink, self.progress)}"

    def _open(self, cand: _Candidate, transport: Transport) -> Stream:
        loc = cand.score.location
        offset = self.sink.offset
        caps = transport.capabilities
        if_range = self._if_range(cand) if offset and caps.if_range else None
        if if_range:
            stream = transport.open(loc, self.image, offset=offset, if_range=if_range)
        else:
            stream = transport.open(loc, self.image, offset=offset)
        self.sink.learn_total(stream.total)
        if caps.idle_timeout:
            stream.set_idle_timeout(self._idle_timeout(cand))
        return stream

    def _if_range(self, cand: _Candidate) -> str | None:
        """A validator of the bytes held, when they came from this same URL."""
        v = self.sink.validators.get(cand.url)
        if not v:
            return None
        etag = v.get("etag")
        if etag and not etag.startswith("W/"):
            return etag
        return v.get("last_modified")

    def _idle_timeout(self, cand: _Candidate) -> float:
        """Short (stall_timeout) when another location could continue, else idle_timeout."""
        others = any(c is not cand and not c.dropped for c in self.cands)
        if others:
            return min(self.cfg.stall_timeout, self.cfg.idle_timeout)
        return self.cfg.idle_timeout

    def _align(self, cand: _Candidate, stream: Stream) -> str | None:
        """Reconcile the stream's start with the bytes held; returns a note for the attempt."""
        held = self.sink.offset
        if stream.changed:
            self.sink.reset()
            self.sources.clear()
            self._remember(cand, stream)
            return f"resource changed (If-Range failed): restarted from 0, dropped {held} bytes"
        if stream.start >= held:
            self._remember(cand, stream)
            return None
        # The server ignored Range (200, whole body): discard the first bytes, restart, or go
        # elsewhere. Network cost of discard and restart is the same (all ``held`` bytes come
        # again); restart also rewrites them, so it is only chosen when the bytes held may be
        # of another version of the resource.
        alt = self._cheaper_elsewhere(cand, held)
        if alt is not None:
            raise _Abandon(
                f"{stream.final_url}: server ignores Range; resuming the remaining bytes at "
                f"{alt.url} is cheaper than re-reading {held} bytes here",
                alt,
            )
        if self._held_matches(cand, stream):
            self._remember(cand, stream)
            return (
                f"server ignored Range: discarded {held} bytes already held "
                "(cheaper than restarting: same bytes on the wire, no rewrite)"
            )
        self.sink.reset()
        self.sources.clear()
        self._remember(cand, stream)
        return (
            f"server ignored Range: restarted from 0 (the {held} bytes held may be of "
            "another version of the resource)"
        )

    def _held_matches(self, cand: _Candidate, stream: Stream) -> bool:
        """False when the held bytes came from this URL under different validators."""
        v = self.sink.validators.get(cand.url)
        if not v:
            return True
        etag, lastmod = stream.etag, stream.last_modified
        if v.get("etag") and etag:
            return bool(v.get("etag") == etag)
        if v.get("last_modified") and lastmod:
            return bool(v.get("last_modified") == lastmod)
        return True

    def _cheaper_elsewhere(self, cand: _Candidate, held: int) -> _Candidate | None:
        size = self.image.size
        if size is None:
            return None
        i = self.policy.cheaper_elsewhere(
            self.cands, self.cands.index(cand), size, held, self.timing.clock()
        )
        return None if i is None else self.cands[i]

    def _remember(self, cand: _Candidate, stream: Stream) -> None:
        self.sources.add(cand.url)
        self.sink.remember_validators(cand.url, stream.etag, stream.last_modified)

    # -- data path -------------------------------------------------------------------------
    def _pump(self, cand: _Candidate, stream: Stream) -> None:
        """Copy the stream into the sink, watching the rate (low speed, faster elsewhere)."""
        sink = self.sink
        skip = sink.offset - stream.start
        meter = _Meter(sink.offset)
        while True:
            buf = sink.buffer()
            try:
                n = stream.readinto(memoryview(buf))
            except BaseException:
                sink.give_back(buf)
                raise
            if n == 0:
                sink.give_back(buf)
                return
            if skip:
                if n <= skip:
                    skip -= n
                    sink.give_back(buf)
                    continue
                buf[: n - skip] = buf[skip:n]
                n -= skip
                skip = 0
            sink.write(buf, n)
            if self.progress is not None:
                self.progress(sink.offset, sink.size)
            if meter.due(sink.offset):
                self._watch(cand, stream, meter)

    def _watch(self, cand: _Candidate, stream: Stream, meter: _Meter) -> None:
        """Abandon a crawling transfer, or switch to a location known to be much faster.

        This low-speed floor holds for every transport. HTTP streams also enforce their own
        (``transports/http.py`` ``_SpeedFloor``, with ``[security] min_speed_bps``), so that
        readers other than fetch, such as ``verify``, cannot be held by a dripping server.
        """
        cfg = self.cfg
        rate = meter.rate(cfg.low_speed_window)
        slow = cfg.low_speed_bps > 0 and rate < cfg.low_speed_bps
        if slow and meter.elapsed >= cfg.low_speed_window:
            raise TransferError(
                f"{stream.final_url}: too slow, {rate:.0f} B/s over "
                f"{cfg.low_speed_window:g} s (floor {cfg.low_speed_bps:.0f} B/s)",
                url=stream.final_url,
            )
        if self.deadline is not None and self.timing.clock() >= self.deadline:
            raise _Deadline
        alt = self._switch_target(cand, meter)
        if alt is not None:
            self.switches += 1
            bps = alt.score.reasons.throughput_bps or 0.0
            raise _Abandon(
                f"{stream.final_url}: switched to a faster location at byte "
                f"{self.sink.offset}: {_rate(meter.rate(2.0))} here, {alt.url} "
                f"measured {_rate(bps)}",
                alt,
            )

    def _switch_target(self, cand: _Candidate, meter: _Meter) -> _Candidate | None:
        size = self.image.size
        if size is None:
            return None
        i = self.policy.switch_target(
            self.cands, self.cands.index(cand), rate=meter.rate(2.0),
            remaining=size - self.sink.offset, elapsed=meter.elapsed,
            switches=self.switches, now=self.timing.clock(),
        )  # fmt: skip
        return None if i is None else self.cands[i]

    def _check_complete(self, stream: Stream) -> None:
        size = self.image.size if self.image.size is not None else stream.total
        if size is not None and self.sink.offset < size:
            raise TransferError(
                f"{stream.final_url}: connection ended at byte {self.sink.offset} of {size}",
                url=stream.final_url,
            )

    # -- outcomes --------------------------------------------------------------------------
    def _record(
        self, cand: _Candidate, t0: float, before: int, exc: LocationError | _Abandon, *, left: bool
    ) -> None:
        """Record a failed attempt and decide: retry later (backoff) or drop the location."""
        got = max(self.sink.offset - before, 0)
        msg = SCRUB(str(exc))
        error = SCRUB(reason_of(exc))
        self.attempts.append(Attempt(url=cand.url, outcome="failed", error=error, bytes=got))
        self._observe(cand.score.location, False, got, t0, str(exc))
        cand.left = cand.left or left
        abandoned = isinstance(exc, _Abandon)
        failed = exc if isinstance(exc, LocationError) else None
        v = self.policy.after_failure(
            cand, got=got, now=self.timing.clock(), rng=self.timing.rng, abandoned=abandoned,
            retry_after=failed.retry_after if failed else None,
            permanent=bool(failed and failed.permanent),
        )  # fmt: skip
        cand.failures, cand.not_before, cand.dropped = v.failures, v.not_before, v.dropped
        if abandoned:
            log.info("%s", msg)
        else:
            log.info("location failed (%s): %s", "dropped" if v.dropped else "will retry", msg)

    def _integrity_failed(
        self, cand: _Candidate, t0: float, before: int, exc: IntegrityError
    ) -> None:
        """Wrong bytes: start over. Blame the location only if all bytes held came from it."""
        mixed = self.sink.reused > 0 or len(self.sources - {cand.url}) > 0
        if isinstance(exc, ChecksumMismatch) and mixed:
            exc.permanent = False
        log.warning("%s", SCRUB(str(exc)))
        self._record(cand, t0, before, exc, left=False)
        self.sink.reset()
        self.sources.clear()

    def _observe(self, loc: Location, ok: bool, got: int, t0: float, error: str | None) -> None:
        if self.observer is not None:
            self.observer(loc, ok, got, time.monotonic() - t0, error)


class _Meter:
    """Offsets over time for one attempt: rate over a trailing window."""

    def __init__(self, offset: int) -> None:
        self.t0 = time.monotonic()
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(self.t0, offset)])
        self._next = self.t0 + 0.2

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def due(self, offset: int) -> bool:
        """Record a sample at most every 0.2 s; True when one was recorded."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + 0.2
        self.samples.append((now, offset))
        while len(self.samples) > 2 and now - self.samples[1][0] > 30:
            self.samples.popleft()
        return True

    def rate(self, window: float) -> float:
        """Bytes/s over the last ``window`` seconds (or since the start, if shorter)."""
        now, last = self.samples[-1]
        first_t, first = self.samples[0]
        for t, off in self.samples:
            if now - t <= window:
                first_t, first = t, off
                break
        span = now - first_t
        return (last - first) / span if span > 0 else 0.0


def _rate(bps: float) -> str:
    return f"{bps / 1e6:.1f} MB/s" if bps >= 1e5 else f"{bps / 1e3:.1f} kB/s"
