#!/usr/bin/env python3
"""Choice benchmark: does locpick pick the right copy, and what does choosing cost?

    PYTHONPATH=. python benchmarks/choice.py [--size-mib 256] [--rounds 1] [--worlds a,b]

Each world is a set of loopback origins (``locpick._demo.origin.Origin``: first-byte delay and a
bandwidth cap per origin, plus black holes) served from a *separate process* so the origins
do not share a GIL with the client under test. For every world and round we time:

  oracle   curl on the best location (every location is curl-timed, best kept)
  naive    curl on the first-listed location (black hole: counted as the --naive-timeout)
  aria2c   aria2c given all URLs (multi-source, adaptive URI selector)
  locpick  locpick.download() in-process: probe + rank + verified (sha512) download

regret = time / oracle time. The goal: locpick <= 1.15 x oracle in every world and never
worse than naive. Writes benchmarks/results/choice.json and choice.png (matplotlib, the
``bench`` extra).
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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MB = 1e6

#: name -> (description, node topology, origins). An origin: (label, first-byte delay s,
#: bandwidth B/s or None, metadata); label "hole" = a black hole. Listed order = naive order.
Origin = tuple[str, float, float | None, dict[str, str]]
WORLDS: dict[str, tuple[str, dict[str, str], list[Origin]]] = {
    "mixed": (
        "4 origins, mixed TTFB/bandwidth; the first-listed has the best TTFB, the worst bandwidth",
        {},
        [
            ("lowlat-15MB/s", 0.003, 15 * MB, {}),
            ("mid-40MB/s", 0.05, 40 * MB, {}),
            ("fast-90MB/s", 0.15, 90 * MB, {}),
            ("ok-60MB/s", 0.10, 60 * MB, {}),
        ],
    ),
    "topology": (
        "node in az1: same-zone origin near-equal to the other-zone ones; a slow one listed first",
        {"region": "r1", "zone": "az1"},
        [
            ("az2-30MB/s", 0.01, 30 * MB, {"region": "r1", "zone": "az2"}),
            ("az2-75MB/s", 0.02, 75 * MB, {"region": "r1", "zone": "az2"}),
            ("az1-70MB/s", 0.01, 70 * MB, {"region": "r1", "zone": "az1"}),
            ("az3-40MB/s", 0.03, 40 * MB, {"region": "r1", "zone": "az3"}),
        ],
    ),
    "blackhole": (
        "a black hole listed first, a slow-but-close (same zone, 2 ms) origin, a far fast one",
        {"region": "r1", "zone": "az1"},
        [
            ("hole", 0.0, None, {"zone": "az1"}),
            ("close-12MB/s", 0.002, 12 * MB, {"zone": "az1"}),
            ("far-85MB/s", 0.12, 85 * MB, {"region": "r2"}),
            ("mid-35MB/s", 0.04, 35 * MB, {"region": "r1"}),
        ],
    ),
}


# ------------------------------------------------------------------------------ world server
def serve_world(name: str, size: int) -> None:
    """Child process: start the world's origins, print their URLs as JSON, wait for stdin EOF."""
    from locpick._demo.faults import Faults

    _desc, _topo, origins = WORLDS[name]
    specs = [
        (label, meta, None if label == "hole" else Faults(first_byte_delay=delay, bandwidth=bw))
        for label, delay, bw, meta in origins
    ]
    serve_origins(name, os.urandom(size), specs, md5=True)


def serve_origins(
    name: str, data: bytes, specs: list[tuple[str, dict[str, str], Any]], *, md5: bool
) -> None:
    """Serve ``data`` from one origin per (label, metadata, Faults) at /LABEL/image.raw (Faults
    None: a black hole), print the URLs and the image record as JSON, wait for stdin EOF."""
    from locpick._demo.blackhole import BlackHole
    from locpick._demo.origin import Origin

    out = []
    with ExitStack() as stack:
        for label, meta, faults in specs:
            if faults is None:
                hole = stack.enter_context(BlackHole(path=f"/{label}/image.raw"))
                out.append({"label": label, "url": hole.url, "metadata": meta})
                continue
            o = stack.enter_context(Origin(data, path=f"/{label}/image.raw", faults=faults))
            out.append({"label": label, "url": o.url, "metadata": meta})
        record: dict[str, Any] = {
            "id": f"bench-{name}",
            "status": "active",
            "size": len(data),
            **({"checksum": hashlib.md5(data).hexdigest()} if md5 else {}),
            "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(data).hexdigest(),
            "locations": [{"url": o["url"], "metadata": o["metadata"]} for o in out],
        }
        print(json.dumps({"origins": out, "record": record}), flush=True)
        sys.stdin.read()


class World:
    """A world's origins served by ``script --serve-world NAME`` in a process of their own."""

    def __init__(self, name: str, size: int, script: str = __file__) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        self.proc = subprocess.Popen(
            [sys.executable, script, "--serve-world", name, "--size", str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        doc = json.loads(self.proc.stdout.readline())
        self.origins: list[dict[str, Any]] = doc["origins"]
        self.record: dict[str, Any] = doc["record"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# ------------------------------------------------------------------------------ contenders
def _timed(cmd: list[str], timeout: float) -> tuple[float, bool]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout
        )
        ok = r.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return time.monotonic() - t0, ok


def curl(url: str, dest: Path, max_time: float) -> tuple[float, bool]:
    return _timed(
        ["curl", "-sf", "--max-time", f"{max_time:.1f}", "-o", str(dest), url], max_time + 5
    )


def aria2c(urls: list[str], dest: Path, timeout: float) -> tuple[float, bool]:
    cmd = [
        "aria2c", "-q", "--allow-overwrite=true", "--file-allocation=none",
        "--uri-selector=adaptive", f"--split={len(urls)}", "--min-split-size=8M",
        # every mirror here is 127.0.0.1 (on its own port): allow one connection per URL
        f"--max-connection-per-server={len(urls)}",
        "--timeout=5", "--connect-timeout=5", "--max-tries=2", "--auto-file-renaming=false",
        "-d", str(dest.parent), "-o", dest.name, *urls,
    ]  # fmt: skip
    return _timed(cmd, timeout)


def run_locpick(world: World, topo: dict[str, str], dest: Path) -> tuple[float, bool, str]:
    import locpick
    from locpick.config.model import Config, Topology

    cfg = Config(topology=Topology(**topo), history_file="")
    t0 = time.monotonic()
    try:
        with locpick.Client(config=cfg) as client:
            result = client.download(world.record["id"], dest, metadata=world.record)
        chosen = result.source_url
        ok = True
    except locpick.LocpickError as exc:
        chosen, ok = f"failed: {exc}", False
    return time.monotonic() - t0, ok, chosen


def label_of(world: World, url: str) -> str:
    for o in world.origins:
        if o["url"] == url:
            return str(o["label"])
    return url


# ------------------------------------------------------------------------------ main
def bench_world(
    name: str, size: int, rounds: int, naive_timeout: float, scratch: Path
) -> dict[str, Any]:
    desc, topo, _ = WORLDS[name]
    world = World(name, size)
    dest = scratch / "image.raw"
    runs: dict[str, list[float]] = {"oracle": [], "naive": [], "aria2c": [], "locpick": []}
    notes: dict[str, Any] = {"locpick_choice": [], "oracle_choice": [], "naive_failed": 0}
    try:
        for _ in range(rounds):
            # oracle: curl every real origin (bounded by the best so far), keep the best.
            best, best_label = float("inf"), ""
            # Fastest by design first, so the others are cut off early (at 1.3x the best).
            nominal = {label: bw or 0.0 for label, _d, bw, _m in WORLDS[name][2]}
            for o in sorted(world.origins, key=lambda o: -nominal[o["label"]]):
                if o["label"] == "hole":
                    continue
                limit = min(naive_timeout, best * 1.3) if best < float("inf") else naive_timeout
                t, ok = curl(o["url"], dest, limit)
                if ok and t < best:
                    best, best_label = t, o["label"]
            runs["oracle"].append(best)
            notes["oracle_choice"].append(best_label)
            first = world.origins[0]
            t, ok = curl(first["url"], dest, naive_timeout)
            if not ok:
                notes["naive_failed"] += 1
                t = max(t, naive_timeout)
            runs["naive"].append(t)
            t, ok = aria2c([o["url"] for o in world.origins], dest, naive_timeout * 2)
            runs["aria2c"].append(t if ok else float("nan"))
            dest.unlink(missing_ok=True)
            t, ok, chosen = run_locpick(world, topo, dest)
            runs["locpick"].append(t if ok else float("nan"))
            notes["locpick_choice"].append(label_of(world, chosen))
            dest.unlink(missing_ok=True)
    finally:
        world.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    regret = {k: med[k] / med["oracle"] for k in med}
    return {
        "world": name,
        "description": desc,
        "size_bytes": size,
        "rounds": rounds,
        "seconds": runs,
        "median_seconds": med,
        "regret": regret,
        **notes,
    }


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = ["oracle", "locpick", "aria2c", "naive"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.2
    for i, c in enumerate(contenders):
        xs = [j + (i - 1.5) * width for j in range(len(results))]
        ys = [r["regret"][c] for r in results]
        bars = ax.bar(xs, ys, width, label=c)
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(
                f"{y:.2f}",
                (b.get_x() + b.get_width() / 2, min(y, 4.7)),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.axhline(1.15, color="grey", linestyle="--", linewidth=1, label="goal 1.15x")
    ax.set_xticks(range(len(results)), [r["world"] for r in results])
    ax.set_ylabel("time / oracle time (lower is better)")
    ax.set_ylim(0, 5)
    ax.set_title(f"locpick choice benchmark ({results[0]['size_bytes'] >> 20} MiB image, loopback)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--worlds", default=",".join(WORLDS))
    ap.add_argument("--naive-timeout", type=float, default=30.0)
    ap.add_argument("--serve-world", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_world:
        serve_world(args.serve_world, args.size)
        return 0
    for tool in ("curl", "aria2c"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install {tool})", file=sys.stderr)
            return 2
    size = args.size_mib << 20
    scratch_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    results = []
    with tempfile.TemporaryDirectory(prefix="locpick-choice-", dir=scratch_root) as tmp:
        for name in args.worlds.split(","):
            r = bench_world(name, size, args.rounds, args.naive_timeout, Path(tmp))
            results.append(r)
            m, g = r["median_seconds"], r["regret"]
            oc, lc = ",".join(r["oracle_choice"]), ",".join(r["locpick_choice"])
            print(
                f"{name:10s} oracle {m['oracle']:6.2f}s ({oc})  "
                f"locpick {m['locpick']:6.2f}s x{g['locpick']:.2f} ({lc})  "
                f"aria2c {m['aria2c']:6.2f}s x{g['aria2c']:.2f}  "
                f"naive {m['naive']:6.2f}s x{g['naive']:.2f}"
                + (" (naive timed out)" if r["naive_failed"] else ""),
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    doc = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "nproc": os.cpu_count(),
        "worlds": results,
    }
    (RESULTS / "choice.json").write_text(json.dumps(doc, indent=2) + "\n")
    chart(results, RESULTS / "choice.png")
    print(f"wrote {RESULTS / 'choice.json'} and {RESULTS / 'choice.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
