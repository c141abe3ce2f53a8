"""A one-piece swarm: the image whose size nobody knows, read whole from one copy at a time.

Without a size there are no pieces to share out, so the engine reads one stream to its end
into an :class:`~locpick.sink.atomic.AtomicSink` (which bounds the writes by the first
Content-Length and ``max_bytes``), with the same rules as the swarm: ``FetchPolicy`` retry and
backoff, the cancel event, ``[transfer] total_timeout`` and progress from the calling thread.
A copy that fails (or sends wrong bytes) is left for the next, from byte 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from locpick.config.model import TransferConfig
from locpick.errors import (
    AllLocationsFailed,
    Cancelled,
    IntegrityError,
    LocationError,
    TransferError,
    reason_of,
)
from locpick.fetch.policy import FetchPolicy, Observer, Timing
from locpick.fetch.swarm.run import Source
from locpick.models import Attempt, ByteProgress, Image, Result
from locpick.redact import SCRUB
from locpick.sink.atomic import AtomicSink

log = logging.getLogger(__name__)


class _Slot:
    """A source as ``FetchPolicy`` sees it."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.failures = 0
        self.not_before = 0.0
        self.dropped = False
        self.left = False
        self.bps = src.score.reasons.throughput_bps
        self.latency_ms = src.score.reasons.latency_ms


def fetch_whole(
    image: Image,
    sources: Sequence[Source],
    sink: AtomicSink,
    cfg: TransferConfig,
    *,
    progress: ByteProgress | None,
    observer: Observer | None,
    started: float,
    timing: Timing,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> Result:
    """Read ``image`` whole from the first of ``sources`` that delivers it, verified."""
    policy = FetchPolicy(cfg)
    slots = [_Slot(s) for s in sources]
    attempts: list[Attempt] = []

    def stop() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"image {image.id}: download cancelled")
        if deadline is not None and timing.clock() >= deadline:
            within = f" within [transfer] total_timeout = {cfg.total_timeout:g} s"
            raise _failed(image, attempts, cfg, within)

    while True:
        stop()
        pick = policy.next_attempt(slots, None, timing.clock())
        if pick is None:
            raise _failed(image, attempts, cfg, "")
        slot = slots[pick[0]]
        wait_until = timing.clock() + pick[1]
        while timing.clock() < wait_until:
            stop()
            timing.sleep(min(0.1, wait_until - timing.clock()))
        src, t0 = slot.src, time.monotonic()
        try:
            stream = src.transport.open(src.score.location, image, offset=0)
            try:
                sink.learn_total(stream.total)
                if src.transport.capabilities.idle_timeout:
                    stream.set_idle_timeout(cfg.idle_timeout)
                while True:
                    stop()
                    buf = sink.buffer()
                    try:
                        n = stream.readinto(memoryview(buf))
                    except BaseException:  # a broken connection keeps no buffer from the pool
                        sink.give_back(buf)
                        raise
                    if n == 0:
                        sink.give_back(buf)
                        break
                    sink.write(buf, n)
                    if progress is not None:
                        progress(sink.offset, sink.size)
                total = stream.total
                if total is not None and sink.offset < total:
                    raise TransferError(
                        f"{stream.final_url}: connection ended at byte {sink.offset} of {total}",
                        url=stream.final_url,
                    )
                final = stream.final_url
            finally:
                stream.close()
            sink.label = f"image {image.id} from {final}"
            verified = sink.commit()
        except LocationError as exc:
            got = sink.offset
            error = SCRUB(reason_of(exc))
            attempts.append(Attempt(url=src.url, outcome="failed", error=error, bytes=got))
            if observer is not None:
                observer(src.score.location, False, got, time.monotonic() - t0, str(exc))
            v = policy.after_failure(
                slot, got=got, now=timing.clock(), rng=timing.rng,
                retry_after=exc.retry_after,
                permanent=exc.permanent or isinstance(exc, IntegrityError),
            )  # fmt: skip
            slot.failures, slot.not_before, slot.dropped = v.failures, v.not_before, v.dropped
            log.info("%s: failed (%s): %s", src.url, "dropped" if v.dropped else "retry", error)
            sink.reset()  # no size: nothing to resume against
            continue
        got = sink.offset
        attempts.append(Attempt(url=src.url, outcome="ok", bytes=got))
        if observer is not None:
            observer(src.score.location, True, got, time.monotonic() - t0, None)
        return Result(
            image_id=image.id,
            dest=str(sink.dest),
            source_url=final,
            method="download",
            bytes=got,
            seconds=time.monotonic() - started,
            verified=verified,
            attempts=tuple(attempts),
        )


def _failed(
    image: Image, attempts: Sequence[Attempt], cfg: TransferConfig, within: str
) -> AllLocationsFailed:
    failed = "; ".join(f"{a.url}: {a.error}" for a in attempts if a.outcome != "ok")
    return AllLocationsFailed(
        SCRUB(
            f"image {image.id}: no location delivered a verified image{within} "
            f"({failed or 'no locations'})"
        ),
        attempts,
    )
