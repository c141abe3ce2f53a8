#!/usr/bin/env python3
"""Decoy benchmark (issue 18 attack 2): what N silent locations listed first cost a download.

    PYTHONPATH=. python benchmarks/decoys.py [--decoys 0,16,40,100] [--hosts 0] [--rounds 2]

N loopback sockets that accept and never answer (locpick._demo.origin.BlackHole) are listed before
one good origin (locpick._demo.origin.Origin, 1 MiB). ``--hosts K`` puts the N decoy URLs on K
sockets instead of one socket each (the per-host budget then applies). Each row is the best of
R in-process ``locpick.download`` runs to a verified file (and the worst), and the best's ratio
to the same download with no decoys. Expected: fast when the good origin is among the first
``[probe] max_candidates`` probed (ties in the prior order are broken at random), else about
one probe deadline (2 s) per round that holds only decoys.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import locpick  # noqa: E402
from locpick._demo.blackhole import BlackHole  # noqa: E402
from locpick._demo.origin import Origin  # noqa: E402


def _record(data: bytes, urls: list[str]) -> dict[str, object]:
    return {
        "id": "img",
        "status": "active",
        "size": len(data),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
        "locations": [{"url": u, "metadata": {}} for u in urls],
    }


def run(n: int, hosts: int, rounds: int, data: bytes) -> tuple[float, float]:
    """(best, worst) seconds over ``rounds`` downloads."""
    times: list[float] = []
    for _ in range(rounds):
        with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
            sockets = [stack.enter_context(BlackHole()) for _ in range(hosts or n)]
            decoys = [f"{sockets[i % len(sockets)].base}/d{i}" for i in range(n)] if n else []
            good = stack.enter_context(Origin(data))
            record = _record(data, [*decoys, good.url])
            t0 = time.perf_counter()
            locpick.download("img", Path(tmp) / "dest", metadata=record)
            times.append(time.perf_counter() - t0)
    return min(times), max(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decoys", default="0,16,40,100")
    ap.add_argument("--hosts", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    data = os.urandom(1 << 20)
    counts = [int(x) for x in args.decoys.split(",")]
    base = run(0, 0, args.rounds, data)[0]
    print(f"{'decoys':>7} {'hosts':>6} {'best s':>8} {'worst s':>8} {'best x no decoys':>17}")
    for n in counts:
        best, worst = (base, base) if n == 0 else run(n, args.hosts, args.rounds, data)
        hosts = "-" if n == 0 else str(args.hosts or n)
        print(f"{n:>7} {hosts:>6} {best:>8.2f} {worst:>8.2f} {best / base:>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
