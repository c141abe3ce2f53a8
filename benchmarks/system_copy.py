#!/usr/bin/env python3
"""System-copy benchmark: locpick's verified copy from a shared filesystem vs cp.

    PYTHONPATH=$PWD python benchmarks/system_copy.py [--size-mib 1024] [--rounds 3]

A random N-MiB source file on the root filesystem (kept in the page cache) is copied, in the
same run, interleaved, best of R rounds, to a dest on the SAME filesystem and to a tmpfs:

  cp                 cp SRC DST                    (coreutils: reflink=auto, copy_file_range)
  cp+fsync           cp SRC DST && sync DST        (what locpick's atomic commit also does)
  cp+sha512sum       cp SRC DST && sha512sum DST
  sha512             hashlib.sha512 over the cached source bytes (mmap, in-process)
  crf+pread          syscopy.system_copy: copy_file_range, hash follower reads dst by pread
  crf+mmap           ... hash follower maps dst windows (no copy into a buffer)
  sendfile+pread     sendfile instead of copy_file_range
  pipeline           read -> write -> hash the same buffer in a second thread
  trusted            copy_file_range, no hash (a filesystem marked trusted: size check only)
  locpick            locpick.download() end to end (rank, copy+hash, fsync, rename), verified
  locpick-trusted    the same with the filesystem marked trusted

floor = max(cp, sha512): a verified copy cannot beat the slower of "move the bytes" and "hash
the bytes". Goals (issue 4): verified <= 1.15 x floor; trusted >= 0.95 x cp speed. Dirty pages
are flushed (os.sync, untimed) before every trial so one trial's writeback does not land on
the next. locpick's end-to-end rows include an fsync of the file that cp does not do.
Results: benchmarks/results/copy.json and copy.txt.
"""

# ruff: noqa: E402 - imports follow the sys.path fix below, on purpose
from __future__ import annotations

import sys

# This file is named like the stdlib ``copy`` module: keep its own directory off the path.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0])]

import argparse
import contextlib
import hashlib
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import locpick
from locpick.config.model import Config, Filesystem
from locpick.transports.file import syscopy

MiB = 1 << 20
#: copy_file_range, else sendfile (copy_file_range refuses to cross filesystems: EXDEV).
CRF = ("copy_file_range", "sendfile")


def make_source(path: Path, size: int) -> str:
    block = os.urandom(8 * MiB)
    h = hashlib.sha512()
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = block[: min(len(block), left)]
            fh.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            block = block[1:] + block[:1]  # not one repeated block
    return h.hexdigest()


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(16 * MiB):
            pass


def sha512_mmap(path: Path) -> None:
    with (
        open(path, "rb") as fh,
        mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm,
        memoryview(mm) as view,
    ):
        hashlib.sha512(view).hexdigest()


USED: dict[str, str] = {}


def engine_copy(src: Path, dst: Path, engines: tuple[str, ...], follow: str, verify: bool) -> str:
    size = src.stat().st_size
    h = hashlib.sha512() if verify else None
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        used = syscopy.system_copy(
            s, d, 0, size, h, lambda n: None, label="bench", engines=engines, follow=follow
        )
    finally:
        os.close(s)
        os.close(d)
    if h is not None:
        h.hexdigest()
    return used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated variants (cp, sha512 always run)")
    ap.add_argument("--dir", default="/var/tmp", help="same-filesystem work dir (not tmpfs)")
    args = ap.parse_args()
    size = args.size_mib * MiB

    work = Path(tempfile.mkdtemp(prefix="lpk-copybench-", dir=args.dir))
    shm = work / "tmpfs"
    shm.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={3 * size + 64 * MiB}", "lpk-bench", str(shm)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        shm = Path(tempfile.mkdtemp(prefix="lpk-copybench-", dir="/dev/shm"))
    try:
        only = {v for v in args.only.split(",") if v} | {"cp", "sha512"} if args.only else set()
        run(work, shm, size, args.rounds, only)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(shm)], check=False)
        else:
            shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, shm: Path, size: int, rounds: int, only: set[str]) -> None:
    src_dir = work / "images"
    src_dir.mkdir()
    src = src_dir / "img.raw"
    digest = make_source(src, size)
    warm(src)
    record = {
        "id": "bench",
        "status": "active",
        "size": size,
        "checksum": None,
        "os_hash_algo": "sha512",
        "os_hash_value": digest,
        "locations": [{"url": f"file://{src}", "metadata": {}}],
    }
    root = Filesystem(id="root", mountpoint="/")
    cfg = Config(filesystems=(root,), history_file="")
    cfg_trusted = Config(
        filesystems=(Filesystem(id="root", mountpoint="/", trusted=True),), history_file=""
    )

    def api(dst: Path, config: Config) -> None:
        res = locpick.download("bench", dst, metadata=record, config=config)
        assert res.method == "copy"

    dests = {"same-fs": work / "out", "tmpfs": shm / "out"}
    rows: dict[str, Callable[[Path], object]] = {
        "cp": lambda d: subprocess.run(["cp", str(src), str(d)], check=True),
        "cp+fsync": lambda d: subprocess.run(
            ["bash", "-c", f"cp '{src}' '{d}' && sync '{d}'"], check=True
        ),
        "cp+sha512sum": lambda d: subprocess.run(
            ["bash", "-c", f"cp '{src}' '{d}' && sha512sum '{d}' >/dev/null"], check=True
        ),
        "sha512": lambda d: sha512_mmap(src),
        "crf+pread": lambda d: engine_copy(src, d, CRF, "pread", True),
        "crf+mmap": lambda d: engine_copy(src, d, CRF, "mmap", True),
        "sendfile+pread": lambda d: engine_copy(src, d, ("sendfile",), "pread", True),
        "pipeline": lambda d: engine_copy(src, d, ("pipeline",), "-", True),
        "trusted": lambda d: engine_copy(src, d, CRF, "pread", False),
        "locpick": lambda d: api(d, cfg),
        "locpick-trusted": lambda d: api(d, cfg_trusted),
    }
    if only:
        rows = {k: v for k, v in rows.items() if k in only}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for where, dst in dests.items():
            for name, fn in rows.items():
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()
                os.sync()
                warm(src)
                t0 = time.perf_counter()
                used = fn(dst)
                if isinstance(used, str):
                    USED[f"{where}/{name}"] = used
                times.setdefault((where, name), []).append(time.perf_counter() - t0)
                if name not in ("sha512",) and dst.exists() and dst.stat().st_size != size:
                    raise SystemExit(f"{name}: wrong size at {dst}")
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    lines = [
        f"# system_copy.py  {size // MiB} MiB, best of {rounds}, "
        f"python {platform.python_version()}, "
        f"kernel {platform.release()}, {os.cpu_count()} cpus",
        f"{'dest':8} {'variant':16} {'best s':>7} {'median':>7} {'GiB/s':>6} "
        f"{'/floor':>6} {'cp/x':>5}",
    ]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for where in dests:
        cp = min(times[(where, "cp")])
        floor = max(cp, min(times[(where, "sha512")]))
        for name in rows:
            ts = times[(where, name)]
            best = min(ts)
            out.setdefault(where, {})[name] = {
                "best": best,
                "median": statistics.median(ts),
                "floor_ratio": best / floor,
                "cp_speed_ratio": cp / best,
            }
            lines.append(
                f"{where:8} {name:16} {best:7.3f} {statistics.median(ts):7.3f} "
                f"{size / best / (1 << 30):6.2f} {best / floor:6.2f} {cp / best:5.2f}"
            )
    lines.append("engines used: " + ", ".join(f"{k}={v}" for k, v in sorted(USED.items())))
    text = "\n".join(lines)
    print(text)
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "copy.txt").write_text(text + "\n")
    (res / "copy.json").write_text(
        json.dumps({"size": size, "rounds": rounds, "rows": out, "engines": USED}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
