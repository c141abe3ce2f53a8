"""The single-source download loop: pick the next location (``FetchPolicy``), run one attempt
(open or system-copy, align, pump, verify and commit), and record its outcome (retry later,
drop, or start over on wrong bytes) until a location delivers or none is left."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from locpick.config.model import TransferConfig
from locpick.errors import (
    AllLocationsFailed,
    ChecksumMismatch,
    IntegrityError,
    LocationError,
    TransferError,
    reason_of,
)
from locpick.fetch.policy import FetchPolicy, Timing
from locpick.fetch.pump import pump
from locpick.fetch.resume import Resume
from locpick.fetch.state import Abandon, Candidate, Deadline
from locpick.fetch.switch import Switcher
from locpick.models import Attempt, ByteProgress, Image, Location, Result, Score
from locpick.redact import SCRUB
from locpick.sink.atomic import AtomicSink
from locpick.transports import Transports
from locpick.transports.base import Stream, Transport

log = logging.getLogger(__name__)

#: Called after each attempt: (location, ok, bytes, seconds, error) — feeds history.
Observer = Callable[[Location, bool, int, float, str | None], None]


class Download:
    """One download's state: candidates, sink, attempts. Each step is a small method."""

    def __init__(
        self,
        image: Image,
        ranked: Sequence[Score],
        sink: AtomicSink,
        transports: Transports,
        cfg: TransferConfig,
        progress: ByteProgress | None,
        observer: Observer | None,
        started: float,
        timing: Timing,
    ) -> None:
        self.image = image
        self.sink = sink
        self.transports = transports
        self.cfg = cfg
        self.policy = FetchPolicy(cfg)
        self.timing = timing
        self.progress = progress
        self.observer = observer
        self.started = started
        self.cands = [Candidate(s) for s in ranked if s.usable]
        self.attempts: list[Attempt] = [
            Attempt(url=s.url, outcome="skipped", error=s.reasons.error)
            for s in ranked
            if not s.usable
        ]
        #: Where the next attempt goes (the target of a switch), if still usable.
        self.preferred: Candidate | None = None
        deadline = self.policy.deadline(timing.clock())
        self.switcher = Switcher(self.policy, self.cands, image.size, timing, deadline)
        self.resume = Resume(sink, self.switcher.cheaper_elsewhere)

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> Result:
        try:
            while True:
                cand = self._pick()
                if cand is None:
                    raise self._all_failed()
                result = self._attempt(cand)
                if result is not None:
                    return result
        except Deadline:
            raise self._all_failed(deadline=True) from None

    def _pick(self) -> Candidate | None:
        """The location to try next (``FetchPolicy.next_attempt``); waits out its backoff."""
        now = self.timing.clock()
        preferred, self.preferred = self.preferred, None
        pick = self.policy.next_attempt(
            self.cands, None if preferred is None else self.cands.index(preferred), now
        )
        if pick is None:
            return None
        self.switcher.check_deadline(now + pick[1])
        if pick[1] > 0:
            self.timing.sleep(pick[1])
        return self.cands[pick[0]]

    def _all_failed(self, deadline: bool = False) -> AllLocationsFailed:
        return all_failed(self.image.id, self.attempts, self.cfg, deadline=deadline)

    # -- one attempt -----------------------------------------------------------------------
    def _attempt(self, cand: Candidate) -> Result | None:
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
                note = self.resume.align(cand, stream)
                before = min(before, self.sink.offset)
                opened = stream
                pump(
                    self.sink, opened, self.progress,
                    lambda meter: self.switcher.watch(cand, opened, meter, self.sink.offset),
                )  # fmt: skip
                check_complete(stream, self.image.size, self.sink.offset)
                source = stream.final_url
                stream.close()
                stream = None
            self.sink.label = f"image {self.image.id} from {source}"
            verified = self.sink.commit()
        except Abandon as exc:
            self._record(cand, t0, before, exc, left=True)
            self.preferred = exc.target
            return None
        except Deadline:
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

    def _system_copy(self, cand: Candidate, transport: Transport) -> str:
        """Let the transport copy at the fd level (it continues from ``sink.offset``)."""
        loc = cand.score.location
        self.sink.label = f"image {self.image.id} from {loc.display_url}"
        self.resume.remember(cand)
        return f"system copy via {transport.copy_to(loc, self.image, self.sink, self.progress)}"

    def _open(self, cand: Candidate, transport: Transport) -> Stream:
        loc = cand.score.location
        offset = self.sink.offset
        caps = transport.capabilities
        if_range = self.resume.if_range(cand) if offset and caps.if_range else None
        if if_range:
            stream = transport.open(loc, self.image, offset=offset, if_range=if_range)
        else:
            stream = transport.open(loc, self.image, offset=offset)
        self.sink.learn_total(stream.total)
        if caps.idle_timeout:
            stream.set_idle_timeout(self._idle_timeout(cand))
        return stream

    def _idle_timeout(self, cand: Candidate) -> float:
        """Short (stall_timeout) when another location could continue, else idle_timeout."""
        others = any(c is not cand and not c.dropped for c in self.cands)
        if others:
            return min(self.cfg.stall_timeout, self.cfg.idle_timeout)
        return self.cfg.idle_timeout

    # -- outcomes --------------------------------------------------------------------------
    def _record(
        self, cand: Candidate, t0: float, before: int, exc: LocationError | Abandon, *, left: bool
    ) -> None:
        """Record a failed attempt and decide: retry later (backoff) or drop the location."""
        got = max(self.sink.offset - before, 0)
        msg = SCRUB(str(exc))
        error = SCRUB(reason_of(exc))
        self.attempts.append(Attempt(url=cand.url, outcome="failed", error=error, bytes=got))
        self._observe(cand.score.location, False, got, t0, str(exc))
        cand.left = cand.left or left
        abandoned = isinstance(exc, Abandon)
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
        self, cand: Candidate, t0: float, before: int, exc: IntegrityError
    ) -> None:
        """Wrong bytes: start over. Blame the location only if all bytes held came from it."""
        mixed = self.sink.reused > 0 or len(self.resume.sources - {cand.url}) > 0
        if isinstance(exc, ChecksumMismatch) and mixed:
            exc.permanent = False
        log.warning("%s", SCRUB(str(exc)))
        self._record(cand, t0, before, exc, left=False)
        self.resume.restart()

    def _observe(self, loc: Location, ok: bool, got: int, t0: float, error: str | None) -> None:
        if self.observer is not None:
            self.observer(loc, ok, got, time.monotonic() - t0, error)


def all_failed(
    image_id: str, attempts: Sequence[Attempt], cfg: TransferConfig, *, deadline: bool
) -> AllLocationsFailed:
    """The error of a download no location could complete, listing every failed attempt."""
    failed = "; ".join(f"{a.url}: {a.error}" for a in attempts if a.outcome != "ok")
    within = f" within [transfer] total_timeout = {cfg.total_timeout:g} s" if deadline else ""
    return AllLocationsFailed(
        SCRUB(
            f"image {image_id}: no location delivered a verified image{within} "
            f"({failed or 'no locations'})"
        ),
        attempts,
    )


def check_complete(stream: Stream, size: int | None, held: int) -> None:
    """TransferError when the stream ended before the image's (or the resource's) size."""
    size = size if size is not None else stream.total
    if size is not None and held < size:
        raise TransferError(
            f"{stream.final_url}: connection ended at byte {held} of {size}", url=stream.final_url
        )
