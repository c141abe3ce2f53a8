"""Resilient transfer against real loopback origins with injected faults (issue 5), through the
one engine (issue 25: a single copy is a swarm of one, several copies share the pieces, so a
fault on one copy shows as its pieces taken over by another rather than a "resume there").

The fault matrix calls ``locpick.fetch.transfer.fetch`` directly with hand-made rankings (so a
fault can
hit the best location without the probe phase filtering it out); the crash, ENOSPC and
concurrency tests run the real CLI in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from locpick._demo.blackhole import BlackHole
from locpick._demo.origin import Origin
from locpick.config.model import Config, TransferConfig
from locpick.errors import AllLocationsFailed
from locpick.fetch.transfer import fetch
from locpick.models import Image, Location, Reasons, Result, Score
from locpick.transports import Transports
from locpick.transports.base import Context
from tests.fixtures_sharedfs import mount_tmpfs, unmount
from tests.helpers import ROOT, image_record, run_cli, temp_leftovers, write_record

SIZE = 2 << 20
DATA = os.urandom(SIZE)
#: Per-request overhead allowed on top of the image when a resume was possible (bytes in
#: flight when a cut or switch happened are counted by the origin but not all received).
SLACK = 512 << 10

FAST = TransferConfig(
    connect_timeout=2.0,
    first_byte_timeout=2.0,
    idle_timeout=4.0,
    stall_timeout=1.0,
    backoff=0.05,
    backoff_max=0.5,
)


def _image(data: bytes = DATA, urls: tuple[str, ...] = ()) -> Image:
    return Image(
        id="img-1",
        size=len(data),
        checksum=hashlib.md5(data).hexdigest(),
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(data).hexdigest(),
        locations=tuple(Location(u) for u in urls),
    )


def _score(url: str, rank: int, bps: float | None = None) -> Score:
    reasons = Reasons(latency_ms=1.0, throughput_bps=bps)
    return Score(location=Location(url), rank=rank, score=float(rank), usable=True, reasons=reasons)


def _fetch(
    dest: Path,
    urls: list[str],
    *,
    cfg: TransferConfig = FAST,
    bps: list[float | None] | None = None,
    data: bytes = DATA,
) -> Result:
    speeds = bps or [None] * len(urls)
    ranked = [_score(u, i + 1, speeds[i]) for i, u in enumerate(urls)]
    ctx = Context(Config(transfer=cfg))
    try:
        return fetch(_image(data, tuple(urls)), ranked, dest, Transports(ctx), transfer=cfg)
    finally:
        ctx.close()


@pytest.fixture
def a() -> Iterator[Origin]:
    with Origin(DATA) as o:
        yield o


@pytest.fixture
def b() -> Iterator[Origin]:
    with Origin(DATA) as o:
        yield o


def _ok(dest: Path) -> None:
    assert dest.read_bytes() == DATA
    assert temp_leftovers(dest.parent) == []


def _story(result: Result) -> list[tuple[str, str]]:
    return [(at.url, at.outcome) for at in result.attempts]


def _failed(result: Result) -> dict[str, str]:
    return {at.url: at.error or "" for at in result.attempts if at.outcome == "failed"}


def _share(result: Result, url: str) -> int:
    return sum(s.bytes for s in result.sources if s.url == url)


# -- the fault matrix: the best location (a) misbehaves, b is healthy ------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_cut_resumes_on_next_location(
    tmp_path: Path, a: Origin, b: Origin, fraction: float
) -> None:
    a.faults.cut_after_bytes = int(SIZE * fraction)
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url, b.url], cfg=attrs.evolve(FAST, max_sources=1))
    _ok(dest)
    assert a.url in _failed(result), result.attempts
    error = _failed(result)[a.url]
    assert "ended" in error or "broke" in error
    # only the piece in flight at the cut is fetched again
    assert a.bytes_sent + b.bytes_sent <= SIZE + SLACK + (1 << 20)


@pytest.mark.timeout(120)  # hang guard: waiting out the stall is the failure
def test_stall_is_abandoned_quickly_and_resumed(tmp_path: Path, a: Origin, b: Origin) -> None:
    """A copy that stops sending for an hour mid-image is abandoned at the stall timeout (the
    engine must not wait it out) and its pieces come from the other copy."""
    a.faults.stall_after = int(SIZE * 0.3)
    a.faults.stall_seconds = 3600
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url, b.url])
    _ok(dest)
    assert a.bytes_sent + b.bytes_sent <= SIZE + SLACK + (1 << 20)
    assert _share(result, b.url) >= SIZE // 2


def test_503_then_ok_retries_same_location_with_backoff(tmp_path: Path, a: Origin) -> None:
    a.faults.fail_first_n = 2
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url])
    _ok(dest)
    assert _story(result) == [(a.url, "failed"), (a.url, "failed"), (a.url, "ok")]
    assert "HTTP 503" in (result.attempts[0].error or "")
    times = [r.time for r in a.requests]
    assert times[2] - times[1] >= FAST.backoff  # second backoff is at least the base


def test_429_honours_retry_after(tmp_path: Path, a: Origin) -> None:
    a.faults.fail_first_n = 1
    a.faults.fail_status = 429
    a.faults.retry_after = 1
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url])
    _ok(dest)
    assert _story(result) == [(a.url, "failed"), (a.url, "ok")]
    times = [r.time for r in a.requests]
    assert times[1] - times[0] >= 0.95


def test_retry_budget_exhausted_leaves_dest_untouched(tmp_path: Path, a: Origin) -> None:
    a.faults.status = 500
    dest = tmp_path / "img"
    dest.write_bytes(b"old")
    with pytest.raises(AllLocationsFailed) as info:
        _fetch(dest, [a.url])
    assert len(a.requests) == FAST.retries + 1
    assert [at.outcome for at in info.value.attempts] == ["failed"] * (FAST.retries + 1)
    assert dest.read_bytes() == b"old"
    assert temp_leftovers(tmp_path) == []


def test_404_is_permanent_for_that_location(tmp_path: Path, a: Origin, b: Origin) -> None:
    a.faults.status = 404
    b.faults.cut_at_offset = SIZE // 2  # b needs a second try: a must not be asked again
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url, b.url])
    _ok(dest)
    assert len(a.requests) == 1
    assert "404" in _failed(result)[a.url]


@pytest.mark.timeout(120)  # hang guard: a black hole never answers
def test_black_hole_times_out_at_first_byte(tmp_path: Path, b: Origin) -> None:
    with BlackHole() as hole:
        url = hole.url
        dest = tmp_path / "img"
        result = _fetch(dest, [url, b.url])
    _ok(dest)
    assert _share(result, b.url) == SIZE
    error = _failed(result).get(url, "")
    assert "timed out" in error or "no response headers" in error, result.attempts


def test_ignored_range_discards_what_is_held(tmp_path: Path, a: Origin, b: Origin) -> None:
    a.faults.cut_at_offset = SIZE // 2
    a.faults.status = 404  # after the cut a is gone: b, which ignores Range, is the only one
    b.faults.ignore_range = True
    dest = tmp_path / "img"
    result = _fetch(dest, [b.url], cfg=FAST)
    _ok(dest)
    assert _share(result, b.url) == SIZE


def test_ignored_range_goes_elsewhere_when_cheaper(tmp_path: Path) -> None:
    with Origin(DATA) as a, Origin(DATA) as b, Origin(DATA) as c:
        a.faults.cut_at_offset = SIZE // 2
        b.faults.ignore_range = True
        dest = tmp_path / "img"
        result = _fetch(dest, [a.url, b.url, c.url], bps=[None, 1e6, 50e6])
        _ok(dest)
        assert _share(result, b.url) <= SIZE // 2  # only what it serves from byte 0 on
        assert a.bytes_sent + b.bytes_sent + c.bytes_sent <= 2 * SIZE + SLACK


def test_corrupt_bytes_restart_and_drop_the_location(tmp_path: Path, a: Origin, b: Origin) -> None:
    a.faults.corrupt_at = [1000]
    b.faults.first_byte_delay = 0.3  # a surely delivers piece 0 (on a busy box b could first)
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url, b.url])
    _ok(dest)
    assert "mismatch" in _failed(result)[a.url]
    assert b.url not in _failed(result)


def test_lying_content_range_refused_then_if_range_resume(
    tmp_path: Path, a: Origin, b: Origin
) -> None:
    a.faults.cut_at_offset = SIZE // 2
    b.faults.lie_content_range = 7
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url, b.url])
    a.faults.cut_at_offset = None
    _ok(dest)
    assert "Content-Range" in _failed(result)[b.url]
    assert len(b.requests) == 1  # permanent: never asked again
    assert a.bytes_sent + b.bytes_sent <= SIZE + SLACK + SIZE // 2  # b's lie: at most a body


def test_changed_resource_restarts_via_if_range(tmp_path: Path, a: Origin) -> None:
    a.faults.cut_at_offset = SIZE // 2
    dest = tmp_path / "img"
    done: list[Result] = []

    def change_after_cut() -> None:
        while a.bytes_sent < SIZE // 2:
            time.sleep(0.01)
        a.faults.cut_at_offset = None
        a.set_data(DATA, etag='"v2"')

    t = threading.Thread(target=change_after_cut)
    t.start()
    done.append(_fetch(dest, [a.url]))
    t.join()
    _ok(dest)  # same bytes under a new ETag: the pieces held are still the image


# -- slowness: low-speed floor and mid-transfer switch ---------------------------------------
def test_trickle_below_floor_is_abandoned(tmp_path: Path, a: Origin, b: Origin) -> None:
    a.faults.drip = True
    a.faults.drip_interval = 0.05  # 20 B/s
    cfg = TransferConfig(
        first_byte_timeout=2.0, stall_timeout=1.0, low_speed_bps=1000, low_speed_window=1.0
    )
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url, b.url], cfg=cfg)
    _ok(dest)
    assert _share(result, a.url) < SIZE // 2  # the fast copy took over the trickle's pieces


def test_switches_to_a_much_faster_location(tmp_path: Path) -> None:
    data = os.urandom(6 << 20)
    with Origin(data) as a, Origin(data) as b:
        a.faults.bandwidth = 500_000  # slower than a's ranking promised
        dest = tmp_path / "img"
        result = _fetch(dest, [a.url, b.url], bps=[60e6, 40e6], data=data)
        assert dest.read_bytes() == data
        assert _share(result, b.url) > _share(result, a.url)  # b took over a's pieces
        assert a.bytes_sent + b.bytes_sent <= len(data) + SLACK + (1 << 20)


def test_switch_goes_to_the_faster_location_not_the_next_ranked(tmp_path: Path) -> None:
    data = os.urandom(6 << 20)
    with Origin(data) as a, Origin(data) as b, Origin(data) as c:
        a.faults.bandwidth = 500_000
        dest = tmp_path / "img"
        result = _fetch(dest, [a.url, b.url, c.url], bps=[60e6, None, 40e6], data=data)
        assert dest.read_bytes() == data
        assert _share(result, a.url) < len(data) // 3


def test_no_switch_when_the_other_is_not_much_faster(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    with Origin(data) as a, Origin(data) as b:
        a.faults.bandwidth = 2_000_000
        dest = tmp_path / "img"
        _fetch(dest, [a.url, b.url], bps=[2e6, 2.4e6], data=data)
        assert dest.read_bytes() == data
        assert a.bytes_sent + b.bytes_sent <= len(data) + SLACK + (1 << 20)  # nothing twice


# -- disk faults -----------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mount_tmpfs(mnt, size="3m")
    try:
        yield mnt
    finally:
        unmount(mnt)


def test_free_space_precheck_exit_3(tiny_fs: Path, tmp_path: Path, a: Origin) -> None:
    big = os.urandom(4 << 20)
    a.set_data(big)
    rec = write_record(tmp_path / "rec.json", image_record("img-1", big, [a.url]))
    dest = tiny_fs / "img"
    r = run_cli("download", "img-1", str(dest), "--metadata", str(rec), "--no-progress")
    assert r.returncode == 3, r.stderr
    assert str(dest) in r.stderr and "need" in r.stderr and "free" in r.stderr
    assert os.listdir(tiny_fs) == []


def test_enospc_mid_transfer_exit_3_no_other_location(
    tiny_fs: Path, tmp_path: Path, a: Origin, b: Origin
) -> None:
    a.faults.bandwidth = b.faults.bandwidth = 1_000_000
    rec = write_record(tmp_path / "rec.json", image_record("img-1", DATA, [a.url, b.url]))
    dest = tiny_fs / "img"

    def fill() -> None:  # the disk fills up under us once the transfer has started
        deadline = time.monotonic() + 20
        while not any(".locpick-part" in n for n in os.listdir(tiny_fs)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)

    t = threading.Thread(target=fill)
    t.start()
    r = run_cli("download", "img-1", str(dest), "--metadata", str(rec), "--no-progress")
    t.join()
    assert r.returncode == 3, r.stderr
    assert str(dest) in r.stderr and "no space left" in r.stderr and "bytes needed" in r.stderr
    assert sorted(os.listdir(tiny_fs)) == ["filler"]


# -- crash safety and concurrency (real processes) --------------------------------------------
def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _spawn(rec: Path, dest: Path) -> subprocess.Popen[str]:
    args = ["download", "img-1", str(dest), "--metadata", str(rec), "--no-progress", "--json"]
    return subprocess.Popen(
        [sys.executable, "-m", "locpick", *args],
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_then_rerun_reuses_the_part(tmp_path: Path, a: Origin) -> None:
    a.faults.bandwidth = 1_000_000
    rec = write_record(tmp_path / "rec.json", image_record("img-1", DATA, [a.url]))
    dest = tmp_path / "out" / "img"
    dest.parent.mkdir()
    proc = _spawn(rec, dest)
    deadline = time.monotonic() + 30
    pieces = dest.parent / ".img.locpick-part.pieces"
    while not (pieces.exists() and json.loads(pieces.read_text() or "{}").get("done")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not dest.exists()
    sidecar = json.loads((dest.parent / ".img.locpick-part.json").read_text())
    assert sidecar["image_id"] == "img-1" and sidecar["size"] == SIZE
    record = json.loads((dest.parent / ".img.locpick-part.pieces").read_text())
    held = len(record["done"]) * record["piece"]

    a.faults.bandwidth = None
    a.reset_counters()
    r = run_cli("download", "img-1", str(dest), "--metadata", str(rec), "--json")
    assert r.returncode == 0, r.stderr
    _ok(dest)
    assert a.bytes_sent <= SIZE - held + SLACK  # only the pieces the record lacks


def test_stale_part_of_another_image_is_not_reused(tmp_path: Path, a: Origin) -> None:
    dest = tmp_path / "img"
    (tmp_path / ".img.locpick-part").write_bytes(b"x" * 1000)
    (tmp_path / ".img.locpick-part.json").write_text(
        json.dumps({"version": 1, "image_id": "other", "size": SIZE, "validators": {}})
    )
    result = _fetch(dest, [a.url])
    _ok(dest)
    assert a.bytes_sent >= SIZE and result.bytes == SIZE


def test_two_processes_one_download(tmp_path: Path, a: Origin) -> None:
    a.faults.bandwidth = 2_000_000
    rec = write_record(tmp_path / "rec.json", image_record("img-1", DATA, [a.url]))
    dest = tmp_path / "img"
    procs = [_spawn(rec, dest) for _ in range(2)]
    outs: list[Any] = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    _ok(dest)
    full = [req for req in a.requests if req.range != "bytes=0-65535"]
    assert len(full) == 1  # one download; the other process found the verified file
    assert a.bytes_sent <= SIZE + 2 * 65536 + SLACK
    results = [json.loads(out) for out, _ in outs]
    assert sorted(r["bytes"] for r in results) == [0, SIZE]


def test_progress_resets_the_retry_budget(tmp_path: Path, a: Origin) -> None:
    a.faults.cut_after_bytes = SIZE // 4  # every response breaks off after a quarter
    cfg = TransferConfig(first_byte_timeout=2.0, retries=1, backoff=0.01)
    dest = tmp_path / "img"
    result = _fetch(dest, [a.url], cfg=cfg)
    _ok(dest)
    assert [at.outcome for at in result.attempts] == ["failed"] * 3 + ["ok"]
    # each request continues where the last one broke off, inside the piece
    starts = [int((r.range or "bytes=0-").split("=")[1].split("-")[0]) for r in a.requests]
    assert starts == [i * SIZE // 4 for i in range(4)]


def test_part_symlink_is_not_followed(tmp_path: Path, a: Origin) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dest = tmp_path / "img"
    (tmp_path / ".img.locpick-part").symlink_to(victim)
    image = _image(DATA)
    (tmp_path / ".img.locpick-part.json").write_text(
        json.dumps(
            {
                "version": 1,
                "image_id": image.id,
                "size": SIZE,
                "algo": "sha512",
                "hash": image.os_hash_value,
                "validators": {},
            }
        )
    )
    _fetch(dest, [a.url])
    assert dest.read_bytes() == DATA
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "victim"]
