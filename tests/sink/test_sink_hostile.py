"""Issue 18: what a local user on the node, or a broken local state, can do to a download.

Attacks 6 (FIFO and held lock beside DEST), 7 (a record without size and an endless first
location on a small filesystem) and 8 (the node cache failing after a verified download).
Everything is real: FIFOs, a flock held by another process, tmpfs mounts, loopback origins.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_security import RawServer, endless_body
from fixtures_sharedfs import mount_tmpfs, unmount
from helpers import cli_env, image_record, run_cli, temp_leftovers, write_record

from locpick._demo.origin import Origin
from locpick.config.model import Config, TransferConfig
from locpick.errors import SizeMismatch
from locpick.fetch.transfer import fetch
from locpick.models import Image, Location, Reasons, Result, Score
from locpick.sink.atomic import AtomicSink
from locpick.sink.hashing import Expected
from locpick.transports import Transports
from locpick.transports.base import Context

IMG = "18181818-0000-4000-8000-000000000008"


@pytest.fixture
def ro_cache(tmp_path: Path) -> Iterator[Path]:
    """A node cache directory (with its ``images/``) on a tmpfs remounted read-only."""
    where = tmp_path / "rocache"
    mount_tmpfs(where, size="4m")
    try:
        (where / "images").mkdir()
        proc = subprocess.run(
            ["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot remount read-only ({proc.stderr.strip()})")
        yield where
    finally:
        unmount(where)


def _download_json(tmp_path: Path, data: bytes, url: str, cache: Path) -> tuple[int, str, str]:
    meta = write_record(tmp_path / "m.json", image_record(IMG, data, [url]))
    proc = run_cli(
        "download", IMG, str(tmp_path / "dest"), "--metadata", str(meta),
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def test_read_only_cache_after_a_verified_download_is_a_warning(
    tmp_path: Path, ro_cache: Path
) -> None:
    """Attack 8: a cache that cannot be written does not turn a verified dest into exit 3."""
    data = os.urandom(200_000)
    with Origin(data) as origin:
        code, out, err = _download_json(tmp_path, data, origin.url, ro_cache)
    assert code == 0, err
    assert (tmp_path / "dest").read_bytes() == data
    doc = json.loads(out)
    assert doc["verified"] == "sha512" and doc["method"] == "download"
    assert doc["cache"]["status"] == "failed"
    assert "read-only" in doc["cache"]["error"].lower()
    assert "warning" in err.lower() or "not cached" in err
    assert temp_leftovers(tmp_path) == []


def test_symlinked_cache_lock_after_a_verified_download_is_a_warning(tmp_path: Path) -> None:
    """Attack 8: a cache lock that is a dangling symlink: dest delivered, exit 0, cache failed."""
    data = os.urandom(200_000)
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    (cache / ".lock").symlink_to(tmp_path / "no-such-dir" / "lock")
    with Origin(data) as origin:
        code, out, err = _download_json(tmp_path, data, origin.url, cache)
    assert code == 0, err
    assert (tmp_path / "dest").read_bytes() == data
    doc = json.loads(out)
    assert doc["cache"]["status"] == "failed" and doc["cache"]["error"]
    assert not (tmp_path / "no-such-dir").exists()


# -- attack 6: a local user plants a FIFO or holds the lock beside DEST --------------------------

#: A hang detector for a subprocess, not a timing assertion: a blocked open never returns.
HANG = 60.0

_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def _holder(lock: Path) -> subprocess.Popen[str]:
    """Another process holding an exclusive flock on ``lock`` until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=HANG)


def _record(tmp_path: Path, data: bytes, *urls: str, **extra: object) -> Path:
    return write_record(tmp_path / "m.json", image_record(IMG, data, urls, **extra))


def test_fifo_at_the_part_sidecar_does_not_block(tmp_path: Path) -> None:
    """Attack 6: a FIFO planted at .DEST.locpick-part.json is not opened for reading."""
    data = os.urandom(300_000)
    dest = tmp_path / "dest"
    os.mkfifo(tmp_path / ".dest.locpick-part.json")
    with Origin(data) as origin:
        proc = run_cli(
            "download", IMG, str(dest), "--metadata", str(_record(tmp_path, data, origin.url)),
            timeout=HANG,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == data
    assert temp_leftovers(tmp_path) == []


def test_fifo_at_the_part_with_a_matching_sidecar_does_not_block(tmp_path: Path) -> None:
    """Attack 6: a FIFO at the part itself, behind a sidecar that matches the image, is replaced."""
    data = os.urandom(300_000)
    dest = tmp_path / "dest"
    rec = image_record(IMG, data, [])
    side = {
        "version": 1,
        "image_id": IMG,
        "size": len(data),
        "algo": "sha512",
        "hash": rec["os_hash_value"],
        "validators": {},
    }
    (tmp_path / ".dest.locpick-part.json").write_text(json.dumps(side))
    os.mkfifo(tmp_path / ".dest.locpick-part")
    with Origin(data) as origin:
        proc = run_cli(
            "download", IMG, str(dest), "--metadata", str(_record(tmp_path, data, origin.url)),
            timeout=HANG,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == data
    assert temp_leftovers(tmp_path) == []


def test_lock_held_by_another_process_is_a_bounded_wait_naming_its_pid(tmp_path: Path) -> None:
    """Attack 6: a flock held on .DEST.locpick-lock: exit 3 after [transfer] lock_timeout,
    naming the holder's pid; dest untouched."""
    data = os.urandom(100_000)
    dest = tmp_path / "dest"
    config = tmp_path / "c.toml"
    config.write_text("[transfer]\nlock_timeout = 0.5\n")
    holder = _holder(tmp_path / ".dest.locpick-lock")
    try:
        with Origin(data) as origin:
            proc = run_cli(
                "download", IMG, str(dest), "--metadata", str(_record(tmp_path, data, origin.url)),
                "--config", str(config), timeout=HANG,
            )  # fmt: skip
    finally:
        _release(holder)
    assert proc.returncode == 3, proc.stderr
    assert f"pid {holder.pid}" in proc.stderr
    assert "lock_timeout" in proc.stderr
    assert not dest.exists()
    assert proc.stderr.count("\n") <= 3


def test_fifo_at_dest_after_waiting_for_the_lock_does_not_block(tmp_path: Path) -> None:
    """Attack 6: after waiting on the lock, a FIFO found at DEST is not opened for reading."""
    data = os.urandom(100_000)
    dest = tmp_path / "dest"
    holder = _holder(tmp_path / ".dest.locpick-lock")
    try:
        with Origin(data) as origin:
            run = subprocess.Popen(
                [sys.executable, "-m", "locpick", "download", IMG, str(dest), "--metadata",
                 str(_record(tmp_path, data, origin.url))],
                stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cli_env(),
            )  # fmt: skip
            assert run.stderr is not None
            line = run.stderr.readline()
            assert "waiting" in line, line
            os.mkfifo(dest)
            _release(holder)
            _out, err = run.communicate(timeout=HANG)
    finally:
        if holder.poll() is None:
            _release(holder)
    assert run.returncode == 0, err
    assert dest.read_bytes() == data


# -- attack 7: a record without size and an endless first location ------------------------------


def _sizeless(data: bytes) -> Image:
    return Image(
        id=IMG,
        size=None,
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(data).hexdigest(),
    )


def _ranked(*urls: str) -> list[Score]:
    return [
        Score(Location(u), rank=i + 1, score=float(i + 1), usable=True, reasons=Reasons())
        for i, u in enumerate(urls)
    ]


def _fetch_in_order(
    dest: Path, data: bytes, urls: list[str], *, max_bytes: int | None = None
) -> Result:
    cfg = TransferConfig(first_byte_timeout=5.0, stall_timeout=1.0, backoff=0.05)
    ctx = Context(Config(transfer=cfg))
    try:
        extra = {} if max_bytes is None else {"max_bytes": max_bytes}
        image = _sizeless(data)
        return fetch(image, _ranked(*urls), dest, Transports(ctx), transfer=cfg, **extra)
    finally:
        ctx.close()


def test_endless_first_location_on_a_small_filesystem_moves_on(tmp_path: Path) -> None:
    """Attack 7: no size in the record, an endless body first on an 8 MiB tmpfs: the endless
    body fills the disk, is dropped (space freed), and the honest second location delivers."""
    where = tmp_path / "small"
    mount_tmpfs(where, size="8m")
    try:
        data = os.urandom(2 << 20)
        with RawServer(endless_body) as endless, Origin(data) as honest:
            good = honest.url
            result = _fetch_in_order(where / "dest", data, [endless.url, good])
        assert result.verified == "sha512" and result.source_url == good
        assert (where / "dest").read_bytes() == data
        first = result.attempts[0]
        assert first.outcome == "failed" and "free space" in (first.error or "")
        assert temp_leftovers(where) == []
    finally:
        unmount(where)


def test_endless_first_location_is_cut_at_max_image_bytes(tmp_path: Path) -> None:
    """Attack 7: without a size, [security] max_image_bytes bounds what one location may write."""
    data = os.urandom(1 << 20)
    cap = 3 << 20
    with RawServer(endless_body) as endless, Origin(data) as honest:
        good = honest.url
        result = _fetch_in_order(tmp_path / "dest", data, [endless.url, good], max_bytes=cap)
    assert result.source_url == good and (tmp_path / "dest").read_bytes() == data
    assert "max_image_bytes" in (result.attempts[0].error or "")
    assert result.attempts[0].bytes <= cap


def test_sizeless_sink_is_bounded_by_the_first_content_length(tmp_path: Path) -> None:
    """Attack 7: the first Content-Length of the bytes held bounds the writes; a reset forgets
    it (a lying first location does not shorten the next one)."""
    sink = AtomicSink(tmp_path / "d", size=None, expected=Expected.for_image(None, None, None))
    with sink:
        sink.learn_total(10)
        sink.write(bytearray(b"x" * 10), 10)
        sink.learn_total(1000)  # a resume elsewhere cannot extend the bytes held
        with pytest.raises(SizeMismatch, match="Content-Length"):
            sink.write(bytearray(b"y"), 1)
        sink.reset()
        sink.learn_total(20)
        sink.write(bytearray(b"z" * 20), 20)
        assert sink.offset == 20
