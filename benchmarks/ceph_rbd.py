#!/usr/bin/env python3
"""RBD row: one image in a real single-node Ceph, read four ways side by side (issue 28).

    PYTHONPATH=.:tests python benchmarks/ceph_rbd.py [--size-mib 256] [--rounds 3]

Starts the test harness's Ceph (1 mon + 1 memstore OSD, cephx) and a Glance whose ``ceph`` (rbd)
store holds the image (Glance writes the ``rbd://`` location on upload), then times, interleaved
per round (best of R kept), each ending in a sha512 of every byte:

  locpick library     Client.download() in this process, rbd location only (librbd ranged
                      reads, sha512-verified, atomic rename into /dev/shm)
  locpick download    ``python -m locpick download`` as a fresh process (pays start-up)
  glance /file        GET /v2/images/ID/file from Glance (its rbd store reads Ceph) + sha512
  rbd export|sha512   ``rbd export images/ID@snap - | sha512sum`` (Nova's direct path, no check)

Everything is on loopback on one 2-core machine: Ceph, Glance and the reader share the cores,
so only the ratios within one run mean anything. Results go to benchmarks/results/rbd.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# this file is named rbd.py: its own directory on sys.path would shadow Ceph's ``rbd`` module
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = HERE / "results" / "rbd.json"
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")

from harness import ceph, procs  # noqa: E402
from harness import glance as glance_service  # noqa: E402
from harness.seed import Glance  # noqa: E402

import locpick  # noqa: E402
from locpick.config import Config, RbdConfig  # noqa: E402


def _upload(endpoint: str, file: Path) -> tuple[str, str]:
    g = Glance(endpoint, None, 600)
    body = {"name": "bench", "disk_format": "raw", "container_format": "bare"}
    image_id = str(g.request("POST", "/v2/images", body)["id"])
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(file.stat().st_size),
        "X-Image-Meta-Store": "ceph",
    }
    with file.open("rb") as f:
        g.request("PUT", f"/v2/images/{image_id}/file", f, headers)
    img = g.request("GET", f"/v2/images/{image_id}")
    rbd = [loc["url"] for loc in img["locations"] if loc["url"].startswith("rbd://")]
    return image_id, rbd[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/locpick-bench-rbd"))
    a = p.parse_args()
    if not ceph.ensure_bindings():
        print(f"the rados/rbd bindings are missing: {ceph.INSTALL_HINT}", file=sys.stderr)
        return 1
    sys.path.append(str(ceph.bindings_dir()))
    size = a.size_mib << 20
    data = os.urandom(size)
    digest = hashlib.sha512(data).hexdigest()
    work = a.workdir
    cluster = ceph.start(work / "ceph")
    gdir = work / "glance"
    try:
        endpoint, _ = glance_service.start(gdir, procs.free_port(), ceph_conf=cluster.conf)
        file = work / "image.raw"
        file.write_bytes(data)
        image_id, location = _upload(endpoint, file)
        file.unlink()
        record = {
            "id": image_id,
            "status": "active",
            "size": size,
            "os_hash_algo": "sha512",
            "os_hash_value": digest,
            "locations": [{"url": location, "metadata": {}}],
        }
        meta = work / "meta.json"
        meta.write_text(json.dumps(record))
        conf = work / "locpick.toml"
        conf.write_text(
            f'history_file = ""\n[rbd]\nconf = "{cluster.conf}"\nuser = "{ceph.READER}"\n'
        )
        cfg = Config(rbd=RbdConfig(conf=str(cluster.conf), user=ceph.READER), history_file="")
        dest = SHM / "locpick-bench-rbd.raw"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCPICK_CONFIG": str(conf)}

        def library() -> None:
            with locpick.Client(config=cfg) as client:
                client.download(image_id, dest, metadata=record)

        def cli() -> None:
            subprocess.run(
                [sys.executable, "-m", "locpick", "download", image_id, str(dest),
                 "--metadata", str(meta), "--json"],
                check=True, env=env, stdout=subprocess.DEVNULL,
            )  # fmt: skip

        def glance_file() -> None:
            h = hashlib.sha512()
            with procs.DIRECT.open(f"{endpoint}/v2/images/{image_id}/file", timeout=600) as r:
                for block in iter(lambda: r.read(4 << 20), b""):
                    h.update(block)
            assert h.hexdigest() == digest

        def export() -> None:
            spec = f"images/{image_id}@snap"
            out = subprocess.run(
                f"rbd -c {cluster.conf} --id {ceph.READER} export --no-progress {spec} - "
                "| sha512sum",
                shell=True, check=True, capture_output=True, text=True,
            )  # fmt: skip
            assert out.stdout.split()[0] == digest

        rows = {
            "locpick library (librbd, verified)": library,
            "locpick download (process, verified)": cli,
            "glance /file + sha512": glance_file,
            "rbd export | sha512sum": export,
        }
        best: dict[str, float] = {}
        for _ in range(a.rounds):
            for name, fn in rows.items():
                t0 = time.monotonic()
                fn()
                took = time.monotonic() - t0
                best[name] = min(best.get(name, took), took)
                dest.unlink(missing_ok=True)
    finally:
        glance_service.stop(gdir)
        ceph.stop(cluster.workdir)
    base = best["rbd export | sha512sum"]
    print(f"\n{a.size_mib} MiB, best of {a.rounds}, {platform.node()} ({os.cpu_count()} cores)")
    print(f"{'way':40} {'seconds':>8} {'MiB/s':>8} {'vs rbd export':>14}")
    for name, secs in best.items():
        print(f"{name:40} {secs:8.3f} {a.size_mib / secs:8.1f} {base / secs:13.2f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"size_mib": a.size_mib, "rounds": a.rounds, "best_seconds": best}, indent=2)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
