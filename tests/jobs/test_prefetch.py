"""The prefetch job's pure parts: the shared rate cap (Pacer) and the report."""

from __future__ import annotations

import pytest

from locpick.cache.prefetch import PrefetchImage
from locpick.jobs.prefetch import Pacer, PrefetchReport


class FakeClock:
    """A clock that only moves when told to (sleep advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_holds_the_average_rate_after_a_one_second_burst() -> None:
    """10 MB through a 1 MB/s pacer in 100 kB reads takes 9 s of sleep (1 s of burst credit)."""
    clock = FakeClock()
    pacer = Pacer(1_000_000, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(100):
        pacer.take(100_000)
    assert clock.now - start == pytest.approx(9.0)
    assert all(s <= 0.1 + 1e-9 for s in clock.slept)  # many short waits, never one long one


def test_pacer_is_shared_by_readers_and_earns_no_more_than_one_second_when_idle() -> None:
    """Two readers split the rate; after a long idle only one second's worth is free."""
    clock = FakeClock()
    pacer = Pacer(1000, clock=clock, sleep=clock.sleep)
    assert pacer.wait_for(1000) == 0.0  # the burst
    assert pacer.wait_for(500) == pytest.approx(0.5)  # reader A
    assert pacer.wait_for(500) == pytest.approx(1.0)  # reader B queues behind A
    clock.now += 3600
    assert pacer.wait_for(1000) == 0.0
    assert pacer.wait_for(1000) == pytest.approx(1.0)


def test_pacer_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError):
        Pacer(0)


def test_report_ok_only_when_every_image_is_in_the_cache() -> None:
    """cached and fetched are fine; one failed (or unfinished) row makes the run not ok."""
    good = PrefetchReport((PrefetchImage("a", "cached"), PrefetchImage("b", "fetched")))
    assert good.ok and good.to_json()["ok"] is True
    for bad in ("failed", "pending", "fetching"):
        assert not PrefetchReport((PrefetchImage("a", "cached"), PrefetchImage("b", bad))).ok
