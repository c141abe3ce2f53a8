"""Swarm fetch (issue 15) against real loopback origins: pieces from several copies at once,
uplink caps shared per origin, cuts, stalls, corruption, silent copies and kill -9 resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from locpick._demo.blackhole import BlackHole
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.config.model import Config, TransferConfig
from locpick.errors import AllLocationsFailed
from locpick.fetch.transfer import fetch
from locpick.models import Image, Location, Reasons, Result, Score
from locpick.transports import Transports
from locpick.transports.base import Context
from tests.helpers import cli_env, image_record, run_cli, temp_leftovers, write_record

MiB = 1 << 20
SIZE = 16 * MiB
DATA = os.urandom(SIZE)
PIECE = 1 * MiB
G_COUNT = SIZE // PIECE

CFG = TransferConfig(
    connect_timeout=2.0,
    first_byte_timeout=10.0,
    idle_timeout=4.0,
    stall_timeout=1.0,
    backoff=0.05,
    backoff_max=0.5,
    piece_size=PIECE,
)


def _image(urls: list[str], data: bytes = DATA) -> Image:
    return Image(
        id="img-s",
        size=len(data),
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(data).hexdigest(),
        locations=tuple(Location(u) for u in urls),
    )


def _fetch(dest: Path, urls: list[str], cfg: TransferConfig = CFG, data: bytes = DATA) -> Result:
    ranked = [
        Score(Location(u), i + 1, float(i + 1), True, Reasons(latency_ms=1.0))
        for i, u in enumerate(urls)
    ]
    ctx = Context(Config(transfer=cfg))
    try:
        return fetch(_image(urls, data), ranked, dest, Transports(ctx), transfer=cfg)
    finally:
        ctx.close()


@pytest.fixture
def origins() -> Iterator[list[Origin]]:
    os_ = [Origin(DATA).start() for _ in range(4)]
    try:
        yield os_
    finally:
        for o in os_:
            o.stop()


def _ok(dest: Path) -> None:
    assert dest.read_bytes() == DATA
    assert temp_leftovers(dest.parent) == []


def test_pieces_come_from_every_copy_and_no_byte_is_wasted(
    tmp_path: Path, origins: list[Origin]
) -> None:
    """Four equal capped copies: each serves a share; the origins send the image exactly once."""
    for o in origins:
        o.faults.uplink = 8e6
    result = _fetch(tmp_path / "img", [o.url for o in origins])
    _ok(tmp_path / "img")
    assert all(o.bytes_sent > 0 for o in origins)
    assert sum(o.bytes_sent for o in origins) == SIZE
    assert sorted(s.url for s in result.sources) == sorted(o.url for o in origins)
    assert sum(s.bytes for s in result.sources) == SIZE
    assert result.source_url == result.sources[0].url
    assert all(r.range and r.range.startswith("bytes=") for o in origins for r in o.requests)


def test_max_sources_1_is_a_swarm_of_one(tmp_path: Path, origins: list[Origin]) -> None:
    """max_sources = 1: one location, one request for every piece (a swarm of one)."""
    cfg = TransferConfig(max_sources=1, piece_size=PIECE)
    result = _fetch(tmp_path / "img", [o.url for o in origins], cfg)
    _ok(tmp_path / "img")
    assert [len(o.requests) for o in origins] == [1, 0, 0, 0]
    assert origins[0].requests[0].range == f"bytes=0-{SIZE - 1}"
    assert [s.url for s in result.sources] == [origins[0].url]


def test_uplink_cap_is_shared_by_connections(tmp_path: Path) -> None:
    """Two connections to one origin share its uplink: together no faster than one."""
    with Origin(DATA) as o:
        o.faults.uplink = 16e6
        t0 = time.monotonic()
        _fetch(tmp_path / "a", [o.url, o.url + "?x"], TransferConfig(piece_size=PIECE))
        two = time.monotonic() - t0
        assert o.bytes_sent == SIZE
    # 16 MiB at 16 MB/s is ~1.05 s whatever the number of connections; a per-connection cap
    # would have taken half that.
    assert two > SIZE / 16e6 * 0.85


def test_a_fast_copy_takes_over_a_slow_ones_tail(tmp_path: Path, origins: list[Origin]) -> None:
    """One fast copy, three slow ones: the fast one delivers most of the image."""
    origins[0].faults.uplink = 60e6
    for o in origins[1:]:
        o.faults.uplink = 1e6
    result = _fetch(tmp_path / "img", [o.url for o in origins[::-1]])
    _ok(tmp_path / "img")
    assert result.source_url == origins[0].url
    assert result.sources[0].bytes >= SIZE * 0.7
    slow = sum(o.bytes_sent for o in origins[1:])
    assert slow < SIZE * 0.3


def test_endgame_duplicates_the_last_slow_piece(tmp_path: Path, origins: list[Origin]) -> None:
    """A copy that stalls mid-piece: its piece is fetched again elsewhere, first one wins."""
    origins[1].faults.stall_after = PIECE // 2
    origins[1].faults.stall_seconds = 30
    result = _fetch(tmp_path / "img", [o.url for o in origins[:2]])
    _ok(tmp_path / "img")
    assert result.source_url == origins[0].url
    assert origins[0].bytes_sent >= SIZE - PIECE // 2


def test_a_cut_copy_leaves_its_pieces_to_the_others(tmp_path: Path, origins: list[Origin]) -> None:
    """A copy that cuts every response: the others finish, the image is verified."""
    origins[0].faults.cut_after_bytes = PIECE // 3
    result = _fetch(tmp_path / "img", [o.url for o in origins])
    _ok(tmp_path / "img")
    assert origins[0].url not in [s.url for s in result.sources]
    assert any(a.url == origins[0].url and a.outcome == "failed" for a in result.attempts)


def test_bad_bytes_are_found_and_only_their_piece_repaired(
    tmp_path: Path, origins: list[Origin]
) -> None:
    """A slow copy corrupts what it sends: its pieces (the fewest, so compared first) are
    fetched again from another copy and compared; only they are re-fetched and rewritten, and
    the copy is blamed (a recorded failure: history demotes it)."""
    bad = origins[3]
    for o in origins[:3]:
        o.faults.uplink = 20e6
    bad.faults.uplink = 3e6
    bad.faults.corrupt_at = list(range(100, SIZE, PIECE))  # a byte of every piece it sends
    seen: list[tuple[str, bool, str | None]] = []
    urls = [o.url for o in origins]
    ranked = [Score(Location(u), i + 1, float(i + 1), True, Reasons()) for i, u in enumerate(urls)]
    ctx = Context(Config(transfer=CFG))
    try:
        result = fetch(
            _image(urls), ranked, tmp_path / "img", Transports(ctx), transfer=CFG,
            observer=lambda loc, ok, n, s, err: seen.append((loc.url, ok, err)),
        )  # fmt: skip
    finally:
        ctx.close()
    _ok(tmp_path / "img")
    assert (bad.url, False) in [(u, ok) for u, ok, _ in seen]
    blamed = [a for a in result.attempts if a.url == bad.url and a.outcome == "failed"]
    assert blamed and "mismatch" in (blamed[0].error or "")
    notes = [a.note or "" for a in result.attempts if "repaired" in (a.note or "")]
    assert len(notes) == 1, result.attempts
    fixed = notes[0].split("[", 1)[1].split("]", 1)[0].split(", ")
    refetched = int(notes[0].rsplit("; ", 1)[1].split(" ")[0])
    # every piece it delivered was bad, and nothing but those pieces was fetched again
    assert 1 <= len(fixed) == refetched < G_COUNT // 2
    extra = sum(o.bytes_sent for o in origins) - SIZE
    assert extra <= (refetched + 2) * PIECE  # + in-flight pieces it never finished


def test_all_bytes_from_one_bad_copy_start_over_without_it(tmp_path: Path) -> None:
    """When every byte came from the copy that was wrong, it is dropped and the rest refetched."""
    with Origin(DATA) as good, Origin(DATA) as liar:
        liar.faults.corrupt_at = [5]
        good.faults.first_byte_delay = 0.5
        result = _fetch(tmp_path / "img", [liar.url, good.url])
        _ok(tmp_path / "img")
        assert any(a.url == liar.url and "mismatch" in (a.error or "") for a in result.attempts)


class _GoneAfterThreeQuarters(Origin):
    """A copy that is gone (404) for requests after it sent three quarters of the image: a
    peer whose fill failed after it had sent most pieces."""

    def snapshot(self) -> Faults:
        f = super().snapshot()
        if self.bytes_sent >= SIZE * 3 // 4:
            f.status = 404
        return f


def test_a_dropped_copy_whose_pieces_were_wrong_is_still_proven_wrong(tmp_path: Path) -> None:
    """A fast copy sends corrupt pieces, then answers 404 and is dropped; the final hash fails.
    Its pieces are compared with the live copy's and repaired (not the whole image fetched
    again), and it gets the mismatch as a failed attempt, which the report counts."""
    with _GoneAfterThreeQuarters(DATA) as liar, Origin(DATA) as good:
        liar.faults.corrupt_at = list(range(100, SIZE, PIECE))
        liar.faults.cut_after_bytes = 2 * PIECE  # a new request every two pieces
        good.faults.first_byte_delay = 0.3
        good.faults.uplink = 20e6
        result = _fetch(tmp_path / "img", [liar.url, good.url])
        _ok(tmp_path / "img")
        mine = [a for a in result.attempts if a.url == liar.url and a.outcome == "failed"]
        assert any("HTTP 404" in (a.error or "") for a in mine), result.attempts
        assert any("mismatch" in (a.error or "") for a in mine), result.attempts
        # only the liar's pieces came again from the good copy (+ in-flight), not the image
        assert good.bytes_sent <= SIZE + 2 * PIECE, good.bytes_sent
        # the shares say whose bytes are in the file: the repaired pieces are the good copy's
        fixed = next(a.error for a in mine if "mismatch" in (a.error or "")) or ""
        n_fixed = len(fixed.split("[", 1)[1].split(","))
        shares = {s.url: s.bytes for s in result.sources}
        assert sum(shares.values()) == SIZE, result.sources
        assert shares.get(liar.url, 0) + n_fixed * PIECE <= liar.bytes_sent, result.sources


def test_nothing_works_gives_up_after_one_wait_for_the_silent_copy(tmp_path: Path) -> None:
    """Corrupt copy + 404 + black hole: exit 3 with the usual report, and the black hole gets
    one connection, not a retry per timeout (the wait is scaled to the copies that answered)."""
    with Origin(DATA) as liar, Origin(DATA) as gone, BlackHole() as hole:
        liar.faults.corrupt_at = [SIZE // 3]
        gone.faults.status = 404
        dest = tmp_path / "img"
        with pytest.raises(AllLocationsFailed) as info:
            _fetch(dest, [liar.url, gone.url, hole.url])
        assert "no location delivered a verified image" in str(info.value)
        assert hole.connections == 1
        assert len(gone.requests) == 1
        assert not dest.exists()
        assert temp_leftovers(tmp_path) == []
        errors = {a.url: a.error or "" for a in info.value.attempts if a.outcome == "failed"}
        assert "no response headers" in errors[hole.url]
        assert "mismatch" in errors[liar.url]


def test_kill_9_mid_swarm_then_only_missing_pieces_are_fetched(tmp_path: Path) -> None:
    """kill -9 during a swarm; the rerun fetches only the pieces the record lacks."""
    with Origin(DATA) as a, Origin(DATA) as b:
        a.faults.uplink = b.faults.uplink = 2e6
        conf = tmp_path / "c.toml"
        conf.write_text(f"history_file = ''\n[transfer]\npiece_size = {PIECE}\n")
        rec = write_record(tmp_path / "rec.json", image_record("img-s", DATA, [a.url, b.url]))
        dest = tmp_path / "out" / "img"
        dest.parent.mkdir()
        record = dest.parent / ".img.locpick-part.pieces"
        args = ["download", "img-s", str(dest), "--metadata", str(rec), "--json"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "locpick", *args],
            env=cli_env({"LOCPICK_CONFIG": str(conf)}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        done: list[int] = []
        while len(done) < 8:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
            try:
                done = json.loads(record.read_text())["done"]
            except (OSError, ValueError, KeyError):
                done = []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = json.loads(record.read_text())["done"]
        assert not dest.exists() and done
        a.faults.uplink = b.faults.uplink = None
        a.reset_counters()
        b.reset_counters()
        r = run_cli(*args, env={"LOCPICK_CONFIG": str(conf)})
        assert r.returncode == 0, r.stderr
        _ok(dest)
        missing = SIZE - len(done) * PIECE
        assert json.loads(r.stdout)["bytes"] == missing
        # no request of the rerun asked for a piece the record had
        held = {range(p * PIECE, (p + 1) * PIECE) for p in done}
        for req in a.requests + b.requests:
            assert req.range is not None
            first, last = (int(x) for x in req.range.removeprefix("bytes=").split("-"))
            assert not any(first < h.stop and h.start <= last for h in held), req.range
        # sent: the missing pieces, plus what a connection cut after a steal had in flight
        assert missing <= a.bytes_sent + b.bytes_sent < SIZE


def test_connections_per_source_opens_parallel_ranges(tmp_path: Path) -> None:
    """connections_per_source = 2: each copy serves several runs, the image is verified."""
    with Origin(DATA) as a, Origin(DATA) as b:
        a.faults.uplink = b.faults.uplink = 8e6
        cfg = TransferConfig(piece_size=PIECE, connections_per_source=2)
        result = _fetch(tmp_path / "img", [a.url, b.url], cfg)
        _ok(tmp_path / "img")
        assert a.connections >= 2 and b.connections >= 2
        assert a.bytes_sent + b.bytes_sent <= SIZE + PIECE
        assert len(result.sources) == 2


def test_farther_copy_stays_out_while_near_ones_suffice(tmp_path: Path) -> None:
    """Topology: two same-zone copies with a measured rate; an other-region copy of similar
    speed adds less than topology_tolerance and is not drawn on; rank says why."""
    from locpick.fetch.swarm.explain import explain

    with Origin(DATA) as a, Origin(DATA) as b, Origin(DATA) as far:
        urls = [a.url, b.url, far.url]
        tops = ["same-zone (x1.00)", "same-zone (x1.00)", "same-region (x1.25)"]
        bps = [50e6, 50e6, 10e6]
        ranked = [
            Score(Location(u), i + 1, float(i + 1), True,
                  Reasons(latency_ms=1.0, throughput_bps=r, topology=t))
            for i, (u, t, r) in enumerate(zip(urls, tops, bps, strict=True))
        ]  # fmt: skip
        classes = {a.url: 2, b.url: 2, far.url: 3}
        ctx = Context(Config(transfer=CFG))
        try:
            fetch(
                _image(urls), ranked, tmp_path / "img", Transports(ctx), transfer=CFG,
                classify=lambda loc: classes[loc.url],
            )  # fmt: skip
        finally:
            ctx.close()
        _ok(tmp_path / "img")
        assert far.requests == []
        scored = explain(_image(urls), ranked, CFG, 0.2, True, lambda loc: classes[loc.url])
        notes = [s.reasons.notes[-1] for s in scored]
        assert notes[0].startswith("swarm: draws") and "joins only if" in notes[2]


def _holey_part(dest: Path, piece: int) -> None:
    """What a killed swarm leaves: piece 1 written, piece 0 a hole, and its records."""
    part = dest.parent / f".{dest.name}.locpick-part"
    with open(part, "wb") as fh:
        fh.seek(piece)
        fh.write(DATA[piece : 2 * piece])
    img = _image([])
    side = {"version": 1, "image_id": img.id, "size": SIZE, "algo": "sha512"}
    side |= {"hash": img.os_hash_value, "validators": {}}
    part.with_name(part.name + ".json").write_text(json.dumps(side))
    ident = {"image_id": img.id, "size": SIZE, "hash": img.os_hash_value}
    record = {"version": 1, "piece": piece, "identity": ident, "done": [1]}
    part.with_name(part.name + ".pieces").write_text(json.dumps(record))


def test_a_swarm_part_is_continued_by_a_single_copy(tmp_path: Path) -> None:
    """max_sources = 1 after a killed swarm: the single copy is a swarm of one, so it fetches
    only the pieces the record lacks (the hole at piece 0, then the rest after piece 1)."""
    dest = tmp_path / "img"
    _holey_part(dest, PIECE)
    with Origin(DATA) as a, Origin(DATA) as b:
        _fetch(dest, [a.url, b.url], TransferConfig(max_sources=1, piece_size=PIECE))
        _ok(dest)
        assert a.bytes_sent <= SIZE - PIECE


def test_a_record_of_another_piece_size_trusts_nothing(tmp_path: Path) -> None:
    """A swarm with a different piece size cannot tell the holes: every piece is fetched."""
    dest = tmp_path / "img"
    _holey_part(dest, PIECE // 2)
    with Origin(DATA) as a, Origin(DATA) as b:
        _fetch(dest, [a.url, b.url])
        _ok(dest)
        assert a.bytes_sent + b.bytes_sent >= SIZE


def test_cli_summary_names_each_share(tmp_path: Path) -> None:
    """The one-line summary lists the locations pieces came from, with bytes and rate."""
    with Origin(DATA) as a, Origin(DATA) as b:
        a.faults.uplink = b.faults.uplink = 20e6
        rec = write_record(tmp_path / "rec.json", image_record("img-s", DATA, [a.url, b.url]))
        r = run_cli("download", "img-s", str(tmp_path / "img"), "--metadata", str(rec))
        assert r.returncode == 0, r.stderr
        line = r.stdout.splitlines()[0]
        assert "pieces from 2 locations" in line and a.url in line and b.url in line
