"""The byte pump of one attempt: stream -> sink through the sink's buffers, skipping bytes
already held, with a rate meter sampled for the watcher (low-speed floor, switching)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from locpick.models import ByteProgress
from locpick.sink.atomic import AtomicSink
from locpick.transports.base import Stream


class Meter:
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


def pump(
    sink: AtomicSink,
    stream: Stream,
    progress: ByteProgress | None,
    watch: Callable[[Meter], None],
) -> None:
    """Copy ``stream`` into ``sink`` until it ends; ``watch`` sees the meter at each sample
    and may raise to stop the attempt."""
    skip = sink.offset - stream.start
    meter = Meter(sink.offset)
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
        if progress is not None:
            progress(sink.offset, sink.size)
        if meter.due(sink.offset):
            watch(meter)
