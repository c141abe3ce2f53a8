"""Local filesystem safety: file:// confinement (traversal, symlinks, devices, FIFOs) and a
destination that cannot be subverted (planted symlinks, permissions, atomic replace)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import image_record, run_cli, temp_leftovers, write_record
from origin import Origin

import locpick
from locpick import sharedfs
from locpick.config import Config, Filesystem, SecurityConfig
from locpick.errors import AllLocationsFailed, InputError, UnsupportedLocation
from locpick.models import Image, Location
from locpick.transports import Context
from locpick.transports.file import FileTransport

DATA = os.urandom(64 * 1024)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "img.raw").write_bytes(DATA)
    return root


def _config(root: Path, **security: object) -> Config:
    fs = Filesystem(id="fs1", mountpoint=str(root), require_mount=False)
    return Config(filesystems=(fs,), security=SecurityConfig(**security))  # type: ignore[arg-type]


def _image(*urls: str, size: int = len(DATA)) -> Image:
    return Image(
        id="img",
        size=size,
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(DATA).hexdigest(),
        locations=tuple(Location(url=u) for u in urls),
    )


# -- file:// confinement ------------------------------------------------------------------------


def test_file_location_inside_share_is_used(share: Path, tmp_path: Path) -> None:
    """The control case: a regular file on the configured filesystem is copied and verified."""
    record = image_record("img", DATA, [f"file://{share}/img.raw"])
    dest = tmp_path / "out.raw"
    result = locpick.download("img", dest, metadata=record, config=_config(share))
    assert result.method == "copy" and dest.read_bytes() == DATA


@pytest.mark.parametrize(
    ("suffix", "needle"),
    [
        ("/../outside.raw", "'..' segment in path"),
        ("/%2e%2e/outside.raw", "'..' segment in path"),
        ("/sub/..%2F..%2Foutside.raw", "'..' segment in path"),
        ("/img.raw%00.txt", "not-on-configured-filesystem"),
    ],
)
def test_path_traversal_refused(share: Path, suffix: str, needle: str) -> None:
    """'..' (plain or percent-encoded) and NUL bytes never resolve outside the share."""
    (share.parent / "outside.raw").write_bytes(DATA)
    transport = FileTransport(Context(_config(share)))
    loc = Location(url=f"file://{share}{suffix}")
    reason = transport.check(loc, _image(loc.url))
    assert reason is not None and needle in reason


def test_symlink_escape_refused(share: Path) -> None:
    """A symlink inside the share pointing outside it is refused, never opened."""
    secret = share.parent / "secret.raw"
    secret.write_bytes(DATA)
    (share / "link.raw").symlink_to(secret)
    (share / "dirlink").symlink_to(share.parent)
    transport = FileTransport(Context(_config(share)))
    for url in (f"file://{share}/link.raw", f"file://{share}/dirlink/secret.raw"):
        reason = transport.check(Location(url=url), _image(url))
        assert reason is not None and "resolves outside" in reason


def test_paths_outside_any_share_refused(share: Path) -> None:
    """/etc/passwd, remote hosts and unconfigured paths: not-on-configured-filesystem."""
    transport = FileTransport(Context(_config(share)))
    for url in ("file:///etc/passwd", "file://evil.example/etc/passwd", "file:///proc/self/mem"):
        reason = transport.check(Location(url=url), _image(url))
        assert reason is not None and "not-on-configured-filesystem" in reason


def test_fifo_refused_without_blocking(share: Path, tmp_path: Path) -> None:
    """A FIFO on the share is not a regular file; opening one directly does not block."""
    fifo = share / "pipe.raw"
    os.mkfifo(fifo)
    transport = FileTransport(Context(_config(share)))
    url = f"file://{fifo}"
    reason = transport.check(Location(url=url), _image(url, size=0))
    assert reason is not None and reason.startswith("not-regular-file") and "FIFO" in reason
    # The race check() cannot see: the path became a FIFO after the check.
    t0 = time.monotonic()
    with pytest.raises(UnsupportedLocation, match="not-regular-file"):
        sharedfs.open_confined(str(fifo), os.stat(share).st_dev)
    assert time.monotonic() - t0 < 5
    record = image_record("img", DATA, [url])
    with pytest.raises(AllLocationsFailed, match="not-regular-file"):
        locpick.download("img", tmp_path / "o.raw", metadata=record, config=_config(share))


def test_device_file_refused(share: Path) -> None:
    """A character device on the share (here /dev/zero's numbers) is never read."""
    dev = share / "zero.raw"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        # No CAP_MKNOD here: use the device through a symlink, refused for leaving the share.
        dev.symlink_to("/dev/zero")
    transport = FileTransport(Context(_config(share)))
    url = f"file://{dev}"
    reason = transport.check(Location(url=url), _image(url))
    assert reason is not None
    if dev.is_symlink():
        assert "resolves outside" in reason
    else:
        assert reason.startswith("not-regular-file") and "character device" in reason
        with pytest.raises(UnsupportedLocation, match="not-regular-file"):
            sharedfs.open_confined(str(dev), os.stat(share).st_dev)


# -- destination safety -------------------------------------------------------------------------


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
