"""The pure policy of a download (``locpick.fetch.policy``) with a fake clock and rng, then the
total deadline (``[transfer] total_timeout``) against real loopback origins."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import attrs
import pytest

from locpick._demo.origin import Origin
from locpick.config.load import config_from_mapping
from locpick.config.model import Config, TransferConfig
from locpick.errors import AllLocationsFailed, ConfigError
from locpick.fetch.policy import FetchPolicy, Timing, Verdict
from locpick.fetch.transfer import fetch
from locpick.models import Image, Location, Reasons, Score
from locpick.transports import Transports
from locpick.transports.base import Context
from tests.helpers import image_record, run_cli, write_record

CFG = TransferConfig(
    retries=2, backoff=1.0, backoff_max=4.0, retry_after_max=30.0, progress_bytes=1000
)
P = FetchPolicy(CFG)


class FakeRng:
    """``uniform`` returns the low or high end and records its bounds."""

    def __init__(self, high: bool = True) -> None:
        self.high = high
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b if self.high else a


class FakeClock:
    """Time that only moves when the download sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@attrs.frozen
class S:
    """A location as the policy sees it."""

    failures: int = 0
    not_before: float = 0.0
    dropped: bool = False
    left: bool = False
    bps: float | None = None
    latency_ms: float | None = None


# -- backoff ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("failures", "high"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (10, 4.0)])
def test_delay_doubles_per_failure_up_to_backoff_max_with_half_to_full_jitter(
    failures: int, high: float
) -> None:
    assert P.delay(failures, None, FakeRng(high=True)) == high
    rng = FakeRng(high=False)
    assert P.delay(failures, None, rng) == high / 2
    assert rng.calls == [(high / 2, high)]


def test_retry_after_is_a_floor_not_a_ceiling() -> None:
    assert P.delay(1, 7.0, FakeRng()) == 7.0
    assert P.delay(3, 0.5, FakeRng()) == 4.0
    assert P.delay(1, 0.0, FakeRng(high=False)) == 0.5


# -- after a failure -------------------------------------------------------------------------
def test_transient_failures_back_off_until_the_budget_is_spent() -> None:
    rng = FakeRng()
    v1 = P.after_failure(S(), got=0, now=10.0, rng=rng)
    assert v1 == Verdict(failures=1, not_before=11.0, dropped=False)
    v2 = P.after_failure(S(failures=1), got=0, now=20.0, rng=rng)
    assert v2 == Verdict(failures=2, not_before=22.0, dropped=False)
    v3 = P.after_failure(S(failures=2, not_before=22.0), got=0, now=30.0, rng=rng)
    assert v3 == Verdict(failures=3, not_before=22.0, dropped=True)


def test_zero_retries_drops_on_the_first_failure() -> None:
    p = FetchPolicy(attrs.evolve(CFG, retries=0))
    assert p.after_failure(S(), got=0, now=0.0, rng=FakeRng()).dropped


def test_permanent_error_drops_without_spending_budget_or_waiting() -> None:
    v = P.after_failure(S(not_before=5.0), got=0, now=10.0, rng=FakeRng(), permanent=True)
    assert v == Verdict(failures=0, not_before=5.0, dropped=True)


def test_retry_after_over_the_maximum_drops_and_under_it_waits_at_least_that() -> None:
    rng = FakeRng()
    long = P.after_failure(S(), got=0, now=10.0, rng=rng, retry_after=30.5)
    assert long.dropped
    ok = P.after_failure(S(), got=0, now=10.0, rng=rng, retry_after=30.0)
    assert ok == Verdict(failures=1, not_before=40.0, dropped=False)


@pytest.mark.parametrize(("got", "failures"), [(999, 3), (1000, 1), (10**9, 1)])
def test_progress_resets_the_budget_but_a_few_bytes_do_not(got: int, failures: int) -> None:
    v = P.after_failure(S(failures=2), got=got, now=0.0, rng=FakeRng())
    assert v.failures == failures
    assert v.dropped is (failures > CFG.retries)


def test_abandoning_on_purpose_waits_one_base_backoff_and_never_drops() -> None:
    rng = FakeRng()
    v = P.after_failure(S(failures=2), got=0, now=10.0, rng=rng, abandoned=True)
    assert v == Verdict(failures=2, not_before=11.0, dropped=False)
    assert P.after_failure(S(failures=2), got=5000, now=0.0, rng=rng, abandoned=True).failures == 0
    assert rng.calls == []


# -- next attempt ----------------------------------------------------------------------------
def test_next_attempt_none_when_every_location_is_dropped() -> None:
    assert P.next_attempt([], None, 0.0) is None
    assert P.next_attempt([S(dropped=True), S(dropped=True)], 0, 0.0) is None


def test_next_attempt_prefers_the_switch_target_when_ready() -> None:
    slots = [S(), S(), S()]
    assert P.next_attempt(slots, 2, 0.0) == (2, 0.0)
    assert P.next_attempt(slots, None, 0.0) == (0, 0.0)


def test_next_attempt_skips_a_preferred_location_not_ready_or_dropped() -> None:
    assert P.next_attempt([S(), S(not_before=5.0)], 1, 1.0) == (0, 0.0)
    assert P.next_attempt([S(), S(dropped=True)], 1, 1.0) == (0, 0.0)


def test_next_attempt_takes_the_best_ranked_ready_location() -> None:
    slots = [S(dropped=True), S(not_before=9.0), S(not_before=2.0), S(not_before=1.0)]
    assert P.next_attempt(slots, None, 3.0) == (2, 0.0)


def test_next_attempt_waits_for_the_first_to_be_ready() -> None:
    slots = [S(not_before=9.0), S(not_before=6.0, dropped=True), S(not_before=7.5)]
    assert P.next_attempt(slots, 0, 5.0) == (2, 2.5)


def test_deadline_only_with_a_total_timeout() -> None:
    assert P.deadline(100.0) is None
    assert FetchPolicy(attrs.evolve(CFG, total_timeout=7.0)).deadline(100.0) == 107.0


# -- switching -------------------------------------------------------------------------------
def test_eta_defaults_for_an_unmeasured_location() -> None:
    assert P.eta(S(), 50_000_000) == pytest.approx(1.05)
    assert P.eta(S(bps=1e6, latency_ms=200.0), 1_000_000) == pytest.approx(1.2)


def test_cheaper_elsewhere_skips_current_dropped_failing_and_waiting_locations() -> None:
    fast = {"bps": 100e6, "latency_ms": 1.0}
    slots = [
        S(bps=1e6, latency_ms=1.0),
        S(dropped=True, **fast),
        S(failures=1, **fast),
        S(not_before=10.0, **fast),
        S(bps=2e6, latency_ms=1.0),  # first in rank order wins, not the fastest
        S(**fast),
    ]
    assert P.cheaper_elsewhere(slots, 0, size=10_000_000, held=1_000_000, now=1.0) == 4
    assert P.cheaper_elsewhere(slots[:4], 0, size=10_000_000, held=1_000_000, now=1.0) is None
    assert P.cheaper_elsewhere(slots, 5, size=10_000_000, held=1_000_000, now=1.0) is None


def _switch(slots: list[S], **kw: float) -> int | None:
    args: dict[str, float] = {"rate": 1e6, "remaining": 100_000_000, "elapsed": 2.0}
    args.update(kw)
    return P.switch_target(
        slots, 0, rate=args["rate"], remaining=int(args["remaining"]), elapsed=args["elapsed"],
        switches=int(kw.get("switches", 0)), now=0.0,
    )  # fmt: skip


def test_switch_to_the_location_that_finishes_soonest() -> None:
    slots = [S(), S(bps=5e6, latency_ms=1.0), S(bps=20e6, latency_ms=1.0), S(bps=10e6)]
    assert _switch(slots) == 2


def test_no_switch_before_observing_or_past_max_switches() -> None:
    slots = [S(), S(bps=20e6)]
    assert _switch(slots, elapsed=CFG.switch_observe - 0.01) is None
    assert _switch(slots, switches=CFG.max_switches) is None
    assert _switch(slots, switches=CFG.max_switches - 1) == 1


def test_no_switch_to_an_unmeasured_left_failing_or_not_much_faster_location() -> None:
    base = [S()]
    for other in (
        S(),
        S(bps=20e6, left=True),
        S(bps=20e6, failures=1),
        S(bps=20e6, dropped=True),
        S(bps=20e6, not_before=1.0),
        S(bps=1.4e6),
    ):
        assert _switch([*base, other]) is None, other
    assert _switch([*base, S(bps=1.6e6)]) == 1


def test_no_switch_when_the_bytes_left_do_not_pay_for_it() -> None:
    slots = [S(), S(bps=100e6, latency_ms=1.0)]
    assert _switch(slots, remaining=1_000_000) is None  # saves < 1 s
    assert _switch(slots, remaining=2_000_000) == 1
    assert _switch(slots, rate=0.0, remaining=1) is None  # a stalled rate counts as 1 B/s


# -- config ----------------------------------------------------------------------------------
def test_transfer_keys_are_read_from_config_and_total_timeout_is_checked() -> None:
    cfg = config_from_mapping(
        {"transfer": {"total_timeout": 90.0, "retry_after_max": 5.0, "progress_bytes": 1}}
    ).transfer
    assert (cfg.total_timeout, cfg.retry_after_max, cfg.progress_bytes) == (90.0, 5.0, 1)
    assert TransferConfig().total_timeout == 0.0
    with pytest.raises(ConfigError, match="total_timeout"):
        config_from_mapping({"transfer": {"total_timeout": -1.0}})


# -- the total deadline against real origins -------------------------------------------------
DATA = os.urandom(2 << 20)


def _image(url: str) -> Image:
    return Image(
        id="img-1",
        size=len(DATA),
        checksum=hashlib.md5(DATA).hexdigest(),
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(DATA).hexdigest(),
        locations=(Location(url),),
    )


def _fetch(dest: Path, url: str, cfg: TransferConfig, timing: Timing | None = None) -> None:
    score = Score(
        location=Location(url), rank=1, score=1.0, usable=True, reasons=Reasons(latency_ms=1.0)
    )
    ctx = Context(Config(transfer=cfg))
    try:
        fetch(_image(url), [score], dest, Transports(ctx), transfer=cfg, timing=timing)
    finally:
        ctx.close()


RETRYING = TransferConfig(
    connect_timeout=2.0, first_byte_timeout=2.0, retries=100, backoff=1.0, backoff_max=4.0
)


@pytest.mark.parametrize(("total", "attempts"), [(10.0, 4), (6.5, 3), (0.0, 101)])
def test_total_deadline_ends_retries_on_the_fake_clock(
    tmp_path: Path, total: float, attempts: int
) -> None:
    """Backoffs 1, 2, 4, 4 ... s: attempts at t = 0, 1, 3, 7, 11; the one past the deadline is
    not made (nor slept for). Without a deadline the retry budget ends it instead."""
    clock = FakeClock()
    cfg = attrs.evolve(RETRYING, total_timeout=total)
    dest = tmp_path / "img"
    with Origin(DATA) as o:
        o.faults.fail_first_n = 1000
        with pytest.raises(AllLocationsFailed) as err:
            _fetch(dest, o.url, cfg, Timing(clock.clock, clock.sleep, FakeRng()))
        assert len(o.requests) == attempts
    assert len(err.value.attempts) == attempts
    assert all("HTTP 503" in (a.error or "") for a in err.value.attempts)
    assert ("total_timeout" in str(err.value)) is (total > 0)
    assert sum(clock.sleeps) < (total or 1e9)
    assert not dest.exists()


def test_total_deadline_ends_a_crawling_transfer_mid_stream(tmp_path: Path) -> None:
    """A transfer that would take ~100 s (20 kB/s, above every speed floor) ends at the deadline
    with the bytes it got recorded and nothing left beside dest (as any failed download)."""
    cfg = attrs.evolve(RETRYING, total_timeout=1.0, idle_timeout=30.0, stall_timeout=30.0)
    dest = tmp_path / "img"
    with Origin(DATA) as o:
        o.faults.bandwidth = 20_000
        with pytest.raises(AllLocationsFailed, match=r"total_timeout = 1 s") as err:
            _fetch(dest, o.url, cfg)
        assert len(o.requests) == 1
    (attempt,) = err.value.attempts
    assert attempt.error == "total_timeout 1 s exceeded"
    assert 0 < attempt.bytes < len(DATA)
    assert not dest.exists()
    # the part (and its records) stay for the next run to resume (issue 25)
    assert {p.name for p in tmp_path.iterdir()} <= {
        ".img.locpick-part",
        ".img.locpick-part.json",
        ".img.locpick-part.pieces",
    }


def test_cli_total_timeout_is_exit_3_naming_the_deadline(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    config = tmp_path / "c.toml"
    config.write_text("[transfer]\ntotal_timeout = 1.0\nmax_sources = 1\n")
    img = "18181818-0000-4000-8000-000000000014"
    with Origin(DATA) as o:
        o.faults.bandwidth = 20_000
        record = write_record(tmp_path / "m.json", image_record(img, DATA, [o.url]))
        proc = run_cli(
            "download", img, str(dest), "--metadata", str(record), "--config", str(config),
            timeout=60,
        )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "total_timeout = 1 s" in proc.stderr
    assert not dest.exists()
