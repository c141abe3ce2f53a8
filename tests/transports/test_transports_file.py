"""Local filesystem safety of the file transport: file:// confinement (traversal, symlinks,
devices, FIFOs); the destination side is tests/test_sink_dest.py."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from helpers import image_record

import locpick
from locpick.config.model import Config, Filesystem, SecurityConfig
from locpick.errors import AllLocationsFailed, UnsupportedLocation
from locpick.models import Image, Location
from locpick.transports.base import Context
from locpick.transports.file import sharedfs
from locpick.transports.file.transport import FileTransport

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
    with pytest.raises(UnsupportedLocation, match="not-regular-file"):  # blocks forever if wrong
        sharedfs.open_confined(str(fifo), os.stat(share).st_dev)
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
