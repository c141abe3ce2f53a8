#!/usr/bin/env python3
"""S3 row of the throughput benchmark: locpick vs s3fs ``get`` (and ``aws s3 cp``) over loopback.

    PYTHONPATH=. python benchmarks/s3.py [--size-mib 128] [--rounds 3] [--locpick-cmd CMD]

Starts moto in server mode (``ThreadedMotoServer``) on 127.0.0.1, uploads a random N-MiB object,
writes a Glance-v2-shaped metadata JSON for it, then times, interleaved per round (best of R
kept), downloads to /dev/shm, each as a fresh process (so every row pays interpreter start-up):

  s3fs get          python -c "s3fs.S3FileSystem().get_file(...)"        (no checksum)
  s3fs get+sha512   the same, then sha512 of the file in the same process
  aws s3 cp         aws s3 cp s3://... /dev/shm/x  (only if the aws CLI is installed)
  locpick           <locpick-cmd> download bench-img /dev/shm/x --metadata META --json
                    (probe, ranged reads, sha512-verified, atomic rename)

moto is a Python S3 emulator, not a fast server: these are functional figures, only comparable
to each other within one run. Results go to benchmarks/results/s3.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "s3.json"
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
MiB = 1 << 20
BUCKET = "bench"
KEY = "image.raw"

S3FS_GET = """
import hashlib, sys, s3fs
fs = s3fs.S3FileSystem()
fs.get_file(sys.argv[1], sys.argv[2])
if sys.argv[3] == "hash":
    h = hashlib.sha512()
    with open(sys.argv[2], "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    print(h.hexdigest())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--locpick-cmd", default=f"{shlex.quote(sys.executable)} -m locpick")
    args = ap.parse_args()

    import boto3

    data = os.urandom(args.size_mib * MiB)
    digest = hashlib.sha512(data).hexdigest()
    server, endpoint = start_moto()
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        LOCPICK_CONFIG=str(ROOT / "tests" / "empty-config.toml"),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    dest = SHM / f"locpick-s3-bench-{os.getpid()}"
    meta = SHM / f"locpick-s3-bench-{os.getpid()}.json"
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
        )
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=data)
        url = f"s3://{BUCKET}/{KEY}"
        meta.write_text(
            json.dumps(
                {
                    "id": "bench-img",
                    "status": "active",
                    "size": len(data),
                    "os_hash_algo": "sha512",
                    "os_hash_value": digest,
                    "locations": [{"url": url, "metadata": {}}],
                }
            )
        )
        rows: dict[str, list[str]] = {
            "s3fs get": [sys.executable, "-c", S3FS_GET, url, str(dest), "nohash"],
            "s3fs get+sha512": [sys.executable, "-c", S3FS_GET, url, str(dest), "hash"],
        }
        aws = shutil.which("aws")
        if aws:
            rows["aws s3 cp"] = [aws, "s3", "cp", "--quiet", url, str(dest)]
        rows["locpick"] = [
            *shlex.split(args.locpick_cmd),
            "download",
            "bench-img",
            str(dest),
            "--metadata",
            str(meta),
            "--json",
            "--no-progress",
        ]
        best: dict[str, float] = {}
        notes: dict[str, str] = {}
        for r in range(args.rounds):
            for name, cmd in rows.items():
                dest.unlink(missing_ok=True)
                seconds, proc = timed(cmd, env)
                ok = proc.returncode == 0 and dest.is_file() and dest.stat().st_size == len(data)
                if name == "s3fs get+sha512":
                    ok = ok and proc.stdout.strip() == digest
                if name == "locpick" and ok:
                    ok = json.loads(proc.stdout).get("verified") == "sha512"
                if not ok:
                    notes[name] = f"failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}"
                    print(f"round {r + 1} {name}: FAILED {notes[name]}", flush=True)
                    continue
                best[name] = min(best.get(name, seconds), seconds)
                print(f"round {r + 1} {name}: {seconds:.2f}s", flush=True)
    finally:
        server.stop()
        dest.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
    ref = best.get("s3fs get+sha512")
    print(f"\n{args.size_mib} MiB from moto on loopback, best of {args.rounds}:")
    print(f"{'row':<18}{'best s':>8}{'MiB/s':>8}{'/s3fs+sha':>11}")
    table = []
    for name in rows:
        if name not in best:
            print(f"{name:<18}{'-':>8}  {notes.get(name, '')}")
            continue
        s = best[name]
        rel = f"{s / ref:.2f}" if ref else "-"
        print(f"{name:<18}{s:>8.2f}{args.size_mib / s:>8.1f}{rel:>11}")
        table.append({"row": name, "best_s": round(s, 3), "mib_s": round(args.size_mib / s, 1)})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "size_mib": args.size_mib,
                "rounds": args.rounds,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "rows": table,
                "notes": notes,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if "locpick" in best else 1


if __name__ == "__main__":
    raise SystemExit(main())
