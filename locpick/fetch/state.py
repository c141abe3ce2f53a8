"""What one single-source download knows of each location, and the two ways an attempt ends
on purpose (a switch, the total deadline), shared by the loop, the pump and the switch rules."""

from __future__ import annotations

import attrs

from locpick.models import Score


@attrs.define
class Candidate:
    """A usable location and what this download learnt about it (a ``fetchpolicy.Slot``)."""

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


class Deadline(Exception):
    """``[transfer] total_timeout`` ran out: the whole download ends."""


class Abandon(Exception):
    """Stop reading this stream on purpose (switch to a faster location, cheaper elsewhere)."""

    def __init__(self, message: str, target: Candidate) -> None:
        super().__init__(message)
        self.target = target
