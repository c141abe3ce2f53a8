"""`locpick rank` on records of 20 to 20,000 locations: wall time, peak RSS, locations probed.

Every location is a distinct URL on one loopback origin (it ignores the query), 1 in 50 in
this node's zone. Each row is the best of ``--rounds`` CLI runs (interpreter start included),
with its ratio to the 20-location row; peak RSS is the CLI process's own (RUSAGE_CHILDREN of a
wrapper that runs nothing else). The issue's target: 20,000 locations within the probe
deadline (2 s) + 0.5 s, under 200 MiB.

    python benchmarks/fleet.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locpick._demo.origin import Origin  # noqa: E402

MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.monotonic()\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "dt = time.monotonic() - t\n"
    "sys.stdout.write(r.stdout)\n"
    "print(f'@@ {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {dt} {r.returncode}')\n"
)


def record(url: str, n: int, data: bytes) -> dict[str, object]:
    import hashlib

    return {
        "id": "bench",
        "status": "active",
        "size": len(data),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
        "locations": [
            {"url": f"{url}?copy={i}", "metadata": {"zone": "near" if i % 50 == 0 else f"z{i}"}}
            for i in range(n)
        ],
    }


def run(meta: Path, cfg: Path) -> tuple[float, int, list[dict[str, object]]]:
    cmd = [sys.executable, "-m", "locpick", "rank", "bench", "--metadata", str(meta)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), LOCPICK_CONFIG=str(cfg))
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd, "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    out, _, tail = r.stdout.rpartition("@@ ")
    rss, seconds, code = tail.split()
    if code != "0":
        raise SystemExit(f"rank failed (exit {code})")
    return float(seconds), int(rss), json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="20,2000,20000")
    args = ap.parse_args()
    data = os.urandom(200_000)
    with tempfile.TemporaryDirectory() as tmp, Origin(data) as origin:
        cfg = Path(tmp) / "c.toml"
        # Every location is on the one loopback origin: lift the per-host probe cap so that
        # max_candidates (32) is what bounds probing, as with copies on distinct hosts.
        cfg.write_text(
            'history_file = ""\n[topology]\nzone = "near"\n[probe]\nmax_probes_per_host = 32\n'
        )
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            meta = Path(tmp) / f"m{n}.json"
            meta.write_text(json.dumps(record(origin.url, n, data)))
            best = None
            for _ in range(args.rounds):
                origin.reset_counters()
                seconds, rss, scores = run(meta, cfg)
                probed = len({r.path for r in origin.requests})
                if best is None or seconds < best[0]:
                    best = (seconds, rss, probed, len(scores))
            assert best is not None
            rows.append((n, *best))
        base = rows[0][1]
        print("| locations | best s | x 20-loc | peak RSS MiB | probed | rows |")
        print("|---|---|---|---|---|---|")
        for n, seconds, rss, probed, listed in rows:
            print(
                f"| {n} | {seconds:.2f} | {seconds / base:.1f} | {rss / 1024:.0f} "
                f"| {probed} | {listed} |"
            )


if __name__ == "__main__":
    main()
