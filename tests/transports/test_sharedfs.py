"""Shared filesystems: real tmpfs mounts, confinement, reachability and the system copy."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import attrs
import pytest
from fixtures_sharedfs import mount_tmpfs, tmpfs, unmount
from helpers import image_record, run_cli, temp_leftovers, write_record

import locpick
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.client import Client
from locpick.config.load import config_from_mapping
from locpick.config.model import Config, Filesystem, ProbeConfig, TransferConfig
from locpick.errors import ConfigError, TransferError
from locpick.models import ByteProgress
from locpick.report import Recorder
from locpick.transports.file import sharedfs, syscopy
from locpick.transports.file.mounts import mount_at, parse_mountinfo

__all__ = ["tmpfs"]  # the fixture is used by name

pytestmark = pytest.mark.privileged

DATA = os.urandom(3 * 1024 * 1024 + 77)
SHA = hashlib.sha512(DATA).hexdigest()


def cfg(*fss: Filesystem) -> Config:
    return Config(filesystems=fss, probe=ProbeConfig(deadline=1.5), history_file="")


def place(mnt: Path, name: str = "img.raw", data: bytes = DATA) -> Path:
    (mnt / "images").mkdir(exist_ok=True)
    path = mnt / "images" / name
    path.write_bytes(data)
    return path


def only_reason(rec: dict[str, object], config: Config) -> tuple[bool, str | None, str | None]:
    ranking = locpick.rank("img", metadata=rec, config=config)
    row = ranking.to_json()[0]
    return row["usable"], row["reasons"]["error"], row["reasons"]["shared_fs"]


# -- pure parsing -----------------------------------------------------------------------------
def test_parse_mountinfo_escapes_and_optional_fields() -> None:
    """Octal escapes are decoded; optional fields before '-' do not shift fstype/source."""
    text = (
        "36 35 98:0 / /mnt/my\\040images rw,noatime master:1 shared:2 - nfs4 srv:/exp rw\n"
        "garbage line\n"
        "40 36 0:42 / /mnt/x rw - tmpfs lpk rw\n"
    )
    mounts = parse_mountinfo(text)
    assert [m.mountpoint for m in mounts] == ["/mnt/my images", "/mnt/x"]
    assert (mounts[0].fstype, mounts[0].source, mounts[0].dev) == ("nfs4", "srv:/exp", "98:0")
    assert mount_at("/mnt/x", mounts) == mounts[1]


def test_map_location_reroots_by_id() -> None:
    """A location's metadata mountpoint is re-rooted onto the local mountpoint of that id."""
    fs = Filesystem(id="nfs1", mountpoint="/local/imgs")
    path, got = sharedfs.map_location(
        "file:///remote/store/a/b.raw", {"id": "nfs1", "mountpoint": "/remote/store"}, [fs]
    )
    assert (path, got) == ("/local/imgs/a/b.raw", fs)
    with pytest.raises(locpick.LocpickError, match="no configured filesystem with id 'x'"):
        sharedfs.map_location("file:///remote/store/a", {"id": "x", "mountpoint": "/"}, [fs])


def test_require_mount_not_settable_from_toml() -> None:
    """The plain-directory override exists for tests only: a config file cannot set it."""
    with pytest.raises(ConfigError, match="require_mount"):
        config_from_mapping(
            {"filesystems": [{"id": "a", "mountpoint": "/x", "require_mount": False}]}
        )


# -- real mounts: usable, reported, copied ----------------------------------------------------
def test_cli_copy_from_real_tmpfs(tmp_path: Path, tmpfs: tuple[Path, str]) -> None:
    """CLI download from a mounted tmpfs: method copy, sha512 verified, atomic, nothing left."""
    mnt, _src = tmpfs
    place(mnt)
    conf = tmp_path / "c.toml"
    conf.write_text(f'[[filesystems]]\nid = "fs1"\nmountpoint = "{mnt}"\n')
    rec = image_record(
        "img", DATA, [("file:///remote/images/img.raw", {"id": "fs1", "mountpoint": "/remote"})]
    )
    meta = write_record(tmp_path / "m.json", rec)
    out = tmp_path / "out"
    proc = run_cli(
        "download",
        "img",
        str(out),
        "--metadata",
        str(meta),
        "--json",
        "--config",
        str(conf),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert (res["method"], res["verified"], res["bytes"]) == ("copy", "sha512", len(DATA))
    assert out.read_bytes() == DATA
    assert temp_leftovers(tmp_path) == []
    proc = run_cli("rank", "img", "--metadata", str(meta), "--json", "--config", str(conf))
    row = json.loads(proc.stdout)[0]
    assert row["usable"] is True
    assert "fs1" in row["reasons"]["shared_fs"] and "tmpfs" in row["reasons"]["shared_fs"]


def test_same_device_as_dest_reported(tmp_path: Path, tmpfs: tuple[Path, str]) -> None:
    """rank with a dest says whether the copy stays on one device (reflink possible)."""
    mnt, _src = tmpfs
    place(mnt)
    rec = image_record("img", DATA, [f"file://{mnt}/images/img.raw"])
    with Client(config=cfg(Filesystem(id="fs1", mountpoint=str(mnt)))) as client:
        image = client.image("img", metadata=rec)
        inside = client.rank_image(image, dest=mnt / "out").scores[0].reasons.shared_fs
        outside = client.rank_image(image, dest=tmp_path / "out").scores[0].reasons.shared_fs
        result = client.download("img", mnt / "out", metadata=rec)
    assert "same device as dest" in (inside or "")
    assert "other device" in (outside or "")
    assert result.method == "copy"
    assert (mnt / "out").read_bytes() == DATA


def test_unmounted_directory_unusable(tmp_path: Path) -> None:
    """A plain directory at the mountpoint is not the filesystem: not-mounted."""
    plain = tmp_path / "plain"
    plain.mkdir()
    place(plain)
    rec = image_record("img", DATA, [f"file://{plain}/images/img.raw"])
    usable, error, _ = only_reason(rec, cfg(Filesystem(id="fs1", mountpoint=str(plain))))
    assert not usable
    assert error is not None and error.startswith("not-mounted")


def test_plain_directory_override_for_tests(tmp_path: Path) -> None:
    """The test-only require_mount=False accepts a plain directory and copies from it."""
    plain = tmp_path / "plain"
    plain.mkdir()
    place(plain)
    rec = image_record("img", DATA, [f"file://{plain}/images/img.raw"])
    config = cfg(Filesystem(id="fs1", mountpoint=str(plain), require_mount=False))
    result = locpick.download("img", tmp_path / "out", metadata=rec, config=config)
    assert (result.method, result.verified) == ("copy", "sha512")
    assert (tmp_path / "out").read_bytes() == DATA


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda p: p.write_bytes(DATA[:-1]), "size-mismatch"),
        (lambda p: None, "file-missing"),
        (lambda p: os.mkfifo(p), "not-regular-file"),
        (lambda p: os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3)), "not-regular-file"),
        (lambda p: p.mkdir(), "not-regular-file"),
    ],
    ids=["wrong-size", "missing", "fifo", "char-device", "directory"],
)
def test_bad_files_unusable(tmp_path: Path, tmpfs: tuple[Path, str], make, code: str) -> None:
    """Each bad file gives its own reason; FIFOs and devices are never opened (no hang)."""
    mnt, _src = tmpfs
    (mnt / "images").mkdir()
    make(mnt / "images" / "img.raw")
    rec = image_record("img", DATA, [f"file://{mnt}/images/img.raw"])
    usable, error, shared = only_reason(rec, cfg(Filesystem(id="fs1", mountpoint=str(mnt))))
    assert not usable
    assert error is not None and error.startswith(code), error
    assert shared is not None and "tmpfs" in shared
    with pytest.raises(locpick.AllLocationsFailed, match=code):
        locpick.download(
            "img",
            tmp_path / "out",
            metadata=rec,
            config=cfg(Filesystem(id="fs1", mountpoint=str(mnt))),
        )
    assert not (tmp_path / "out").exists()


def test_identity_marker_and_source(tmp_path: Path) -> None:
    """A marker file or fs source configured per filesystem rejects a wrong filesystem."""
    mnt = tmp_path / "mnt"
    source = mount_tmpfs(mnt, source="lpk-identity")
    try:
        place(mnt)
        (mnt / ".locpick-fs1").write_text("fs1")
        rec = image_record("img", DATA, [f"file://{mnt}/images/img.raw"])
        ok = only_reason(
            rec,
            cfg(Filesystem(id="fs1", mountpoint=str(mnt), marker=".locpick-fs1", fs_uuid=source)),
        )
        assert ok[0] is True, ok
        no_marker = only_reason(rec, cfg(Filesystem(id="fs1", mountpoint=str(mnt), marker="nope")))
        assert no_marker[1] is not None and no_marker[1].startswith("wrong-filesystem: marker")
        other = only_reason(rec, cfg(Filesystem(id="fs1", mountpoint=str(mnt), fs_uuid="x-y")))
        assert other[1] is not None and "holds 'lpk-identity', expected 'x-y'" in other[1]
    finally:
        unmount(mnt)


def test_nested_mount_is_other_filesystem(tmp_path: Path, tmpfs: tuple[Path, str]) -> None:
    """A file on another filesystem mounted below the configured one is refused."""
    mnt, _src = tmpfs
    inner = mnt / "images"
    mount_tmpfs(inner)
    try:
        place(mnt)
        rec = image_record("img", DATA, [f"file://{mnt}/images/img.raw"])
        usable, error, _ = only_reason(rec, cfg(Filesystem(id="fs1", mountpoint=str(mnt))))
        assert not usable and error is not None and error.startswith("other-mount"), error
    finally:
        unmount(inner)


# -- confinement ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["etc-passwd", "dotdot", "symlink", "symlink-dir"])
def test_escapes_refused(tmp_path: Path, tmpfs: tuple[Path, str], kind: str) -> None:
    """/etc/passwd, '..' and symlinks out of the mount are refused with a reason; dest untouched."""
    mnt, _src = tmpfs
    (mnt / "images").mkdir()
    secret = tmp_path / "secret.raw"
    secret.write_bytes(DATA)  # same size and hash: only confinement can refuse it
    url = {
        "etc-passwd": "file:///etc/passwd",
        "dotdot": f"file://{mnt}/images/../../secret.raw",
        "symlink": f"file://{mnt}/images/img.raw",
        "symlink-dir": f"file://{mnt}/images/link/secret.raw",
    }[kind]
    (mnt / "images" / "img.raw").symlink_to(secret)
    (mnt / "images" / "link").symlink_to(tmp_path)
    rec = image_record("img", DATA, [url])
    config = cfg(Filesystem(id="fs1", mountpoint=str(mnt)))
    usable, error, _ = only_reason(rec, config)
    assert not usable
    assert error is not None and error.startswith("not-on-configured-filesystem"), error
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    with pytest.raises(locpick.AllLocationsFailed, match="not-on-configured-filesystem"):
        locpick.download("img", dest, metadata=rec, config=config)
    assert dest.read_bytes() == b"old"
    assert secret.read_bytes() == DATA
    assert temp_leftovers(tmp_path) == []


# -- fallback ---------------------------------------------------------------------------------
def test_corrupted_source_falls_back_to_http(tmp_path: Path, tmpfs: tuple[Path, str]) -> None:
    """Right size, wrong bytes: the copy fails its hash, the HTTP location delivers."""
    mnt, _src = tmpfs
    bad = bytearray(DATA)
    bad[12345] ^= 0xFF
    place(mnt, data=bytes(bad))
    with Origin(DATA) as origin:
        url = origin.url
        rec = image_record("img", DATA, [f"file://{mnt}/images/img.raw", url])
        config = cfg(Filesystem(id="fs1", mountpoint=str(mnt)))
        result = locpick.download("img", tmp_path / "out", metadata=rec, config=config)
    assert result.source_url == url
    assert result.method == "download"
    assert [a.outcome for a in result.attempts] == ["failed", "ok"]
    assert "mismatch" in (result.attempts[0].error or "")
    assert (tmp_path / "out").read_bytes() == DATA
    assert temp_leftovers(tmp_path) == []


def test_trusted_filesystem_checks_size_only(tmp_path: Path, tmpfs: tuple[Path, str]) -> None:
    """trusted = true skips the hash (documented trade-off): verified is None, size still held."""
    mnt, _src = tmpfs
    bad = bytearray(DATA)
    bad[7] ^= 1
    place(mnt, data=bytes(bad))
    rec = image_record("img", DATA, [f"file://{mnt}/images/img.raw"])
    config = cfg(Filesystem(id="fs1", mountpoint=str(mnt), trusted=True))
    result = locpick.download("img", tmp_path / "out", metadata=rec, config=config)
    assert (result.method, result.verified) == ("copy", None)
    assert (tmp_path / "out").read_bytes() == bytes(bad)


def test_source_shrinks_midway_falls_back(tmp_path: Path, tmpfs: tuple[Path, str]) -> None:
    """The file shrinks during the copy: that location fails, HTTP resumes, nothing left."""
    mnt, _src = tmpfs
    data = os.urandom(3 * syscopy.COPY_CHUNK + 5)
    path = place(mnt, data=data)
    cut = threading.Event()

    class Truncating(Recorder):
        """Truncates the source from inside the engine's progress (synchronously: the
        caller's ``progress`` callback runs on a thread of its own, after the fact)."""

        def progress(self, inner: ByteProgress | None = None) -> ByteProgress:
            wrapped = super().progress(inner)

            def update(done: int, total: int | None) -> None:
                if not cut.is_set():
                    cut.set()
                    os.truncate(path, syscopy.COPY_CHUNK + 100)
                wrapped(done, total)

            return update

    # The HTTP copy is capped so the system copy ranks first on any box (loopback HTTP can
    # measure faster than the shared-filesystem prior); it is the fallback under test.
    with Origin(data, faults=Faults(bandwidth=200e6)) as origin:
        rec = image_record("img", data, [f"file://{mnt}/images/img.raw", origin.url])
        with Client(config=cfg(Filesystem(id="fs1", mountpoint=str(mnt)))) as client:
            result = client.download(
                "img", tmp_path / "out", metadata=rec, recorder=Truncating("img")
            )
    assert cut.is_set()
    assert [a.outcome for a in result.attempts] == ["failed", "ok"]
    assert "shrank" in (result.attempts[0].error or "")
    # the one engine takes over over HTTP (the system copy's prefix is not reused: the engine
    # starts its own piece map), and the image is whole and verified
    assert (tmp_path / "out").read_bytes() == data
    assert temp_leftovers(tmp_path) == []


def test_verify_replicas_on_shared_fs(tmp_path: Path, tmpfs: tuple[Path, str]) -> None:
    """verify maps the file checks onto ok / mismatch / missing / unreachable."""
    mnt, _src = tmpfs
    place(mnt, "good.raw")
    place(mnt, "short.raw", DATA[:-1])
    bad = bytearray(DATA)
    bad[0] ^= 1
    place(mnt, "bad.raw", bytes(bad))
    plain = tmp_path / "plain"
    plain.mkdir()
    urls = [f"file://{mnt}/images/{n}.raw" for n in ("good", "short", "bad", "gone")]
    rec = image_record("img", DATA, [*urls, f"file://{plain}/x.raw"])
    config = cfg(
        Filesystem(id="fs1", mountpoint=str(mnt)), Filesystem(id="p", mountpoint=str(plain))
    )
    report = locpick.verify("img", metadata=rec, config=config)
    got = [r.status for r in report.locations]
    assert got == ["ok", "mismatch", "mismatch", "missing", "unreachable"], report.to_json()


# -- reachability timeout ---------------------------------------------------------------------
def test_hung_mount_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check stuck in the filesystem answers mount-unresponsive at the timeout, and a
    second check does not pile up another stuck thread."""
    release = threading.Event()
    calls: list[int] = []

    returned = threading.Event()

    def stuck(*args: object, **kwargs: object) -> sharedfs.FsReport:
        calls.append(1)
        release.wait(30)
        returned.set()
        raise AssertionError("released")

    monkeypatch.setattr(sharedfs, "inspect", stuck)
    fs = Filesystem(id="nfs", mountpoint=str(tmp_path / "hung"), timeout=0.3)
    rep = sharedfs.check(fs, str(tmp_path / "hung" / "x"), 1, timeout=fs.timeout)
    assert rep.reason is not None and rep.reason.startswith("mount-unresponsive")
    assert not returned.is_set()  # answered while the inspection was still stuck
    rep2 = sharedfs.check(fs, str(tmp_path / "hung" / "x"), 1, timeout=fs.timeout)
    assert rep2.reason is not None and rep2.reason.startswith("mount-unresponsive")
    assert len(calls) == 1
    release.set()


# -- copy engines -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("engine", "follow"),
    [
        ("copy_file_range", "pread"),
        ("copy_file_range", "mmap"),
        ("sendfile", "pread"),
        ("buffered", "pread"),
        ("pipeline", "-"),
    ],
)
def test_engines_copy_and_hash_from_offset(tmp_path: Path, engine: str, follow: str) -> None:
    """Every engine copies the tail from an offset and hashes exactly the copied bytes."""
    data = os.urandom(2 * syscopy.COPY_CHUNK + 999)
    src = tmp_path / "src"
    src.write_bytes(data)
    off = 4096 + 3
    with open(src, "rb") as s, open(tmp_path / "dst", "w+b") as d:
        d.write(data[:off])
        d.flush()
        h = hashlib.sha256()
        seen: list[int] = []
        used = syscopy.system_copy(
            s.fileno(),
            d.fileno(),
            off,
            len(data),
            h,
            seen.append,
            label="t",
            engines=(engine,),
            follow=follow,
        )
    assert used == engine
    assert sum(seen) == len(data) - off
    assert h.hexdigest() == hashlib.sha256(data[off:]).hexdigest()
    assert (tmp_path / "dst").read_bytes() == data


def test_default_engines_fall_back_from_reflink(tmpfs: tuple[Path, str]) -> None:
    """tmpfs has no FICLONE: the default order falls back to copy_file_range (same fs)."""
    mnt, _src = tmpfs
    data = os.urandom(1 << 20)
    (mnt / "src").write_bytes(data)
    with open(mnt / "src", "rb") as s, open(mnt / "dst", "w+b") as d:
        h = hashlib.sha512()
        used = syscopy.system_copy(
            s.fileno(), d.fileno(), 0, len(data), h, lambda n: None, label="t"
        )
    assert used == "copy_file_range"
    assert h.hexdigest() == hashlib.sha512(data).hexdigest()
    assert (mnt / "dst").read_bytes() == data


def test_engine_shrunk_source_raises(tmp_path: Path) -> None:
    """A source shorter than the image is a TransferError naming the byte where it ended."""
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    with (
        open(src, "rb") as s,
        open(tmp_path / "dst", "w+b") as d,
        pytest.raises(TransferError, match="source ended at byte 1000 of 2000"),
    ):
        syscopy.system_copy(
            s.fileno(), d.fileno(), 0, 2000, hashlib.md5(), lambda n: None, label="t"
        )


def test_hung_open_after_check_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount dies between check and copy: the open is bounded too, and names the reason."""
    release, returned = threading.Event(), threading.Event()

    def stuck(real: str, dev: int) -> int:
        release.wait(30)
        returned.set()
        raise AssertionError("released")

    monkeypatch.setattr(sharedfs, "open_confined", stuck)
    fs = Filesystem(id="nfs", mountpoint=str(tmp_path), timeout=0.3, require_mount=False)
    report = sharedfs.FsReport(fs, str(tmp_path / "x"), None)
    with pytest.raises(locpick.LocpickError, match="mount-unresponsive"):
        sharedfs.open_checked(report, fs.timeout)
    assert not returned.is_set()  # refused while the open was still stuck
    release.set()


def test_copy_stall_abandoned_falls_back(
    tmp_path: Path, tmpfs: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filesystem stops answering mid-copy: the copy is abandoned at the idle timeout, its
    temp file discarded, and HTTP delivers from byte 0; nothing is left beside dest."""
    mnt, _src = tmpfs
    place(mnt)
    release, returned = threading.Event(), threading.Event()

    def stalling(src: int, dst: int, pos: int, end: int, step, label: str) -> None:
        step(os.pwrite(dst, os.pread(src, 1 << 20, pos), pos))
        release.wait(30)  # a dead NFS server: the syscall never returns
        returned.set()
        raise OSError(5, "Input/output error")

    for engine in ("copy_file_range", "sendfile"):
        monkeypatch.setitem(syscopy._ENGINES, engine, stalling)
    config = attrs.evolve(
        cfg(Filesystem(id="fs1", mountpoint=str(mnt))),
        transfer=TransferConfig(idle_timeout=0.5),
    )
    try:
        with Origin(DATA) as origin:
            url = origin.url
            rec = image_record("img", DATA, [f"file://{mnt}/images/img.raw", url])
            result = locpick.download("img", tmp_path / "out", metadata=rec, config=config)
            stalled = not returned.is_set()  # delivered while the copy was still stuck
            sent = origin.bytes_sent
    finally:
        release.set()
    assert stalled
    assert result.source_url == url
    assert [a.outcome for a in result.attempts] == ["failed", "ok"]
    assert "stalled" in (result.attempts[0].error or "")
    assert sent >= len(DATA)  # started over: the abandoned temp's bytes were not trusted
    assert (tmp_path / "out").read_bytes() == DATA
    assert temp_leftovers(tmp_path) == []
