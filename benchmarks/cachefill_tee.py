#!/usr/bin/env python3
"""Cost of the stream-through tee: ``locpick download --cache-dir`` with this tree vs another
(e.g. main before the tee), interleaved, same origin, same run.

    python benchmarks/cachefill_tee.py --before OTHER_SOURCE_TREE [--size-mib 256] [--rounds 3]

The origin (``locpick._demo.origin``, sendfile) serves a random file from ``--dir`` (default
/dev/shm); dest and cache are there too, a fresh cache each round. Both sides end with the
image in the cache: before, by copying dest into it after the download; after, by renaming the
filled copy.
Prints each side's median wall time and the ratio after / before.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from locpick._demo.origin import Origin  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="source tree to compare with (PYTHONPATH)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm", help="where source, dest and caches live")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="locpick-tee-", dir=args.dir))
    try:
        src = work / "img.raw"
        with open(src, "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1 << 20))
        digest = hashlib.sha512(src.read_bytes()).hexdigest()
        with Origin.from_file(src) as origin:
            meta = work / "meta.json"
            meta.write_text(json.dumps({
                "id": "tee-img", "status": "active", "size": src.stat().st_size,
                "os_hash_algo": "sha512", "os_hash_value": digest,
                "locations": [{"url": origin.url, "metadata": {}}],
            }))  # fmt: skip
            sides = {"before": Path(args.before), "after": HERE}
            times: dict[str, list[float]] = {k: [] for k in sides}
            for r in range(args.rounds + 1):  # round 0 warms up
                for name, tree in sides.items():
                    cache, dest = work / f"cache-{name}", work / f"dest-{name}"
                    shutil.rmtree(cache, ignore_errors=True)
                    env = dict(os.environ, PYTHONPATH=str(tree))
                    cmd = [sys.executable, "-m", "locpick", "download", "tee-img", str(dest)]
                    cmd += ["--metadata", str(meta), "--cache-dir", str(cache), "--no-progress"]
                    t0 = time.monotonic()
                    subprocess.run(cmd, env=env, check=True, capture_output=True)
                    if r:
                        times[name].append(time.monotonic() - t0)
                    assert (cache / "images" / "tee-img").stat().st_size == src.stat().st_size
                    dest.unlink()
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"{k:6s} median {med[k]:.2f}s  all {[round(x, 2) for x in v]}")
        print(f"ratio after/before: {med['after'] / med['before']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
