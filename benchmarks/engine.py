#!/usr/bin/env python3
"""The one transfer engine (issue 25), side by side with its peers, in one run:

    PYTHONPATH=. python benchmarks/engine.py [--size-mib 1024] [--rounds 1] [--skip ...]

1. throughput: 1 GiB from a private nginx (sendfile) on 127.0.0.1 to /dev/shm, verified:
   ``locpick download`` as a whole process (start-up, import, exit included) and
   ``Client.download`` in-process, against floor = max(curl, sha512sum) and aria2c
   (``--checksum=sha-512``);
2. choice: 8, 30 and 120 MiB/s copies and a black hole (64 and 256 MiB), against curl from the
   best copy (the oracle: every copy timed, best kept);
3. uplinks: 30/20/20/10 MiB/s uplinks (shared per origin, 256 MiB), against aria2c -s4 -x4
   with and without ``--checksum=sha-512``; the share of the sum of the uplinks (80 MiB/s).

Origins of 2 and 3 are ``locpick._demo.origin`` processes (``benchmarks/choice.py``'s
``World``). The machine is shared (2 cores, other jobs): rounds default to 1, so compare the
rows of one run, not runs. Prints the tables and writes ``results/engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from choice import World as ChoiceWorld  # noqa: E402
from choice import _timed, serve_origins  # noqa: E402
from throughput import Nginx, make_image  # noqa: E402

MiB = 1 << 20

#: name -> origins: (label, Faults fields); label "hole" = a black hole.
WORLDS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "choice": [
        ("slow-8", {"bandwidth": 8 * MiB}),
        ("hole", {}),
        ("mid-30", {"bandwidth": 30 * MiB}),
        ("fast-120", {"bandwidth": 120 * MiB}),
    ],
    "uplinks": [
        ("up-10", {"uplink": 10 * MiB}),
        ("up-20a", {"uplink": 20 * MiB}),
        ("up-20b", {"uplink": 20 * MiB}),
        ("up-30", {"uplink": 30 * MiB}),
    ],
}


def serve_world(name: str, size: int) -> None:
    """Child process: serve the world (``choice.serve_origins``)."""
    from locpick._demo.faults import Faults

    specs = [
        (label, {}, None if label == "hole" else Faults(**fields)) for label, fields in WORLDS[name]
    ]
    serve_origins(name, os.urandom(size), specs, md5=False)


class World(ChoiceWorld):
    def __init__(self, name: str, size: int) -> None:
        super().__init__(name, size, script=__file__)


def _cli(record: Path, dest: Path, config: Path, timeout: float) -> tuple[float, bool]:
    rec = json.loads(record.read_text())
    return _timed(
        [
            sys.executable, "-m", "locpick", "download", rec["id"], str(dest),
            "--metadata", str(record), "--config", str(config), "--no-progress",
        ],
        timeout,
    )  # fmt: skip


def _inproc(record: dict[str, Any], dest: Path) -> tuple[float, dict[str, Any]]:
    import locpick
    from locpick.config.model import Config

    t0 = time.monotonic()
    with locpick.Client(config=Config(history_file="")) as client:
        result = client.download(record["id"], dest, metadata=record)
    took = time.monotonic() - t0
    return took, {"sources": [s.to_json() for s in result.sources]}


def _aria2c(urls: list[str], dest: Path, sha: str | None, timeout: float) -> float:
    n = len(urls)
    cmd = [
        "aria2c", "-q", "--allow-overwrite=true", "--file-allocation=none",
        f"-s{n}", f"-x{n}", "--min-split-size=1M", "--timeout=5", "--connect-timeout=5",
        "--max-tries=2", "--auto-file-renaming=false", "-d", str(dest.parent), "-o", dest.name,
    ]  # fmt: skip
    if sha:
        cmd.append(f"--checksum=sha-512={sha}")
    t, ok = _timed([*cmd, *urls], timeout)
    return t if ok else float("nan")


def _rm(*paths: Path) -> None:
    for p in paths:
        for q in p.parent.glob(f"{p.name}*"):
            q.unlink(missing_ok=True)
        for q in p.parent.glob(f".{p.name}*"):
            q.unlink(missing_ok=True)


def _best(xs: list[float]) -> float:
    ok = [x for x in xs if x == x]
    return min(ok) if ok else float("nan")


def _print(title: str, rows: list[tuple[str, float, float]], unit: str) -> None:
    print(f"\n{title}\n| contender | s | {unit} |\n|---|---|---|")
    for name, secs, ratio in rows:
        print(f"| {name} | {secs:.2f} | {ratio:.2f} |")


# ------------------------------------------------------------------------------- sections
def bench_throughput(size_mib: int, rounds: int, scratch: Path, config: Path) -> dict[str, Any]:
    root = Path("/dev/shm") / f"locpick-engine-{os.getpid()}"
    root.mkdir()
    try:
        _md5, sha = make_image(root / "image.raw", size_mib)
        nginx = Nginx(root, scratch / "nginx")
        nginx.start()
        url = f"http://127.0.0.1:{nginx.port}/image.raw"
        rec = {
            "id": "bench-engine", "status": "active", "size": size_mib * MiB,
            "os_hash_algo": "sha512", "os_hash_value": sha, "locations": [{"url": url}],
        }  # fmt: skip
        record = scratch / "record.json"
        record.write_text(json.dumps(rec))
        dest = root / "out.raw"
        t: dict[str, list[float]] = {k: [] for k in ("curl", "sha512", "aria2c", "cli", "lib")}
        for _ in range(rounds):  # interleaved: each round runs every contender once
            _rm(dest)
            t["curl"].append(_timed(["curl", "-sf", "-o", str(dest), url], 300)[0])
            t["sha512"].append(_timed(["sha512sum", str(dest)], 300)[0])
            _rm(dest)
            t["aria2c"].append(_aria2c([url], dest, sha, 300))
            _rm(dest)
            secs, ok = _cli(record, dest, config, 300)
            t["cli"].append(secs if ok else float("nan"))
            _rm(dest)
            t["lib"].append(_inproc(rec, dest)[0])
            _rm(dest)
        nginx.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {k: _best(v) for k, v in t.items()}
    floor = max(best["curl"], best["sha512"])
    rows = [
        ("curl (floor term)", best["curl"], best["curl"] / floor),
        ("sha512sum (floor term)", best["sha512"], best["sha512"] / floor),
        ("aria2c --checksum=sha-512", best["aria2c"], best["aria2c"] / floor),
        ("locpick download (whole process)", best["cli"], best["cli"] / floor),
        ("Client.download (in-process)", best["lib"], best["lib"] / floor),
    ]
    _print(f"throughput: {size_mib} MiB nginx -> /dev/shm, verified", rows, "/floor")
    return {"size_mib": size_mib, "seconds": t, "floor": floor}


def bench_world(
    name: str, size_mib: int, rounds: int, scratch: Path, config: Path
) -> dict[str, Any]:
    world = World(name, size_mib * MiB)
    try:
        urls = [o["url"] for o in world.origins]
        record = scratch / f"{name}.json"
        record.write_text(json.dumps(world.record))
        sha = world.record["os_hash_value"]
        dest = scratch / f"{name}.out"
        t: dict[str, list[float]] = {}
        shares: list[Any] = []
        for _ in range(rounds):
            if name == "choice":
                best = float("inf")
                for o in world.origins:
                    if o["label"] == "hole":
                        continue
                    _rm(dest)
                    secs, ok = _timed(["curl", "-sf", "-o", str(dest), o["url"]], 120)
                    if ok:
                        best = min(best, secs)
                t.setdefault("curl-best", []).append(best)
            else:
                _rm(dest)
                t.setdefault("aria2c -s4 -x4", []).append(_aria2c(urls, dest, None, 120))
                _rm(dest)
                t.setdefault("aria2c -s4 -x4 --checksum", []).append(_aria2c(urls, dest, sha, 120))
            _rm(dest)
            secs, ok = _cli(record, dest, config, 120)
            t.setdefault("locpick download (whole process)", []).append(
                secs if ok else float("nan")
            )
            _rm(dest)
            secs, extra = _inproc(world.record, dest)
            t.setdefault("Client.download (in-process)", []).append(secs)
            shares.append(extra["sources"])
            _rm(dest)
    finally:
        world.close()
    best_t = {k: _best(v) for k, v in t.items()}
    if name == "choice":
        ref = best_t["curl-best"]
        rows = [(k, v, v / ref) for k, v in best_t.items()]
        _print(f"choice world, {size_mib} MiB (8/30/120 MiB/s + a black hole)", rows, "/curl-best")
    else:
        ideal = size_mib * MiB / (80 * MiB)
        rows = [(k, v, ideal / v) for k, v in best_t.items()]
        _print(
            f"unequal uplinks 30/20/20/10 MiB/s, {size_mib} MiB (ideal {ideal:.2f} s)",
            rows, "share of the sum of uplinks",
        )  # fmt: skip
    return {"world": name, "size_mib": size_mib, "seconds": t, "shares": shares}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--size-mib", type=int, default=1024, help="throughput image size")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list of: throughput,choice,uplinks")
    ap.add_argument("--serve-world", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_world:
        serve_world(args.serve_world, args.size)
        return 0
    for tool in ("curl", "aria2c", "nginx", "sha512sum"):
        if shutil.which(tool) is None and not Path("/usr/sbin/nginx").exists():
            sys.exit(f"{tool} missing: apt-get install curl aria2 nginx coreutils")
    # what users run has its bytecode compiled (pip does it at install): without it every
    # ``locpick`` process would compile ~100 modules (~0.5 s), e.g. under
    # PYTHONDONTWRITEBYTECODE=1 as in this sandbox
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import site

    roots = [str(HERE.parent / "locpick"), *site.getsitepackages()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *roots], check=False)
    skip = set(filter(None, args.skip.split(",")))
    out: dict[str, Any] = {"rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        config = scratch / "locpick.toml"
        config.write_text('history_file = ""\n')
        if "throughput" not in skip:
            out["throughput"] = bench_throughput(args.size_mib, args.rounds, scratch, config)
        if "choice" not in skip:
            out["choice"] = [
                bench_world("choice", mib, args.rounds, scratch, config) for mib in (64, 256)
            ]
        if "uplinks" not in skip:
            out["uplinks"] = bench_world("uplinks", 256, args.rounds, scratch, config)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
