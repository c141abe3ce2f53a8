"""When an attempt stops on purpose: too slow for ``[transfer] low_speed_*``, past the total
deadline, or a known location so much faster that switching pays (``FetchPolicy`` decides; this
module asks it with the attempt's live figures and turns its answer into an exception)."""

from __future__ import annotations

from collections.abc import Sequence

from locpick.errors import TransferError
from locpick.fetch.policy import FetchPolicy, Timing
from locpick.fetch.pump import Meter
from locpick.fetch.state import Abandon, Candidate, Deadline
from locpick.transports.base import Stream


class Switcher:
    """The in-flight rules of one download over its candidates."""

    def __init__(
        self,
        policy: FetchPolicy,
        cands: Sequence[Candidate],
        size: int | None,
        timing: Timing,
        deadline: float | None,
    ) -> None:
        self.policy = policy
        self.cfg = policy.cfg
        self.cands = cands
        self.size = size
        self.timing = timing
        self.deadline = deadline
        self.switches = 0

    def check_deadline(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            raise Deadline

    def cheaper_elsewhere(self, cand: Candidate, held: int) -> Candidate | None:
        """Another location whose remaining bytes cost less than re-reading ``held`` here."""
        if self.size is None:
            return None
        i = self.policy.cheaper_elsewhere(
            self.cands, self.cands.index(cand), self.size, held, self.timing.clock()
        )
        return None if i is None else self.cands[i]

    def watch(self, cand: Candidate, stream: Stream, meter: Meter, offset: int) -> None:
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
        self.check_deadline(self.timing.clock())
        alt = self._switch_target(cand, meter, offset)
        if alt is not None:
            self.switches += 1
            bps = alt.score.reasons.throughput_bps or 0.0
            raise Abandon(
                f"{stream.final_url}: switched to a faster location at byte "
                f"{offset}: {rate_text(meter.rate(2.0))} here, {alt.url} "
                f"measured {rate_text(bps)}",
                alt,
            )

    def _switch_target(self, cand: Candidate, meter: Meter, offset: int) -> Candidate | None:
        if self.size is None:
            return None
        i = self.policy.switch_target(
            self.cands, self.cands.index(cand), rate=meter.rate(2.0),
            remaining=self.size - offset, elapsed=meter.elapsed,
            switches=self.switches, now=self.timing.clock(),
        )  # fmt: skip
        return None if i is None else self.cands[i]


def rate_text(bps: float) -> str:
    return f"{bps / 1e6:.1f} MB/s" if bps >= 1e5 else f"{bps / 1e3:.1f} kB/s"
