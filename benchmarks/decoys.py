#!/usr/bin/env python3
"""Decoy benchmark (issue 26): choosing right when the location list is long or lies.

    PYTHONPATH=. python benchmarks/decoys.py [--rounds 1] [--worlds hosts40,same40,...]

Every origin is a real loopback server in a *separate process* (no GIL shared with the client
under test): the honest copy (``locpick._demo.origin.Origin``, 16 MiB) on its own 127.0.0.x
address, and black holes that accept TCP and never answer (``locpick._demo.blackhole``), each
on its own address (or on the honest copy's address, other ports). Every decoy is listed first
and claims this node's zone (a project member can add any location with any metadata), so it
ranks before the honest copy by what is known before a probe.

Worlds (goals from issue 26):
  hosts40    40 decoys on 40 addresses      download: honest copy delivered <= 5 s
  same40     40 decoys on the honest host   download: <= 5 s
  hosts1000  1,000 decoys on 1,000 hosts    download: <= 10 s
  rank50     50 hosts, 10 black holes       rank --json <= 2.5 s, every live copy above every hole
  scale      rank --json of 2,000 and 20,000 locations: seconds and peak RSS (<= deadline + 0.5 s,
             < 200 MiB)

Each download world is timed as the CLI (a whole ``locpick download`` process) and in-process
(``locpick.download``), beside ``curl`` on the honest URL alone (the floor: it knows the
answer) and ``aria2c`` given every URL (``--timeout 5``: a mirror list tool meeting the same
list); ratios to curl are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import locpick  # noqa: E402
from locpick.config.model import Config, Topology  # noqa: E402

SIZE = 16 << 20
HERE_CFG = '[topology]\nzone = "az1"\n'
NEAR = {"zone": "az1"}

#: The origins' process: starts the servers described on argv, prints their URLs as JSON, and
#: serves until stdin closes.
_SERVER = r"""
import json, os, resource, sys
from locpick._demo.blackhole import BlackHole, BlackHoles
from locpick._demo.origin import Origin
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
spec = json.loads(sys.argv[1])
data = open(spec["data"], "rb").read()
good = [Origin(data, host=h).start() for h in spec["good"]]
holes = BlackHoles(spec["holes"]).start() if spec["holes"] else None
same = [BlackHole(host=spec["good"][0]).start() for _ in range(spec["same"])]
print(json.dumps({"good": [o.url for o in good],
                  "holes": (holes.urls if holes else []) + [b.url for b in same]}), flush=True)
sys.stdin.read()
"""


def _hosts(n: int, first: int = 10) -> list[str]:
    return [f"127.0.{(first + i) // 250}.{(first + i) % 250 + 2}" for i in range(n)]


@contextlib.contextmanager
def servers(data_path: Path, good: list[str], holes: list[str], same: int = 0) -> Iterator[Any]:
    spec = json.dumps({"data": str(data_path), "good": good, "holes": holes, "same": same})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, spec],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def _record(data: bytes, honest: list[str], decoys: list[str]) -> dict[str, Any]:
    return {
        "id": "img",
        "status": "active",
        "size": len(data),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
        "locations": [{"url": u, "metadata": NEAR} for u in decoys]
        + [{"url": u, "metadata": {}} for u in honest],
    }


def _timed(cmd: list[str], timeout: float = 120) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCPICK_CONFIG": ""}
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, -1, "timeout"
    return time.perf_counter() - t0, r.returncode, r.stdout


def download_world(name: str, tmp: Path, data: bytes, holes: int, same: int, rounds: int) -> None:
    data_path = tmp / "data.bin"
    data_path.write_bytes(data)
    hosts = _hosts(holes + 1)
    with servers(data_path, hosts[:1], hosts[1:] if holes else [], same) as urls:
        honest, decoys = urls["good"], urls["holes"]
        meta = tmp / f"{name}.json"
        meta.write_text(json.dumps(_record(data, honest, decoys)))
        cfg = tmp / "c.toml"
        cfg.write_text(HERE_CFG)
        config = Config(topology=Topology(zone="az1"), history_file="")
        rows: dict[str, list[float]] = {"curl": [], "aria2c": [], "cli": [], "library": []}
        for r in range(rounds):
            dest = tmp / f"out{r}"
            rows["curl"].append(_timed(["curl", "-sfo", str(dest), honest[0]])[0])
            dest.unlink()
            uris = [*decoys, *honest]
            t, code, _ = _timed(
                ["aria2c", "-q", "--timeout=5", "--connect-timeout=5", "--max-tries=1",
                 "-d", str(tmp), "-o", f"aria{r}", "--allow-overwrite=true",
                 "--uri-selector=inorder", "-s1", "-x1", *uris[:1000]],
                timeout=60,
            )  # fmt: skip
            rows["aria2c"].append(t if code == 0 else float("inf"))  # inf: gave up / over 60 s
            t, code, out = _timed(
                [sys.executable, "-m", "locpick", "download", "img", str(dest),
                 "--metadata", str(meta), "--config", str(cfg), "--json", "--no-progress"],
            )  # fmt: skip
            assert code == 0 and json.loads(out)["source_url"] == honest[0], out
            rows["cli"].append(t)
            dest.unlink()
            t0 = time.perf_counter()
            res = locpick.download("img", dest, metadata=str(meta), config=config)
            rows["library"].append(time.perf_counter() - t0)
            assert res.source_url == honest[0]
            asked = [a for a in res.attempts if a.url in set(decoys) and a.outcome != "skipped"]
            assert not asked, asked
            dest.unlink()
    floor = min(rows["curl"])
    print(f"\n{name}: {holes or same} decoys, 16 MiB ({rounds} round(s), best / worst)")
    for tool, ts in rows.items():
        best, worst = min(ts), max(ts)
        if best == float("inf"):
            print(f"  {tool:8} failed or over 60 s (every round)")
            continue
        print(f"  {tool:8} {best:7.2f} s {worst:7.2f} s   x{best / floor:6.1f} curl-on-honest")


def rank_world(tmp: Path, rounds: int) -> None:
    data = os.urandom(1 << 20)
    data_path = tmp / "small.bin"
    data_path.write_bytes(data)
    hosts = _hosts(50)
    with servers(data_path, hosts[:40], hosts[40:]) as urls:
        good, holes = urls["good"], urls["holes"]
        order = good + holes
        order = order[::2] + order[1::2]
        rec = _record(data, [], [])
        rec["locations"] = [{"url": u, "metadata": {}} for u in order]
        meta = tmp / "rank50.json"
        meta.write_text(json.dumps(rec))
        print(f"\nrank50: 50 hosts, 10 black holes ({rounds} round(s))")
        for _ in range(rounds):
            t, _code, out = _timed(
                [sys.executable, "-m", "locpick", "rank", "img", "--metadata", str(meta), "--json"]
            )
            rows = {r["url"]: r for r in json.loads(out)}
            live = max(rows[u]["rank"] for u in good)
            hole = min(rows[u]["rank"] for u in holes)
            flagged = sum(rows[u]["reasons"].get("probe") == "silent" for u in holes)
            print(
                f"  cli rank {t:5.2f} s  worst live rank {live}, best hole rank {hole} "
                f"({'every live above every hole' if live < hole else 'A HOLE ABOVE A LIVE COPY'})"
                f", {flagged}/10 holes flagged silent"
            )


_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.monotonic()\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "dt = time.monotonic() - t\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt, r.returncode)\n"
)


def scale_world(tmp: Path, rounds: int) -> None:
    data = b"\x5a" * 200_000
    data_path = tmp / "scale.bin"
    data_path.write_bytes(data)
    with servers(data_path, ["127.0.0.2"], []) as urls:
        origin = urls["good"][0]
        cfg = tmp / "scale.toml"
        cfg.write_text('[topology]\nzone = "z-near"\n[probe]\nmax_probes_per_host = 32\n')
        print(f"\nscale: rank --json of N locations on one origin ({rounds} round(s))")
        for n in (2_000, 20_000):
            locs = [
                {"url": f"{origin}?copy={i}", "metadata": {"zone": f"z{i % 50}"}} for i in range(n)
            ]
            rec = _record(data, [], [])
            rec["locations"] = locs
            meta = tmp / f"scale{n}.json"
            meta.write_text(json.dumps(rec))
            for _ in range(rounds):
                cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "locpick", "rank",
                       "img", "--metadata", str(meta), "--config", str(cfg), "--json"]  # fmt: skip
                _t, _c, out = _timed(cmd)
                rss, dt, code = out.split()
                mib = int(rss) / 1024
                print(f"  {n:6} locations  {float(dt):5.2f} s  {mib:5.0f} MiB  exit {code}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--worlds", default="hosts40,same40,hosts1000,rank50,scale")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    worlds = args.worlds.split(",")
    data = os.urandom(SIZE)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "hosts40" in worlds:
            download_world("hosts40", tmp, data, 40, 0, args.rounds)
        if "same40" in worlds:
            download_world("same40", tmp, data, 0, 40, args.rounds)
        if "hosts1000" in worlds:
            download_world("hosts1000", tmp, data, 1000, 0, args.rounds)
        if "rank50" in worlds:
            rank_world(tmp, args.rounds)
        if "scale" in worlds:
            scale_world(tmp, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
