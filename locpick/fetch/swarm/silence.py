"""How long a location of a swarm fetch may stay silent: the response-header deadline, scaled
to the locations that did answer, and which locations still hold a slot meanwhile."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from locpick.fetch.swarm.run import Source
    from locpick.fetch.swarm.scheduler import Worker

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
