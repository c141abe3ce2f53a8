"""The persisted per-host history: EWMA, decay and expiry, breaker, atomic concurrent writes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from locpick.choose.history import History, HistorySettings, default_history_path, host_key
from locpick.models import Location


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


A = Location("http://u:pw@mirror.example:8080/images/a.raw?token=abc")
B = Location("http://mirror.example:8080/other/path.raw")


def test_key_is_per_host_without_secrets() -> None:
    """Two URLs on one host share an entry; the key holds no userinfo, path or query."""
    assert host_key(A) == host_key(B) == "http://mirror.example:8080"
    assert host_key(Location("https://[::1]/x")) == "https://[::1]:443"
    assert host_key(Location("file:///mnt/x", metadata={"id": "nfs1"})) == "file:nfs1"


def test_default_path_under_user_cache_dir() -> None:
    """The default file lives under XDG_CACHE_HOME (set per test by conftest)."""
    assert default_history_path().startswith(os.environ["XDG_CACHE_HOME"])
    assert default_history_path().endswith(os.path.join("locpick", "history.json"))


def test_ewma_counts_and_breaker(tmp_path: Path) -> None:
    """Throughput is an EWMA; a failure opens the breaker; a success closes it."""
    clock = Clock()
    h = History(str(tmp_path / "h.json"), settings=HistorySettings(alpha=0.5), clock=clock)
    h.record(A, True, 100 << 20, 1.0, None)
    h.record(A, True, 100 << 20, 0.5, None)
    info = h.lookup(B)
    assert info is not None
    assert info.successes == 2 and info.failures == 0
    assert info.ewma_bps == 0.5 * (200 << 20) + 0.5 * (100 << 20)
    clock.now += 10
    h.record(A, False, 0, 0.1, "http://u:pw@mirror.example:8080/a?token=abc: HTTP 503")
    info = h.lookup(A)
    assert info is not None and info.failed_ago == 0.0 and info.consecutive_failures == 1
    assert info.demoted(300) and info.cooldown(300) == 300
    h.record(A, False, 0, 0.1, "again")
    info = h.lookup(A)
    assert info is not None and info.cooldown(300) == 600
    clock.now += 5
    h.record(A, True, 10, 0.1, None)  # tiny transfer: no throughput sample
    info = h.lookup(A)
    assert info is not None and info.failed_ago is None and not info.demoted(300)
    assert info.ewma_bps == 0.5 * (200 << 20) + 0.5 * (100 << 20)
    text = (tmp_path / "h.json").read_text()
    assert "pw" not in text and "token" not in text and "/a" not in text


def test_decay_and_expiry(tmp_path: Path) -> None:
    """Counts halve per half-life; entries untouched past the expiry are dropped."""
    clock = Clock()
    s = HistorySettings(half_life=100.0, expiry=1000.0)
    h = History(str(tmp_path / "h.json"), settings=s, clock=clock)
    for _ in range(8):
        h.record(A, False, 0, 0.1, "boom")
    clock.now += 200
    info = h.lookup(A)
    assert info is not None and info.failures == 2
    clock.now += 900
    assert h.lookup(A) is None
    h.record(B, True, 0, 0.1, None)
    assert list(json.loads((tmp_path / "h.json").read_text())["hosts"]) == [host_key(B)]


def test_corrupt_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    """A damaged history file never breaks a run; the next write replaces it."""
    path = tmp_path / "h.json"
    path.write_text("{not json")
    h = History(str(path))
    assert h.lookup(A) is None
    h.record(A, True, 0, 0.1, None)
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _hammer(path: str, n: int) -> None:
    h = History(path)
    for i in range(n):
        h.record(Location(f"http://host{i % 3}.example/x"), True, 0, 0.1, None)


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    """Three processes writing at once: every outcome is counted, the file stays valid."""
    path = str(tmp_path / "h.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, 30)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    hosts = json.loads(Path(path).read_text())["hosts"]
    assert sum(round(e["successes"]) for e in hosts.values()) == 90


def test_disabled_history_writes_nothing(tmp_path: Path) -> None:
    """history_file = "" keeps outcomes in memory only."""
    h = History.from_config("")
    h.record(A, False, 0, 0.1, "x")
    info = h.lookup(A)
    assert info is not None and info.failures == 1
    assert h.path is None
