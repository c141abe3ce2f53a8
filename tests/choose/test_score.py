"""Pure scoring: seconds, topology tolerance, herding with a seeded RNG, ICMP fallback."""

from __future__ import annotations

import random

import pytest

from locpick.choose import probe as probe_mod
from locpick.choose.score import Candidate, HistoryInfo, rank
from locpick.config.model import Config, ScoringConfig, Topology
from locpick.models import Image, Location, Probe


def _cand(url: str, ttfb: float, bps: float | None, **meta: str) -> Candidate:
    loc = Location(url, metadata=meta)
    return Candidate(loc, probe=Probe(url=url, ok=True, ttfb=ttfb, throughput_bps=bps))


IMG = Image(id="i", size=100_000_000, checksum="0" * 32)


def test_score_is_expected_seconds() -> None:
    """score = latency + size / throughput."""
    (s,) = rank(IMG, [_cand("http://a/x", 0.5, 50e6)], Config())
    assert s.score == pytest.approx(0.5 + 2.0)


def test_topology_tolerance_is_twenty_percent() -> None:
    """Other-zone must be >20 % faster than same-zone to win."""
    cfg = Config(topology=Topology(zone="z1"))
    near = _cand("http://near/x", 0.0, 50e6, zone="z1")
    slightly = _cand("http://far/x", 0.0, 60e6, zone="z2")  # 16.7 % less time
    much = _cand("http://far/x", 0.0, 70e6, zone="z2")  # 28.6 % less time
    assert rank(IMG, [slightly, near], cfg)[0].location.url == "http://near/x"
    assert rank(IMG, [near, much], cfg)[0].location.url == "http://far/x"


def test_herding_seeded_shuffle_spreads() -> None:
    """Near-equal same-class locations are chosen at random, reproducibly per seed."""
    cands = [_cand("http://a/x", 0.01, 50e6), _cand("http://b/x", 0.01, 51e6)]
    picks = {rank(IMG, cands, Config(), rng=random.Random(i))[0].url for i in range(20)}
    assert picks == {"http://a/x", "http://b/x"}
    cfg = Config(scoring=ScoringConfig(seed=7))
    assert len({rank(IMG, cands, cfg)[0].url for _ in range(10)}) == 1


def test_topology_difference_is_never_near_equal() -> None:
    """Equal speed but different zones: the near one always wins, no shuffle."""
    cfg = Config(topology=Topology(zone="z1"))
    cands = [
        _cand("http://far/x", 0.01, 50e6, zone="z2"),
        _cand("http://near/x", 0.01, 50e6, zone="z1"),
    ]
    assert {rank(IMG, cands, cfg, rng=random.Random(i))[0].url for i in range(20)} == {
        "http://near/x"
    }


def test_demoted_history_and_history_prior() -> None:
    """A recent failure multiplies the time; an EWMA stands in for an unmeasured throughput."""
    a = _cand("http://a/x", 0.01, 50e6)
    b = _cand("http://b/x", 0.01, None)
    hist_b = HistoryInfo(ewma_bps=100e6, successes=3)
    ranked = rank(IMG, [a, Candidate(b.location, probe=b.probe, history=hist_b)], Config())
    assert ranked[0].url == "http://b/x"
    assert ranked[0].score == pytest.approx(0.01 + 1.0)
    bad = HistoryInfo(failures=1, failed_ago=5.0, consecutive_failures=1, last_error="HTTP 503")
    ranked = rank(IMG, [Candidate(a.location, probe=a.probe, history=bad), b], Config())
    assert ranked[0].url == "http://b/x"
    assert "demoted" in (ranked[1].reasons.history or "")


def test_icmp_not_permitted_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ICMP sockets are refused, the probe records why and goes on."""
    import ping3

    def refuse(*_a: object, **_k: object) -> None:
        raise PermissionError("Operation not permitted")

    monkeypatch.setattr(ping3, "ping", refuse)
    monkeypatch.setattr(probe_mod, "_icmp_refused", None)
    import time

    rtt, note = probe_mod._icmp("127.0.0.1", time.monotonic() + 1)
    assert rtt is None and note is not None and "not permitted" in note
    # Remembered: not retried within the process.
    assert probe_mod._icmp("127.0.0.1", time.monotonic() + 1)[1] == note
    monkeypatch.setattr(probe_mod, "_icmp_refused", None)
