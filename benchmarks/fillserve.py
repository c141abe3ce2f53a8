#!/usr/bin/env python3
"""`locpick serve` feeding peers from a copy still being filled (stream-through), vs complete.

    python benchmarks/fillserve.py [--size-mib 256] [--peers 10] [--fill-mibps 64] [--rounds 2]

A writer (this process, locpick.cache.fill.state.FillWriter, 1 MiB pwrite + mark steps paced to
--fill-mibps) fills ``images/<id>.filling`` in a node cache while `locpick serve` answers P
curl peers, all started with the fill, each fetching the whole image. Rows:

  filling   the peers read behind the writer: wall time of the last peer vs the writer's
            own time (lag), serve's CPU seconds (utime + stime from /proc) per GiB sent
  complete  the same P peers on the complete entry (FileResponse + sendfile): CPU per GiB

The ratio filling/complete of CPU per GiB is the cost of serving a fill (polling the record,
one sendfile per stretch). Every peer's byte count is checked; one peer's bytes are compared
with the image. Best of R rounds. Stdlib + curl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from locpick.cache.fill.writer import FillWriter  # noqa: E402
from locpick.cache.store import NodeCache  # noqa: E402

MiB = 1 << 20
IMAGE_ID = "bench-fill-img"
RESULTS = HERE / "results" / "fillserve.json"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_serve(cache_dir: Path, config: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "locpick", "serve", "--cache-dir", str(cache_dir)),
            *("--bind", "127.0.0.1:0", "--config", str(config), "--no-metrics", "--no-status"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "serving cache on " in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line.rsplit("serving cache on ", 1)[1].strip()
    raise SystemExit("serve did not start")


def peers(url: str, n: int, out: Path) -> list[subprocess.Popen[str]]:
    procs = []
    for i in range(n):
        dest = str(out) if i == 0 else "/dev/null"
        procs.append(
            subprocess.Popen(
                ["curl", "-s", "-o", dest, "-w", "%{http_code} %{size_download}", url],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen[str]], size: int) -> float:
    for p in procs:
        out, _ = p.communicate()
        if out.split() != ["200", str(size)]:
            raise SystemExit(f"a peer got {out!r}, expected 200 {size}")
    return time.monotonic()


def fill_round(tmp: Path, data: bytes, n: int, rate: float, config: Path) -> dict[str, float]:
    cache = NodeCache(tmp / f"fill-{time.monotonic_ns()}")
    data_path, record = cache.fill_paths(IMAGE_ID)
    fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, len(data))
    writer = FillWriter.create(record, len(data))
    proc, url = start_serve(cache.dir, config)
    try:
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        got = tmp / "peer0"
        procs = peers(f"{url}/images/{IMAGE_ID}/{cache.token(IMAGE_ID)}", n, got)
        for pos in range(0, len(data), MiB):
            os.pwrite(fd, data[pos : pos + MiB], pos)
            writer.mark(pos, pos + MiB)
            ahead = t0 + (pos + MiB) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        t_fill = time.monotonic()
        t_end = finish(procs, len(data))
        cpu = cpu_seconds(proc.pid) - cpu0
        if hashlib.sha256(got.read_bytes()).digest() != hashlib.sha256(data).digest():
            raise SystemExit("peer 0 got other bytes than the image")
    finally:
        proc.terminate()
        proc.wait()
        writer.close()
        os.close(fd)
    gib = n * len(data) / (1 << 30)
    return {
        "writer_s": t_fill - t0,
        "last_peer_s": t_end - t0,
        "lag_s": t_end - t_fill,
        "cpu_s_per_gib": cpu / gib,
    }


def complete_round(tmp: Path, data: bytes, n: int, config: Path) -> dict[str, float]:
    cache = NodeCache(tmp / f"done-{time.monotonic_ns()}")
    path = cache.images / IMAGE_ID
    path.write_bytes(data)
    os.chmod(path, 0o600)
    digest = hashlib.sha512(data).hexdigest()
    meta = {"size": len(data), "algo": "sha512", "digest": digest}
    side = cache.images / f"{IMAGE_ID}.json"
    side.write_text(json.dumps(meta))
    os.chmod(side, 0o600)
    proc, url = start_serve(cache.dir, config)
    try:
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        procs = peers(f"{url}/images/{IMAGE_ID}/{cache.token(IMAGE_ID)}", n, tmp / "peer0")
        t_end = finish(procs, len(data))
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait()
    return {"last_peer_s": t_end - t0, "cpu_s_per_gib": cpu / (n * len(data) / (1 << 30))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--peers", type=int, default=10)
    ap.add_argument("--fill-mibps", type=float, default=64.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    data = os.urandom(args.size_mib * MiB)
    with tempfile.TemporaryDirectory(prefix="lp-fillserve-") as t:
        tmp = Path(t)
        config = tmp / "serve.toml"
        config.write_text(f"[serve]\nmax_clients = {args.peers + 2}\n")
        fills, dones = [], []
        for _ in range(args.rounds):
            fills.append(fill_round(tmp, data, args.peers, args.fill_mibps * MiB, config))
            dones.append(complete_round(tmp, data, args.peers, config))
    fill = min(fills, key=lambda r: r["cpu_s_per_gib"])
    done = min(dones, key=lambda r: r["cpu_s_per_gib"])
    ratio = fill["cpu_s_per_gib"] / done["cpu_s_per_gib"]
    print(f"{args.peers} peers, {args.size_mib} MiB, writer paced to {args.fill_mibps:g} MiB/s")
    print(
        f"filling   writer {fill['writer_s']:.2f} s, last peer {fill['last_peer_s']:.2f} s "
        f"(lag {fill['lag_s']:.2f} s), serve CPU {fill['cpu_s_per_gib']:.3f} s/GiB"
    )
    print(
        f"complete  last peer {done['last_peer_s']:.2f} s, "
        f"serve CPU {done['cpu_s_per_gib']:.3f} s/GiB"
    )
    print(f"CPU per GiB filling / complete: {ratio:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    doc = {"args": vars(args), "filling": fill, "complete": done, "ratio": ratio}
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
