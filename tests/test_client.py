"""End-to-end downloads against real loopback origins (the Foundation scenarios)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import image_record, run_cli, temp_leftovers, write_record

import locpick
from locpick._demo.blackhole import BlackHole
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.config.model import Config, ProbeConfig

DATA = os.urandom(4 * 1024 * 1024 + 123)
CFG = Config(probe=ProbeConfig(deadline=1.5))


def test_best_location_wins(tmp_path: Path) -> None:
    """The origin that answers fast beats one with a long first-byte delay."""
    with Origin(DATA, faults=Faults(first_byte_delay=0.6)) as slow, Origin(DATA) as fast:
        rec = image_record("img", DATA, [slow.url, fast.url])
        result = locpick.download("img", tmp_path / "out", metadata=rec, config=CFG)
        assert result.source_url == fast.url
        assert result.verified == "sha512"
        assert (tmp_path / "out").read_bytes() == DATA
        assert fast.bytes_sent >= len(DATA)
        assert slow.bytes_sent < len(DATA)


def test_blackhole_and_refused_skipped_within_deadline(tmp_path: Path) -> None:
    """A black hole costs at most a header deadline scaled to the copy that answered (the
    engine probes by downloading): it delivers nothing, and the download behind it takes no
    longer than the same download without it plus that deadline (a reference measured here,
    not a fixed bound)."""
    with Origin(DATA) as good:
        rec = image_record("img", DATA, [good.url])
        t0 = time.monotonic()
        locpick.download("img", tmp_path / "ref", metadata=rec, config=CFG)
        reference = time.monotonic() - t0
    with BlackHole() as hole, Origin(DATA) as good:
        rec = image_record("img", DATA, [hole.url, "file:///etc/passwd", good.url])
        t0 = time.monotonic()
        result = locpick.download("img", tmp_path / "out", metadata=rec, config=CFG)
        elapsed = time.monotonic() - t0
        assert result.source_url == good.url
        skipped = {a.url: a.error for a in result.attempts if a.outcome == "skipped"}
        assert hole.url not in [s.url for s in result.sources]
        assert hole.connections <= 1  # asked once, never again
    assert elapsed < reference + CFG.probe.deadline + 1.0, (elapsed, reference)
    assert "not-on-configured-filesystem" in (skipped["file:///etc/passwd"] or "")


def test_corrupt_first_location_falls_back(tmp_path: Path) -> None:
    """Corrupt bytes fail the hash; the next location delivers and dest is verified."""
    with (
        Origin(DATA, faults=Faults(corrupt_at=range(1000, len(DATA), 1 << 20))) as bad,
        Origin(DATA, faults=Faults(first_byte_delay=0.3)) as good,
    ):
        rec = image_record("img", DATA, [bad.url, good.url])
        result = locpick.download("img", tmp_path / "out", metadata=rec, config=CFG)
        failed = {a.url: a.error or "" for a in result.attempts if a.outcome == "failed"}
        assert "mismatch" in failed[bad.url] and good.url not in failed
    assert (tmp_path / "out").read_bytes() == DATA
    assert temp_leftovers(tmp_path) == []


def test_cut_mid_transfer_resumes_on_next(tmp_path: Path) -> None:
    """A cut at 50 % is finished by the other copy: bytes served prove no restart (the engine
    shares pieces, so the other copy may take its pieces before the cut)."""
    half = len(DATA) // 2
    with (
        Origin(DATA, faults=Faults(cut_at_offset=half)) as cut,
        Origin(DATA, faults=Faults(first_byte_delay=0.3)) as other,
    ):
        rec = image_record("img", DATA, [cut.url, other.url])
        result = locpick.download("img", tmp_path / "out", metadata=rec, config=CFG)
        total = cut.bytes_sent + other.bytes_sent
    assert (tmp_path / "out").read_bytes() == DATA
    assert total <= len(DATA) + (1 << 20) + 2 * 65536  # at most the piece in flight at the cut
    assert sum(s.bytes for s in result.sources) == len(DATA)


def test_all_bad_exit_3_dest_untouched(tmp_path: Path) -> None:
    """Every location bad: exit 3, one line per problem, old dest intact, no temp files."""
    dest = tmp_path / "out"
    dest.write_bytes(b"previous image")
    with (
        Origin(DATA, faults=Faults(status=500)) as err,
        Origin(DATA, faults=Faults(corrupt_at=[5])) as corrupt,
    ):
        meta = write_record(
            tmp_path / "m.json", image_record("img", DATA, [err.url, corrupt.url, "rbd://a/b"])
        )
        proc = run_cli("download", "img", str(dest), "--metadata", str(meta), "--json")
        corrupt_url = corrupt.url
    assert proc.returncode == 3, proc.stderr
    assert dest.read_bytes() == b"previous image"
    assert temp_leftovers(tmp_path) == []
    assert "Traceback" not in proc.stderr
    assert corrupt_url in proc.stderr and "mismatch" in proc.stderr
    doc = json.loads(proc.stdout)
    assert {a["outcome"] for a in doc["attempts"]} == {"skipped", "failed"}


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "file:///tmp/../etc/passwd", "file://otherhost/etc/passwd"]
)
def test_file_outside_configured_mounts_refused(tmp_path: Path, url: str) -> None:
    """file:// not on a configured filesystem is refused, never opened."""
    rec = image_record("img", DATA, [url])
    with pytest.raises(locpick.AllLocationsFailed, match="not-on-configured-filesystem"):
        locpick.download("img", tmp_path / "out", metadata=rec, config=CFG)
    assert list(tmp_path.iterdir()) == []
