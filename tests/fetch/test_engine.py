"""One transfer engine (issue 25): a single copy is a swarm of one, bad copies are found by
comparison (never guessed), and every path ends on cancel, total_timeout or a raising progress
callback with the part kept for resume. Real loopback origins (``locpick._demo``)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from locpick._demo.blackhole import BlackHole
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.config.model import Config, TransferConfig
from locpick.errors import AllLocationsFailed, Cancelled
from locpick.fetch.transfer import fetch
from locpick.models import Image, Location, Reasons, Result, Score
from locpick.transports import Transports
from locpick.transports.base import Context
from tests.helpers import temp_leftovers

MiB = 1 << 20

CFG = TransferConfig(
    connect_timeout=2.0,
    first_byte_timeout=10.0,
    idle_timeout=4.0,
    stall_timeout=1.0,
    backoff=0.05,
    backoff_max=0.5,
)


def _image(data: bytes | None, urls: Sequence[str], *, size: int = 0, digest: str = "") -> Image:
    return Image(
        id="img-e",
        size=len(data) if data is not None else size,
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(data).hexdigest() if data is not None else digest,
        locations=tuple(Location(u) for u in urls),
    )


def _ranked(urls: Sequence[str], bps: Sequence[float | None] | None = None) -> list[Score]:
    speeds = list(bps) if bps is not None else [None] * len(urls)
    return [
        Score(Location(u), i + 1, float(i + 1), True, Reasons(latency_ms=1.0, throughput_bps=r))
        for i, (u, r) in enumerate(zip(urls, speeds, strict=True))
    ]


def _fetch(
    dest: Path,
    image: Image,
    urls: Sequence[str],
    cfg: TransferConfig = CFG,
    bps: Sequence[float | None] | None = None,
    **kw: object,
) -> Result:
    ctx = Context(Config(transfer=cfg))
    try:
        return fetch(image, _ranked(urls, bps), dest, Transports(ctx), transfer=cfg, **kw)  # type: ignore[arg-type]
    finally:
        ctx.close()


def _part(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.locpick-part"


# -- bad copies are found, not guessed -------------------------------------------------------
@pytest.mark.parametrize("mib", [4, 16])
def test_corrupt_fast_copy_beside_a_good_one_delivers_from_the_good_one(
    tmp_path: Path, mib: int
) -> None:
    """The world of the issue: a fast copy flipping a byte in every 64 KiB and a good copy at
    30 MiB/s. The download succeeds; the corrupt copy is blamed, the good one never is."""
    data = os.urandom(mib * MiB)
    with Origin(data) as bad, Origin(data) as good:
        bad.faults.corrupt_at = range(7, len(data), 64 << 10)
        good.faults.uplink = 30e6
        dest = tmp_path / "img"
        result = _fetch(dest, _image(data, [bad.url, good.url]), [bad.url, good.url])
        assert dest.read_bytes() == data
        assert temp_leftovers(tmp_path) == []
        failed = {a.url: a.error or "" for a in result.attempts if a.outcome == "failed"}
        assert "mismatch" in failed.get(bad.url, ""), result.attempts
        assert good.url not in failed, result.attempts


def test_corrupt_copy_at_256_mib_sparse_file(tmp_path: Path) -> None:
    """256 MiB from a generated file (the origin sends it with sendfile; memory stays low)."""
    src = tmp_path / "src.raw"
    size = 256 * MiB
    h = hashlib.sha512()
    with open(src, "wb") as fh:
        block = os.urandom(MiB)
        for i in range(size // MiB):
            chunk = block[i % 7 :] + block[: i % 7]
            fh.write(chunk)
            h.update(chunk)
    image = _image(None, [], size=size, digest=h.hexdigest())
    with Origin.from_file(src) as bad, Origin.from_file(src) as good:
        bad.faults.corrupt_at = range(7, size, 64 << 10)
        urls = [bad.url, good.url]
        dest = tmp_path / "img"
        result = _fetch(dest, attrs_evolve(image, urls), urls)
        assert result.verified == "sha512"
        failed = {a.url for a in result.attempts if a.outcome == "failed"}
        assert good.url not in failed and bad.url in failed


def attrs_evolve(image: Image, urls: Sequence[str]) -> Image:
    import attrs

    return attrs.evolve(image, locations=tuple(Location(u) for u in urls))


class _CorruptsItsFirstPiece(Origin):
    """A copy whose first answer is one piece with one wrong byte, wherever the swarm put it
    (which copy claims piece 0 is a race between reader threads): that answer is cut after a
    piece, with byte 100 of every piece flipped; its later answers are right."""

    piece = 1 * MiB

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._first = True
        self._first_lock = threading.Lock()
        self._size = len(data)

    def snapshot(self) -> Faults:
        f = super().snapshot()
        with self._first_lock:
            first, self._first = self._first, False
        if first:
            f.corrupt_at = tuple(range(100, self._size, self.piece))
            f.cut_after_bytes = self.piece
        return f


def test_one_corrupt_piece_costs_at_most_two_pieces(tmp_path: Path) -> None:
    """A slower copy that sent one wrong piece: its pieces (the fewest) are compared first, and
    the repair re-fetches at most two pieces; the wrong one is the one rewritten."""
    piece = _CorruptsItsFirstPiece.piece
    data = os.urandom(16 * MiB)
    cfg = TransferConfig(backoff=0.05, piece_size=piece, stall_timeout=1.0)
    with Origin(data) as good, _CorruptsItsFirstPiece(data) as slow:
        slow.faults.uplink = 3e6
        good.faults.uplink = 20e6
        urls = [slow.url, good.url]
        dest = tmp_path / "img"
        result = _fetch(dest, _image(data, urls), urls, cfg)
        assert dest.read_bytes() == data
        first = slow.requests[0].range or "bytes=0-"
        bad = int(first.removeprefix("bytes=").split("-")[0]) // piece
        notes = [a.note or "" for a in result.attempts if "repaired" in (a.note or "")]
        assert len(notes) == 1, result.attempts
        refetched = int(notes[0].rsplit("; ", 1)[1].split(" ")[0])
        assert refetched <= 2
        assert f"[{bad}]" in notes[0], (bad, notes)
        extra = slow.bytes_sent + good.bytes_sent - len(data)
        assert extra <= (refetched + 2) * piece  # + in-flight pieces never finished


# -- nothing works: exit 3 quickly ------------------------------------------------------------
def _all_bad_world(tmp_path: Path, mib: int) -> tuple[AllLocationsFailed, list[Origin]]:
    data = os.urandom(mib * MiB)
    with (
        BlackHole() as h1,
        BlackHole() as h2,
        Origin(data) as busy,
        Origin(data) as hangup,
        Origin(data) as liar,
    ):
        busy.faults.status = 503
        hangup.faults.cut_after_bytes = 0
        liar.faults.corrupt_at = [len(data) // 3]
        urls = [h1.url, h2.url, busy.url, hangup.url, liar.url]
        dest = tmp_path / "img"
        # an hour's header deadline: an engine that waited it out even once would be stopped
        # by the test's hang guard (pytest-timeout) instead of failing with the reasons below
        cfg = TransferConfig(backoff=0.05, backoff_max=0.2, first_byte_timeout=3600.0)
        with pytest.raises(AllLocationsFailed) as info:
            _fetch(dest, _image(data, urls), urls, cfg)
        assert not dest.exists() and temp_leftovers(tmp_path) == []
        assert h1.connections <= 1 and h2.connections <= 1
        return info.value, [busy, hangup, liar]


@pytest.mark.parametrize("mib", [4, 64])
def test_all_bad_world_ends_without_waiting_out_header_deadlines(tmp_path: Path, mib: int) -> None:
    """Two black holes, a 503, a hang-up and a corrupt copy: the black holes are given a header
    deadline scaled to the copies that answered, not the configured one (an hour here): the
    download ends, with every copy's reason."""
    exc, _ = _all_bad_world(tmp_path, mib)
    errors = " ".join(a.error or "" for a in exc.attempts)
    assert "mismatch" in errors and "no response headers" in errors


# -- cancellation, deadlines, progress --------------------------------------------------------
def _slow_world(data: bytes, n: int) -> list[Origin]:
    origins = [Origin(data).start() for _ in range(n)]
    for o in origins:
        o.faults.uplink = 2e6
    return origins


# -- broken connections give back what they held ----------------------------------------------
@pytest.mark.timeout(120)  # a hang guard: the bug this catches is a reader waiting forever
def test_a_copy_that_cuts_every_answer_still_delivers(tmp_path: Path) -> None:
    """Each answer is cut after two pieces; the copy keeps making progress, so it is retried
    (progress resets the retry budget) far more times than the engine has read buffers. Each
    cut must give its buffer back, or the readers wait for one forever."""
    data = os.urandom(16 * MiB)
    cfg = attrs.evolve(CFG, piece_size=MiB, connections_per_source=1)
    with Origin(data) as o:
        o.faults.cut_after_bytes = 2 * MiB
        _fetch(tmp_path / "img", _image(data, [o.url]), [o.url], cfg=cfg)
        assert (tmp_path / "img").read_bytes() == data
        assert len(o.requests) >= 8  # every answer was cut: eight runs at least


@pytest.mark.timeout(120)
def test_unknown_size_copies_that_break_leave_the_pool_whole(tmp_path: Path) -> None:
    """No size in the record: one copy at a time, whole. Six copies break mid-body before a
    good one (more than the sink has buffers); the good one delivers."""
    data = os.urandom(4 * MiB)
    digest = hashlib.sha512(data).hexdigest()
    bad = [Origin(data).start() for _ in range(6)]
    try:
        for b in bad:
            b.faults.cut_after_bytes = MiB
        with Origin(data) as good:
            urls = [b.url for b in bad] + [good.url]
            cfg = attrs.evolve(CFG, retries=0)
            image = attrs.evolve(_image(None, urls, digest=digest), size=None)
            result = _fetch(tmp_path / "img", image, urls, cfg=cfg)
            assert (tmp_path / "img").read_bytes() == data
            assert result.source_url == good.url
    finally:
        for b in bad:
            b.stop()


@pytest.mark.parametrize("n", [1, 3])
def test_cancel_ends_without_waiting_for_reads_and_keeps_the_part(tmp_path: Path, n: int) -> None:
    data = os.urandom(16 * MiB)
    origins = _slow_world(data, n)
    dest = tmp_path / "img"
    dest.write_bytes(b"old")
    cancel = threading.Event()
    try:
        urls = [o.url for o in origins]
        threading.Timer(1.0, cancel.set).start()
        with pytest.raises(Cancelled):
            _fetch(dest, _image(data, urls), urls, cancel=cancel)
        stopped = time.monotonic() - cancelled_at(cancel)
        assert dest.read_bytes() == b"old"
        assert _part(dest).exists()
        # the reference, measured here: the rest of the image from the same copies (resumed)
        t0 = time.monotonic()
        _fetch(dest, _image(data, urls), urls)
        rest = time.monotonic() - t0
    finally:
        for o in origins:
            o.stop()
    assert dest.read_bytes() == data
    # cancelled without waiting for the reads in flight: a small part of what was left
    assert stopped < rest / 4, (stopped, rest)


_SET_AT: dict[int, float] = {}


def cancelled_at(ev: threading.Event) -> float:
    return _SET_AT[id(ev)]


@pytest.fixture(autouse=True)
def _stamp_events(monkeypatch: pytest.MonkeyPatch) -> None:
    orig = threading.Event.set

    def stamped(self: threading.Event) -> None:
        _SET_AT[id(self)] = time.monotonic()
        orig(self)

    monkeypatch.setattr(threading.Event, "set", stamped)


@pytest.mark.parametrize("n", [1, 3])
def test_total_timeout_ends_the_download_and_keeps_the_part(tmp_path: Path, n: int) -> None:
    data = os.urandom(16 * MiB)
    origins = _slow_world(data, n)
    dest = tmp_path / "img"
    cfg = TransferConfig(total_timeout=1.0, backoff=0.05)
    try:
        urls = [o.url for o in origins]
        t0 = time.monotonic()
        with pytest.raises(AllLocationsFailed, match="total_timeout"):
            _fetch(dest, _image(data, urls), urls, cfg)
        took = time.monotonic() - t0
        assert not dest.exists() and _part(dest).exists()
        # the reference, measured here: the rest of the image from the same copies (resumed)
        t0 = time.monotonic()
        _fetch(dest, _image(data, urls), urls)
        rest = time.monotonic() - t0
    finally:
        for o in origins:
            o.stop()
    assert dest.read_bytes() == data
    assert took >= cfg.total_timeout  # not before the deadline
    # ... and not long after it: a small part of what was left
    assert took - cfg.total_timeout < rest / 4, (took, rest)


@pytest.mark.parametrize("n", [1, 3])
def test_raising_progress_callback_aborts_cleanly(tmp_path: Path, n: int) -> None:
    """The callback's exception ends the download (all threads), from the calling thread."""
    data = os.urandom(16 * MiB)
    origins = _slow_world(data, n)
    dest = tmp_path / "img"
    threads: set[int] = set()
    seen: list[int] = []

    class Stop(Exception):
        pass

    def progress(done: int, total: int | None) -> None:
        threads.add(threading.get_ident())
        seen.append(done)
        if done > 2 * MiB:
            raise Stop

    try:
        urls = [o.url for o in origins]
        with pytest.raises(Stop):
            _fetch(dest, _image(data, urls), urls, progress=progress)
        sent = sum(o.bytes_sent for o in origins)
    finally:
        for o in origins:
            o.stop()
    assert threads == {threading.get_ident()}
    assert seen == sorted(seen)
    assert sent < len(data)  # stopped long before the transfer could have finished
    assert not dest.exists()


# -- topology is a cost -----------------------------------------------------------------------
def test_nearest_class_delivers_most_bytes_when_as_fast(tmp_path: Path) -> None:
    """A same-zone and an other-region copy at the same speed, the farther one ranked first
    (as a measurement could put it): the near copy delivers most bytes, in every run, and a
    farther copy that was drawn on says why."""
    data = os.urandom(16 * MiB)
    with Origin(data) as near, Origin(data) as far:
        near.faults.uplink = far.faults.uplink = 20e6
        urls = [far.url, near.url]
        classes = {near.url: 2, far.url: 3}
        for run in range(3):
            near.reset_counters()
            far.reset_counters()
            dest = tmp_path / f"img{run}"
            result = _fetch(dest, _image(data, urls), urls, classify=lambda loc: classes[loc.url])
            assert dest.read_bytes() == data
            shares = {s.url: s.bytes for s in result.sources}
            assert shares.get(near.url, 0) > shares.get(far.url, 0), shares
            for a in result.attempts:
                if a.url == far.url and a.outcome == "ok":
                    assert "farther than same-zone" in (a.note or ""), a


def test_farther_copy_joins_when_the_near_one_is_too_slow(tmp_path: Path) -> None:
    """The near copy alone is far slower than with the farther one: the farther one joins
    (after the near one showed its rate) and takes pieces."""
    data = os.urandom(16 * MiB)
    with Origin(data) as near, Origin(data) as far:
        near.faults.uplink = 3e6
        urls = [near.url, far.url]
        classes = {near.url: 2, far.url: 3}
        dest = tmp_path / "img"
        result = _fetch(dest, _image(data, urls), urls, classify=lambda loc: classes[loc.url])
        assert dest.read_bytes() == data
        shares = {s.url: s.bytes for s in result.sources}
        assert shares.get(far.url, 0) > len(data) // 2, shares
        note = next(a.note for a in result.attempts if a.url == far.url and a.outcome == "ok")
        assert note is not None and "joined as the nearer copies delivered" in note


def test_ctrl_c_keeps_the_part_and_the_next_run_resumes(tmp_path: Path) -> None:
    """SIGINT to ``locpick download``: exit 130 as before, dest untouched, the part and its
    piece record kept; the next run fetches only the pieces the record lacks."""
    import json
    import signal
    import subprocess
    import sys

    from tests.helpers import cli_env, image_record, run_cli, write_record

    data = os.urandom(8 * MiB)
    with Origin(data) as o:
        o.faults.uplink = 2e6
        rec = write_record(tmp_path / "rec.json", image_record("img-c", data, [o.url]))
        dest = tmp_path / "img"
        args = ["download", "img-c", str(dest), "--metadata", str(rec), "--no-progress"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "locpick", *args], env=cli_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        pieces = tmp_path / ".img.locpick-part.pieces"
        deadline = time.monotonic() + 60
        while not (pieces.exists() and json.loads(pieces.read_text() or "{}").get("done")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert not dest.exists() and _part(dest).exists()
        record = json.loads(pieces.read_text())
        held = len(record["done"]) * record["piece"]
        assert held > 0
        o.faults.uplink = None
        o.reset_counters()
        r = run_cli("download", "img-c", str(dest), "--metadata", str(rec), "--no-progress")
        assert r.returncode == 0, r.stderr
        assert dest.read_bytes() == data
        assert o.bytes_sent <= len(data) - held + (256 << 10)
