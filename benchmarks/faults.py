#!/usr/bin/env python3
"""Fault benchmark: the best location stalls at 30 %, a slower second location is healthy.

    PYTHONPATH=. python benchmarks/faults.py [--size-mib 256] [--fast-mbps 80] [--slow-mbps 40]
                                             [--rounds 2] [--stall-seconds 30]

Two loopback origins (locpick._demo.origin.Origin) serve the same random file: A at --fast-mbps,
which sends 30 % of every response and then stalls (socket open, no bytes) for
--stall-seconds; B at --slow-mbps, healthy. Timed to a *verified* file on /dev/shm, interleaved
per round, best of R kept:

  locpick   python -m locpick download IMG DEST --metadata META (both URLs; it probes, ranks A
            first, detects the stall, resumes on B by Range)
  aria2c    aria2c given both URLs, tuned for faults (--timeout=2 --lowest-speed-limit=1K
            --max-tries=5 --retry-wait=0 -s2 -x2) and --checksum=sha-512 (verifies itself)
  curl      curl on A in a retry loop of `curl -C - --speed-limit 1024 --speed-time 2` (up to
            10 tries; curl's own --retry restarts from 0), then a sha512 of the file (curl
            knows one URL and does not verify)

Also timed without faults, as references: locpick from A alone and from B alone, which give the
ideal for this scenario, 0.3 x T(A) + 0.7 x T(B); "lost" = time above that ideal (the goal:
at most ~2 s lost to the stall). Ratios are printed against locpick. Peers get generous fault
settings; with their defaults (60 s timeouts) they would wait out the whole stall.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locpick._demo.origin import Origin  # noqa: E402

SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
MiB = 1 << 20


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("LOCPICK_CONFIG", str(ROOT / "tests" / "empty-config.toml"))
    return env


def _record(path: Path, digest: str, size: int, urls: list[str]) -> Path:
    rec = {
        "id": "bench-faults",
        "status": "active",
        "size": size,
        "os_hash_algo": "sha512",
        "os_hash_value": digest,
        "locations": [{"url": u, "metadata": {}} for u in urls],
    }
    path.write_text(json.dumps(rec))
    return path


def _run(cmd: list[str], dest: Path) -> float:
    dest.unlink(missing_ok=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return elapsed


def _verify(dest: Path, digest: str) -> None:
    h = hashlib.sha512()
    with open(dest, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            h.update(chunk)
    if h.hexdigest() != digest:
        raise RuntimeError(f"{dest}: wrong bytes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--fast-mbps", type=float, default=80.0, help="A's cap, MB/s")
    ap.add_argument("--slow-mbps", type=float, default=40.0, help="B's cap, MB/s")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stall-seconds", type=float, default=30.0)
    args = ap.parse_args()

    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="locpick-faults-", dir=SHM))
    src = work / "image.raw"
    with open(src, "wb") as fh:
        for _ in range(args.size_mib):
            fh.write(os.urandom(MiB))
    h = hashlib.sha512()
    with open(src, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            h.update(chunk)
    digest = h.hexdigest()
    dest = work / "out.raw"
    a = Origin.from_file(src).start()
    b = Origin.from_file(src).start()
    a.faults.bandwidth = args.fast_mbps * 1e6
    b.faults.bandwidth = args.slow_mbps * 1e6
    py = [sys.executable, "-m", "locpick", "download", "bench-faults", str(dest), "--no-progress"]
    both = _record(work / "both.json", digest, size, [a.url, b.url])
    only_a = _record(work / "a.json", digest, size, [a.url])
    only_b = _record(work / "b.json", digest, size, [b.url])

    def stall(on: bool) -> None:
        a.faults.stall_after = int(size * 0.3) if on else None
        a.faults.stall_seconds = args.stall_seconds if on else None

    def locpick(meta: Path) -> Callable[[], float]:
        return lambda: _run([*py, "--metadata", str(meta)], dest)

    def aria2c() -> float:
        return _run(
            [
                "aria2c", "-q", "-d", str(work), "-o", dest.name, "--allow-overwrite=true",
                "--auto-file-renaming=false", "-s2", "-x2", "--min-split-size=1M",
                "--timeout=2", "--lowest-speed-limit=1K", "--max-tries=5", "--retry-wait=0",
                "--file-allocation=none", f"--checksum=sha-512={digest}", a.url, b.url,
            ],
            dest,
        )  # fmt: skip

    def curl() -> float:
        # curl's own --retry restarts from 0 without Range; the usual idiom is a loop of
        # `curl -C -` (resume from the file's size) with a low-speed abort.
        t0 = time.monotonic()
        dest.unlink(missing_ok=True)
        cmd = ["curl", "-sS", "-o", str(dest), "-C", "-", "--speed-limit", "1024"]
        cmd += ["--speed-time", "2", a.url]
        for _ in range(10):
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(f"curl failed 10 times: {r.stderr.strip()[-300:]}")
        _verify(dest, digest)  # curl does not verify: the hash is part of its time
        return time.monotonic() - t0

    contenders: dict[str, tuple[bool, Callable[[], float]]] = {
        "locpick A alone, no fault": (False, locpick(only_a)),
        "locpick B alone, no fault": (False, locpick(only_b)),
        "locpick (A stalls at 30%)": (True, locpick(both)),
    }
    if shutil.which("aria2c"):
        contenders["aria2c A+B (A stalls)"] = (True, aria2c)
    if shutil.which("curl"):
        contenders["curl A, retries (A stalls)"] = (True, curl)
    best: dict[str, float] = {}
    errors: dict[str, str] = {}
    try:
        for rnd in range(args.rounds):
            for name, (faulty, fn) in contenders.items():
                stall(faulty)
                try:
                    t = fn()
                    _verify(dest, digest)
                except RuntimeError as exc:
                    errors[name] = str(exc)
                    continue
                best[name] = min(t, best.get(name, t))
                print(f"round {rnd + 1}: {name:32s} {t:7.2f} s", flush=True)
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(work, ignore_errors=True)

    ideal = None
    if "locpick A alone, no fault" in best and "locpick B alone, no fault" in best:
        ideal = 0.3 * best["locpick A alone, no fault"] + 0.7 * best["locpick B alone, no fault"]
    ref = best.get("locpick (A stalls at 30%)")
    print(
        f"\n{args.size_mib} MiB, A {args.fast_mbps:g} MB/s stalls at 30 %, "
        f"B {args.slow_mbps:g} MB/s; best of {args.rounds}"
    )
    print(f"{'contender':34s} {'seconds':>8s} {'/locpick':>9s} {'lost':>7s}")
    for name, t in best.items():
        ratio = f"{t / ref:9.2f}" if ref else " " * 9
        lost = f"{t - ideal:7.2f}" if ideal is not None and "stalls" in name else ""
        print(f"{name:34s} {t:8.2f} {ratio} {lost}")
    if ideal is not None:
        print(f"{'ideal (0.3 A + 0.7 B)':34s} {ideal:8.2f}")
    for name, err in errors.items():
        print(f"{name}: FAILED {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
