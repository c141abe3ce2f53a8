"""The verified atomic writer: only a right-size, right-hash file ever appears at dest."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from locpick.errors import ChecksumMismatch, InputError, SizeMismatch
from locpick.sink.atomic import AtomicSink
from locpick.sink.hashing import Expected

DATA = os.urandom(3 * 1024 * 1024 + 17)


def _write_all(sink: AtomicSink, data: bytes) -> None:
    view = memoryview(data)
    while view:
        buf = sink.buffer()
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        sink.write(buf, n)
        view = view[n:]


def _expected(data: bytes) -> Expected:
    return Expected("sha512", hashlib.sha512(data).hexdigest())


def test_commit_verifies_and_renames(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Right bytes: dest holds them, mode 0644, no temp left."""
    dest = tmp_path / "img"
    with AtomicSink(dest, size=len(DATA), expected=_expected(DATA), buffer_bytes=1 << 20) as s:
        _write_all(s, DATA)
        assert s.commit() == "sha512"
    assert dest.read_bytes() == DATA
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["img"]


def test_hash_mismatch_leaves_old_dest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A corrupt byte: ChecksumMismatch, old dest intact, temp removed."""
    dest = tmp_path / "img"
    dest.write_bytes(b"old")
    bad = bytearray(DATA)
    bad[12345] ^= 0xFF
    with AtomicSink(dest, size=len(DATA), expected=_expected(DATA)) as s:
        _write_all(s, bytes(bad))
        with pytest.raises(ChecksumMismatch, match="sha512 mismatch"):
            s.commit()
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["img"]


def test_reset_then_right_bytes_commit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After reset the hash starts over: a second, right copy commits."""
    dest = tmp_path / "img"
    with AtomicSink(dest, size=len(DATA), expected=_expected(DATA)) as s:
        _write_all(s, b"\0" * 1000)
        s.reset()
        _write_all(s, DATA)
        s.commit()
    assert dest.read_bytes() == DATA


def test_more_bytes_than_size_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A location that sends more than the image size is cut off."""
    with AtomicSink(tmp_path / "img", size=10, expected=Expected(None, None)) as s:
        buf = s.buffer()
        with pytest.raises(SizeMismatch):
            s.write(buf, 11)
        # the buffer went back to the pool: more buffers can still be taken
        assert len(s.buffer()) > 0
    assert os.listdir(tmp_path) == []


def test_short_file_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Fewer bytes than the size is a SizeMismatch at commit."""
    with AtomicSink(tmp_path / "img", size=len(DATA), expected=_expected(DATA)) as s:
        _write_all(s, DATA[:-1])
        with pytest.raises(SizeMismatch, match="expected"):
            s.commit()
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_input_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dest's directory must exist."""
    with pytest.raises(InputError, match="does not exist"):
        AtomicSink(tmp_path / "no" / "img", size=1, expected=Expected(None, None))


def test_exception_inside_block_removes_temp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Any exit path (here KeyboardInterrupt) removes the temp file."""
    with (
        pytest.raises(KeyboardInterrupt),
        AtomicSink(tmp_path / "img", size=len(DATA), expected=_expected(DATA)) as s,
    ):
        _write_all(s, DATA[:1000])
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
