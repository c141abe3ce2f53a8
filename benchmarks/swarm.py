#!/usr/bin/env python3
"""Swarm benchmark: pieces from several copies at once, side by side with aria2c and curl.

    PYTHONPATH=. python benchmarks/swarm.py [--size-mib 64] [--rounds 3] [--worlds a,b]

Each world is a set of loopback origins (``locpick._demo.origin``) served from a separate process.
``uplink`` is a cap SHARED by all connections to one origin (its NIC); the choice worlds of
benchmarks/choice.py keep their per-response caps and black hole. Interleaved rounds, median:

  curl-best     curl from the best copy (every copy timed, best kept): the oracle
  aria2c        aria2c -s N -x N on all URLs (no checksum)
  aria2c+sha    the same with --checksum=sha-512=HEX (hashes after the transfer)
  locpick-1     locpick.download() in-process, [transfer] max_sources = 1
  locpick       locpick.download() in-process, the default (swarm, max_sources = 4)

Goals (issue 15): equal4 locpick >= 3.5x faster than curl-best; fast1slow3 >= 1.0x;
choice worlds <= 1.15x curl-best; corrupt1: <= 2 pieces re-fetched, dest verified.
Writes benchmarks/results/swarm.json and swarm.png (matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from choice import WORLDS as CHOICE  # noqa: E402 - the sibling benchmark's worlds, timing
from choice import World as ChoiceWorld  # noqa: E402
from choice import _timed, serve_origins  # noqa: E402

MB = 1e6

#: name -> (description, node topology, origins); an origin is a dict of Faults fields plus
#: "label" ("hole" = a black hole). Sizes: "choice" worlds run at --choice-sizes.
WORLDS: dict[str, tuple[str, dict[str, str], list[dict[str, Any]]]] = {
    "equal4": (
        "4 copies, each behind its own 24 MB/s uplink",
        {},
        [{"label": f"copy{i}", "uplink": 24 * MB} for i in range(4)],
    ),
    "fast1slow3": (
        "one copy behind 100 MB/s, three behind 8 MB/s (slow ones listed first)",
        {},
        [{"label": f"slow{i}", "uplink": 8 * MB} for i in range(3)]
        + [{"label": "fast", "uplink": 100 * MB}],
    ),
    "corrupt1": (
        "4 copies at 24 MB/s; copy2 flips a byte in the first piece it serves",
        {},
        [{"label": f"copy{i}", "uplink": 24 * MB} for i in range(4)],
    ),
    "nothing": (
        "nothing works: a corrupt copy, a 404 and a black hole (expect exit 3)",
        {},
        [
            {"label": "liar", "uplink": 100 * MB},
            {"label": "gone", "status": 404},
            {"label": "hole"},
        ],
    ),
}


def _choice_worlds() -> None:
    for name, (desc, topo, origins) in CHOICE.items():
        WORLDS[f"choice-{name}"] = (
            desc,
            topo,
            [
                {"label": label, "first_byte_delay": d, "bandwidth": bw, "metadata": meta}
                for label, d, bw, meta in origins
            ],
        )


_choice_worlds()


def serve_world(name: str, size: int) -> None:
    """Child process: start the origins, print URLs and the record as JSON, wait for EOF."""
    from locpick._demo.faults import Faults

    _desc, _topo, origins = WORLDS[name]
    specs = []
    for spec in origins:
        label, meta = spec["label"], spec.get("metadata", {})
        if label == "hole":
            specs.append((label, meta, None))
            continue
        faults = Faults(**{k: v for k, v in spec.items() if k not in ("label", "metadata")})
        if label == "liar":
            faults.corrupt_at = [size // 3]
        if name == "corrupt1" and label == "copy2":
            # a byte in each of the first 4 pieces (1 MiB at 64 MiB): copy2 serves exactly
            # one of them, as the first piece every copy is asked for
            faults.corrupt_at = [100 + k * (1 << 20) for k in range(4)]
        specs.append((label, meta, faults))
    serve_origins(name, os.urandom(size), specs, md5=False)


class World(ChoiceWorld):
    """This benchmark's worlds (uplink caps shared per origin), served by this script."""

    def __init__(self, name: str, size: int) -> None:
        super().__init__(name, size, script=__file__)


def curl_best(world: World, dest: Path, timeout: float) -> float:
    best = float("inf")
    for o in world.origins:
        if o["label"] == "hole":
            continue
        limit = min(timeout, best * 1.3) if best < float("inf") else timeout
        t, ok = _timed(["curl", "-sf", "--max-time", f"{limit:.1f}", "-o", str(dest), o["url"]],
                       limit + 5)  # fmt: skip
        if ok and t < best:
            best = t
    return best


def aria2c(world: World, dest: Path, timeout: float, sha: bool) -> float:
    urls = [o["url"] for o in world.origins]
    n = len(urls)
    cmd = [
        "aria2c", "-q", "--allow-overwrite=true", "--file-allocation=none",
        f"-s{n}", f"-x{n}", "--min-split-size=1M", "--timeout=5", "--connect-timeout=5",
        "--max-tries=2", "--auto-file-renaming=false", "-d", str(dest.parent), "-o", dest.name,
    ]  # fmt: skip
    if sha:
        cmd.append(f"--checksum=sha-512={world.record['os_hash_value']}")
    t, ok = _timed([*cmd, *urls], timeout)
    return t if ok else float("nan")


def run_locpick(
    world: World, topo: dict[str, str], dest: Path, max_sources: int
) -> tuple[float, dict[str, Any]]:
    import locpick
    from locpick.config.model import Config, Topology, TransferConfig

    cfg = Config(
        topology=Topology(**topo), history_file="", transfer=TransferConfig(max_sources=max_sources)
    )
    t0 = time.monotonic()
    try:
        with locpick.Client(config=cfg) as client:
            result = client.download(world.record["id"], dest, metadata=world.record)
    except locpick.LocpickError as exc:
        return float("nan"), {"error": str(exc)}
    notes = [a.note for a in result.attempts if a.note and "repaired" in a.note]
    return time.monotonic() - t0, {
        "sources": [s.to_json() for s in result.sources],
        "repair": notes,
        "failed": [a.url for a in result.attempts if a.outcome == "failed"],
    }


def bench_nothing(size: int, rounds: int, scratch: Path) -> dict[str, Any]:
    """Time to exit 3 (the CLI, as a user sees it) with max_sources 1 and the default."""
    world = World("nothing", size)
    meta = scratch / "nothing.json"
    meta.write_text(json.dumps(world.record))
    runs: dict[str, list[float]] = {"locpick-1": [], "locpick": []}
    codes: list[int] = []
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    try:
        for _ in range(rounds):
            for key, ms in (("locpick-1", 1), ("locpick", 4)):
                conf = scratch / "c.toml"
                conf.write_text(f"history_file = ''\n[transfer]\nmax_sources = {ms}\n")
                t0 = time.monotonic()
                r = subprocess.run(
                    [sys.executable, "-m", "locpick", "download", world.record["id"],
                     str(scratch / "x"), "--metadata", str(meta)],
                    env={**env, "LOCPICK_CONFIG": str(conf)}, capture_output=True, timeout=120,
                )  # fmt: skip
                runs[key].append(time.monotonic() - t0)
                codes.append(r.returncode)
    finally:
        world.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "world": "nothing",
        "description": WORLDS["nothing"][0],
        "size_bytes": size,
        "rounds": rounds,
        "seconds": runs,
        "median_seconds": med,
        "exit_codes": codes,
    }


def bench_world(name: str, size: int, rounds: int, scratch: Path) -> dict[str, Any]:
    desc, topo, _ = WORLDS[name]
    world = World(name, size)
    dest = scratch / "image.raw"
    runs: dict[str, list[float]] = {
        k: [] for k in ("curl-best", "aria2c", "aria2c+sha", "locpick-1", "locpick")
    }
    details: list[dict[str, Any]] = []
    timeout = 60.0
    try:
        for _ in range(rounds):
            runs["curl-best"].append(curl_best(world, dest, timeout))
            for key, sha in (("aria2c", False), ("aria2c+sha", True)):
                dest.unlink(missing_ok=True)
                runs[key].append(aria2c(world, dest, timeout, sha))
            for key, ms in (("locpick-1", 1), ("locpick", 4)):
                dest.unlink(missing_ok=True)
                t, info = run_locpick(world, topo, dest, ms)
                runs[key].append(t)
                if key == "locpick":
                    details.append(info)
            dest.unlink(missing_ok=True)
    finally:
        world.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    speedup = {k: med["curl-best"] / med[k] for k in med}
    return {
        "world": name,
        "description": desc,
        "size_bytes": size,
        "rounds": rounds,
        "seconds": runs,
        "median_seconds": med,
        "speedup_vs_curl_best": speedup,
        "locpick_details": details,
    }


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = ["curl-best", "aria2c", "aria2c+sha", "locpick-1", "locpick"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.16
    for i, c in enumerate(contenders):
        xs = [j + (i - 2) * width for j in range(len(results))]
        ys = [r["speedup_vs_curl_best"][c] for r in results]
        bars = ax.bar(xs, ys, width, label=c)
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, y), ha="center",
                        va="bottom", fontsize=6)  # fmt: skip
    ax.set_xticks(
        range(len(results)), [f"{r['world']}\n{r['size_bytes'] >> 20} MiB" for r in results],
        fontsize=7,
    )  # fmt: skip
    ax.set_ylabel("speed vs curl from the best copy (higher is better)")
    ax.set_title("locpick swarm benchmark (loopback origins, median of interleaved rounds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--choice-sizes", default="64,256")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worlds", default=",".join(WORLDS))
    ap.add_argument("--out", type=Path, default=RESULTS / "swarm.json")
    ap.add_argument("--serve-world", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_world:
        serve_world(args.serve_world, args.size)
        return 0
    results: list[dict[str, Any]] = []
    nothing: list[dict[str, Any]] = []
    scratch_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="locpick-swarm-", dir=scratch_root) as tmp:
        for name in args.worlds.split(","):
            sizes = (
                [int(s) for s in args.choice_sizes.split(",")]
                if name.startswith("choice-")
                else [args.size_mib]
            )
            if name == "nothing":
                r = bench_nothing(args.size_mib << 20, args.rounds, Path(tmp))
                nothing.append(r)
                m = r["median_seconds"]
                print(
                    f"nothing {args.size_mib} MiB  exit codes {set(r['exit_codes'])}  "
                    f"locpick-1 {m['locpick-1']:.2f}s  locpick {m['locpick']:.2f}s",
                    flush=True,
                )
                continue
            for mib in sizes:
                r = bench_world(name, mib << 20, args.rounds, Path(tmp))
                results.append(r)
                m, x = r["median_seconds"], r["speedup_vs_curl_best"]
                print(
                    f"{name:18s} {mib:4d} MiB  "
                    + "  ".join(f"{k} {m[k]:6.2f}s ({x[k]:.2f}x)" for k in m),
                    flush=True,
                )
                if name == "corrupt1":
                    print("   repair:", [d.get("repair") for d in r["locpick_details"]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results + nothing, indent=2))
    try:
        chart(results, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib missing: no chart (pip install -e '.[bench]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
