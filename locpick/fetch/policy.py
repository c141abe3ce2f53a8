"""The decisions of one download, pure: which location goes next and when, retry or drop after a
failure (backoff with jitter, Retry-After, budget reset on progress), when to switch to a faster
location, and the total deadline. Time and randomness come in as values or through ``Timing``,
so tests drive every branch with a fake clock and rng; the engine (``locpick.fetch.swarm``)
does the I/O. Also the attempt observer of a transfer (``Observer``; the byte callback is
:data:`locpick.models.ByteProgress`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from locpick.config.model import TransferConfig
from locpick.models import Location

#: Called after each attempt: (location, ok, bytes, seconds, error) — feeds history.
Observer = Callable[[Location, bool, int, float, str | None], None]

#: Transfer rate assumed for a location never measured, bytes/s, and its latency, ms.
DEFAULT_BPS = 50e6
DEFAULT_LATENCY_MS = 50.0


class Rng(Protocol):
    """The one thing backoff needs from a random source."""

    def uniform(self, a: float, b: float) -> float: ...


@attrs.frozen
class Timing:
    """The clock, sleep and rng of a download: real ones by default, fakes in tests."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rng: Rng = attrs.field(factory=random.Random)


class Slot(Protocol):
    """A location as the policy sees it (``fetchstate.Candidate`` is one)."""

    @property
    def failures(self) -> int: ...
    @property
    def not_before(self) -> float: ...
    @property
    def dropped(self) -> bool: ...
    @property
    def left(self) -> bool: ...
    @property
    def bps(self) -> float | None: ...
    @property
    def latency_ms(self) -> float | None: ...


@attrs.frozen
class Verdict:
    """A location's standing after a failed attempt."""

    failures: int
    not_before: float
    dropped: bool


@attrs.frozen
class FetchPolicy:
    """``[transfer]`` turned into decisions; every method is a function of its arguments."""

    cfg: TransferConfig = attrs.field(factory=TransferConfig)

    # -- retry -----------------------------------------------------------------------------
    def delay(self, failures: int, retry_after: float | None, rng: Rng) -> float:
        """Exponential backoff with jitter (half to full step); Retry-After is a floor."""
        base = min(self.cfg.backoff_max, self.cfg.backoff * 2 ** (failures - 1))
        return max(rng.uniform(base / 2, base), retry_after or 0.0)

    def after_failure(
        self,
        slot: Slot,
        *,
        got: int,
        now: float,
        rng: Rng,
        retry_after: float | None = None,
        permanent: bool = False,
        abandoned: bool = False,
    ) -> Verdict:
        """Retry later or drop: ``abandoned`` (on purpose: switch, stall) only waits one backoff;
        permanent errors and a Retry-After over ``retry_after_max`` drop; else the budget counts."""
        cfg = self.cfg
        failures = 0 if got >= cfg.progress_bytes else slot.failures
        if abandoned:
            return Verdict(failures, now + cfg.backoff, slot.dropped)
        if permanent or (retry_after is not None and retry_after > cfg.retry_after_max):
            return Verdict(failures, slot.not_before, True)
        failures += 1
        if failures > cfg.retries:
            return Verdict(failures, slot.not_before, True)
        return Verdict(failures, now + self.delay(failures, retry_after, rng), False)

    # -- next attempt and deadline ---------------------------------------------------------
    @staticmethod
    def next_attempt(
        slots: Sequence[Slot], preferred: int | None, now: float
    ) -> tuple[int, float] | None:
        """(index, seconds to wait first) of the location to try next, None if all are dropped:
        the preferred one if ready, else the best-ranked ready one, else the first to be ready."""
        live = [i for i, s in enumerate(slots) if not s.dropped]
        if not live:
            return None
        if preferred in live and slots[preferred].not_before <= now:
            return preferred, 0.0
        for i in live:
            if slots[i].not_before <= now:
                return i, 0.0
        first = min(live, key=lambda i: slots[i].not_before)
        return first, slots[first].not_before - now

    def deadline(self, start: float) -> float | None:
        """When the whole download must end (clock of ``start``); None without a total_timeout."""
        return start + self.cfg.total_timeout if self.cfg.total_timeout > 0 else None

    # -- switching -------------------------------------------------------------------------
    @staticmethod
    def eta(slot: Slot, nbytes: int) -> float:
        """Seconds ``slot`` is expected to need for ``nbytes`` (latency included)."""
        return nbytes / (slot.bps or DEFAULT_BPS) + (slot.latency_ms or DEFAULT_LATENCY_MS) / 1000

    def cheaper_elsewhere(
        self, slots: Sequence[Slot], current: int, size: int, held: int, now: float
    ) -> int | None:
        """Another ready location expected to deliver the rest sooner than the whole body here
        (the current server ignored Range)."""
        here = self.eta(slots[current], size)
        for i, s in enumerate(slots):
            if i == current or s.dropped or s.failures or s.not_before > now:
                continue
            if self.eta(s, size - held) < here:
                return i
        return None

    def switch_target(
        self,
        slots: Sequence[Slot],
        current: int,
        *,
        rate: float,
        remaining: int,
        elapsed: float,
        switches: int,
        now: float,
    ) -> int | None:
        """A location measured ``switch_factor`` times faster than ``rate``, if the bytes left pay
        for the switch (it saves at least 1 s and 20 %), after ``switch_observe`` seconds here."""
        cfg = self.cfg
        if switches >= cfg.max_switches or elapsed < cfg.switch_observe:
            return None
        stay = remaining / max(rate, 1.0)
        best: tuple[float, int] | None = None
        for i, s in enumerate(slots):
            bps = s.bps
            if i == current or s.dropped or s.left or s.failures or s.not_before > now or not bps:
                continue
            if bps < cfg.switch_factor * max(rate, 1.0):
                continue
            go = remaining / bps + (s.latency_ms or DEFAULT_LATENCY_MS) / 1000 + cfg.switch_cost
            if stay - go >= max(1.0, 0.2 * stay) and (best is None or go < best[0]):
                best = (go, i)
        return None if best is None else best[1]
