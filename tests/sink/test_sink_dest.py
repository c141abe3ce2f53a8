"""A destination that cannot be subverted (planted symlinks and hard links, permissions, atomic
replace, readers never see a partial file), end to end against a loopback origin."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import image_record, run_cli, temp_leftovers, write_record

import locpick
from locpick._demo.origin import Origin
from locpick.config.model import Config, SecurityConfig
from locpick.errors import InputError

DATA = os.urandom(64 * 1024)


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin(DATA) as o:
        yield o


@pytest.mark.parametrize(
    ("planted_name", "link", "sidecar"),
    [
        (".img.raw.locpick-part", "symlink", False),
        # a sidecar matching the image (id, size and hash are public) invites a resume
        (".img.raw.locpick-part", "symlink", True),
        (".img.raw.locpick-part", "hardlink", True),
        (".img.raw.locpick-part.json", "symlink", False),
        (".img.raw.locpick-part.json.tmp", "symlink", False),
    ],
)
def test_planted_link_at_part_name_is_not_followed(
    origin: Origin, tmp_path: Path, planted_name: str, link: str, sidecar: bool
) -> None:
    """Downloads write to the predictable ``.DEST.locpick-part`` (+ ``.json`` sidecar): a
    symlink or hard link planted at those names is never written through, even when a
    forged sidecar makes the part look resumable."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "img.raw"
    planted = out / planted_name
    if link == "symlink":
        planted.symlink_to(victim)
    else:
        os.link(victim, planted)
    if sidecar:
        meta = {
            "version": 1,
            "image_id": "img",
            "size": len(DATA),
            "algo": "sha512",
            "hash": hashlib.sha512(DATA).hexdigest(),
            "validators": {},
        }
        (out / ".img.raw.locpick-part.json").write_text(json.dumps(meta))
    record = image_record("img", DATA, [origin.url])
    locpick.download("img", dest, metadata=record)
    assert dest.read_bytes() == DATA
    assert victim.read_bytes() == b"precious"
    assert not victim.is_symlink() and victim.stat().st_nlink == 1
    assert temp_leftovers(out) == []


def test_symlink_at_dest_is_replaced_not_followed(origin: Origin, tmp_path: Path) -> None:
    """A symlink at DEST is replaced by the verified file; its target is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dest = tmp_path / "img.raw"
    dest.symlink_to(victim)
    locpick.download("img", dest, metadata=image_record("img", DATA, [origin.url]))
    assert not dest.is_symlink() and dest.read_bytes() == DATA
    assert victim.read_bytes() == b"precious"


def test_final_mode_default_and_configurable(origin: Origin, tmp_path: Path) -> None:
    """0644 by default whatever the umask; [security] file_mode sets it."""
    record = image_record("img", DATA, [origin.url])
    old = os.umask(0o077)
    try:
        a = tmp_path / "a.raw"
        locpick.download("img", a, metadata=record)
        b = tmp_path / "b.raw"
        locpick.download(
            "img", b, metadata=record, config=Config(security=SecurityConfig(file_mode=0o600))
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == 0o644
    assert stat.S_IMODE(b.stat().st_mode) == 0o600


def test_dest_directory_must_exist(origin: Origin, tmp_path: Path) -> None:
    """A missing dest directory is bad input (exit 2) and is not created."""
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [origin.url]))
    dest = tmp_path / "nope" / "img.raw"
    r = run_cli("download", "img", str(dest), "--metadata", str(meta))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not dest.parent.exists()
    with pytest.raises(InputError):
        locpick.download("img", dest, metadata=image_record("img", DATA, [origin.url]))


def test_existing_dest_replaced_only_after_verification(origin: Origin, tmp_path: Path) -> None:
    """Corrupt bytes never replace an existing DEST; no temp file is left beside it."""
    dest = tmp_path / "img.raw"
    dest.write_bytes(b"old good image")
    origin.faults.corrupt_at = [100]
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [origin.url]))
    r = run_cli("download", "img", str(dest), "--metadata", str(meta))
    assert r.returncode == 3 and "mismatch" in r.stderr
    assert dest.read_bytes() == b"old good image"
    assert temp_leftovers(tmp_path) == []


def test_readers_never_see_a_partial_dest(origin: Origin, tmp_path: Path) -> None:
    """While a download runs, DEST is either the old file or the complete new one."""
    dest = tmp_path / "img.raw"
    dest.write_bytes(b"old")
    origin.faults.bandwidth = 256 * 1024
    seen: set[bytes] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.add(dest.read_bytes())

    t = threading.Thread(target=watch)
    t.start()
    try:
        locpick.download("img", dest, metadata=image_record("img", DATA, [origin.url]))
    finally:
        done.set()
        t.join()
    seen.add(dest.read_bytes())
    assert seen <= {b"old", DATA} and DATA in seen
