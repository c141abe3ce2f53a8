#!/usr/bin/env python3
"""Boot-storm benchmark (issue 19): N nodes want one image at once, behind one capped origin.

    PYTHONPATH=.:tests python benchmarks/herd.py [--nodes 12] [--size-mib 128]
        [--origin-mibps 32] [--window 1.0] [--seed 1] [--modes origin,storm]

One real Glance (the shared harness, no-auth) holds the image: its upload (fs1, not readable by
the nodes) and one http location on a ``locpick._demo.origin.Origin`` whose uplink is capped and
SHARED by all its connections (``Faults.uplink``, as a NIC is). Every node is real processes on
loopback: its own directory, config (topology: own host, racks of four, one zone; the origin
sits in another zone), history file, cache dir and, in storm mode, its own ``locpick serve``.
Nodes start at random offsets within ``--window`` seconds (``--seed``), each running
``locpick download IMAGE DEST --glance-url ... --json``.

Modes, side by side in one run, each on a freshly seeded image (same bytes, new id):

  origin  every node from the origin: no cache, no registration, ``[transfer] max_sources = 1``
          when the tree under test has that key
  storm   locpick's cache mode: ``serve`` + ``download --cache-dir --register`` (whatever the
          code under test does with it)

For each mode, "alone" is one node of the same configuration downloading its own fresh image
with nobody else about, measured in the same run. Reported per mode: origin bytes / (N x
size), p50/p95/max node time and their ratio to alone, Glance requests (lines of its access
log), bytes each node's ``serve`` sent (``wchar`` of its /proc/PID/io: sendfile counts) and
bytes each node got from each source (its --json attempts), every dest's sha512, and, once all
``serve`` processes have stopped (SIGTERM), how many locpick cache locations Glance still
lists. Writes benchmarks/results/herd.json, herd.md and herd.png (each node's progress over
time, coloured by the source its bytes came from; sampled from the size of its part file).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import glance_harness as gh  # noqa: E402
from fixtures_cache import ServeProcess  # noqa: E402
from helpers import cli_env  # noqa: E402

from locpick._demo.origin import Origin  # noqa: E402
from locpick.publish import MARKER  # noqa: E402

RESULTS = HERE / "results"
MiB = 1 << 20
_ORIGIN_ZONE = "z-store"


def _has_max_sources() -> bool:
    """True when the tree under test knows ``[transfer] max_sources`` (the swarm fetch)."""
    import attrs

    from locpick.config import TransferConfig

    return "max_sources" in attrs.fields_dict(TransferConfig)


@dataclass
class Node:
    """One node of the herd: its directory, config, and what happened to it."""

    index: int
    base: Path
    offset: float = 0.0
    serve: ServeProcess | None = None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float = 0.0
    returncode: int | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)
    io_before: int = 0
    served_bytes: int = 0
    doc: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"node-{self.index:02d}"

    @property
    def dest(self) -> Path:
        return self.base / "dest.img"

    @property
    def part(self) -> Path:
        return self.base / ".dest.img.locpick-part"

    @property
    def cache_dir(self) -> Path:
        return self.base / "cache"

    @property
    def config(self) -> Path:
        return self.base / "config.toml"

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def progress(self) -> int:
        for p in (self.part, self.dest):
            try:
                return p.stat().st_size
            except OSError:
                continue
        return 0


def _wchar(pid: int) -> int:
    """Bytes the process has written, sendfile included (``wchar`` of /proc/PID/io)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _write_config(node: Node, mode: str, public_url: str | None) -> None:
    lines = [
        f'history_file = "{node.base / "history.json"}"',
        "[topology]",
        'region = "R"',
        'zone = "z1"',
        f'rack = "rack-{node.index // 4}"',
        f'host = "{node.name}"',
        "[policy]",
        "forbid_glance_file = true",
    ]
    if mode == "origin" and _has_max_sources():
        lines += ["[transfer]", "max_sources = 1"]
    if mode == "storm":
        lines += ["[cache]", f'dir = "{node.cache_dir}"', f'public_url = "{public_url}"']
    node.config.write_text("\n".join(lines) + "\n")


class Glance:
    """The harness Glance, its access log (request counting) and image seeding."""

    def __init__(self, work: Path) -> None:
        self.handle = gh.start_glance(work / "glance")
        self.endpoint = self.handle.endpoint
        self.access_log = self.handle.log_dir / "access.log"

    def requests(self) -> list[str]:
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def seed(self, image_file: Path, origin: Origin, name: str) -> str:
        return gh.seed_image(
            self.endpoint,
            image_file,
            name=name,
            visibility="public",
            copy_to_stores=(),
            http_locations=[(origin.url, {"zone": _ORIGIN_ZONE, "region": "R"})],
            timeout=600,
        )

    def cache_locations(self, image_id: str) -> list[str]:
        rec = gh.get_image(self.endpoint, image_id)
        return [
            loc["url"]
            for loc in rec.get("locations", [])
            if (loc.get("metadata") or {}).get(MARKER) == "true"
        ]

    def stop(self) -> None:
        self.handle.stop()


def _request_kinds(lines: list[str]) -> dict[str, int]:
    """Glance access-log lines counted by method, path shape (ids replaced by ID) and status."""
    kinds: dict[str, int] = {}
    for line in lines:
        try:
            req, status = line.split('"')[1], line.split('"')[2].split()[0]
            method, path = req.split()[:2]
        except (IndexError, ValueError):
            continue
        parts = ["ID" if len(p) == 36 and p.count("-") == 4 else p for p in path.split("/")]
        key = f"{method} {'/'.join(parts).split('?')[0]} {status}"
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


def _file_bytes(lines: list[str]) -> int:
    """Body bytes Glance sent for ``GET /v2/images/ID/file`` (the access log's size field)."""
    total = 0
    for line in lines:
        try:
            req, rest = line.split('"')[1], line.split('"')[2].split()
        except IndexError:
            continue
        if req.startswith("GET ") and req.split()[1].endswith("/file") and rest[1].isdigit():
            total += int(rest[1])
    return total


def _run_nodes(nodes: list[Node], glance: Glance, image_id: str, mode: str, sample: float) -> float:
    """Start every node at its offset, sample progress until all exit; returns t0."""
    env = cli_env()
    env.pop("LOCPICK_CONFIG", None)
    t0 = time.monotonic()
    done = threading.Event()

    def launch(node: Node) -> None:
        delay = t0 + node.offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cmd = [
            sys.executable,
            "-m",
            "locpick",
            "download",
            image_id,
            str(node.dest),
            "--glance-url",
            glance.endpoint,
            "--config",
            str(node.config),
            "--json",
            "--no-progress",
        ]
        if mode == "storm":
            cmd += ["--cache-dir", str(node.cache_dir), "--register"]
        with (
            (node.base / "stdout.json").open("wb") as out,
            (node.base / "stderr.txt").open("wb") as err,
        ):
            node.started = time.monotonic()
            node.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
            node.returncode = node.proc.wait()
            node.ended = time.monotonic()

    threads = [threading.Thread(target=launch, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()

    def sampler() -> None:
        while not done.is_set():
            now = time.monotonic() - t0
            for n in nodes:
                if n.started and not n.ended:
                    n.samples.append((now, n.progress()))
            done.wait(sample)

    st = threading.Thread(target=sampler, daemon=True)
    st.start()
    for t in threads:
        t.join()
    done.set()
    st.join()
    for n in nodes:
        n.samples.append((n.ended - t0, n.progress()))
        try:
            n.doc = json.loads((n.base / "stdout.json").read_text() or "{}")
        except ValueError:
            n.doc = {}
    return t0


def _thin(samples: list[tuple[float, int]], most: int) -> list[tuple[float, int]]:
    """At most about ``most`` samples, evenly spaced, always keeping the first and last."""
    step = max(1, -(-len(samples) // most))
    kept = samples[::step]
    return kept if kept[-1] == samples[-1] else [*kept, samples[-1]]


def _sha512(path: Path) -> str:
    h = hashlib.sha512()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(4 * MiB):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def _classify(url: str, origin: Origin, peers: dict[str, str]) -> str:
    if url == origin.url:
        return "origin"
    for prefix, name in peers.items():
        if url.startswith(prefix):
            return f"peer:{name}"
    if "/v2/images/" in url:
        return "glance"
    return "other"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def run_mode(
    mode: str,
    args: argparse.Namespace,
    work: Path,
    glance: Glance,
    origin: Origin,
    image_file: Path,
    digest: str,
) -> dict[str, Any]:
    """One mode: a node alone on its own image, then the herd on a fresh image."""
    size = image_file.stat().st_size
    rng = random.Random(f"{args.seed}-{mode}")
    out: dict[str, Any] = {"mode": mode}
    for phase, count in (("alone", 1), ("herd", args.nodes)):
        origin.faults.uplink = None
        image_id = glance.seed(image_file, origin, f"herd-{mode}-{phase}")
        base = work / mode / phase
        nodes = [Node(i, base / f"node-{i:02d}") for i in range(count)]
        offsets = sorted(rng.uniform(0, args.window) for _ in nodes) if count > 1 else [0.0]
        peers: dict[str, str] = {}
        for node, off in zip(nodes, offsets, strict=True):
            node.base.mkdir(parents=True)
            node.offset = off
            url = None
            if mode == "storm":
                node.cache_dir.mkdir()
                node.serve = ServeProcess(node.cache_dir)
                node.io_before = _wchar(node.serve.proc.pid)
                url = node.serve.url
                peers[url + "/"] = node.name
            _write_config(node, mode, url)
        origin.faults.uplink = args.origin_mibps * MiB
        origin.reset_counters()
        glance_before = len(glance.requests())
        print(f"[{mode}/{phase}] {count} node(s) on image {image_id}", flush=True)
        t0 = _run_nodes(nodes, glance, image_id, mode, args.sample)
        origin_bytes = origin.bytes_sent
        origin_requests = len(origin.requests)
        glance_lines = glance.requests()[glance_before:]
        for node in nodes:
            if node.serve is not None:
                node.served_bytes = _wchar(node.serve.proc.pid) - node.io_before
        registered = glance.cache_locations(image_id)
        for node in nodes:
            if node.serve is not None:
                node.serve.stop()
        left = glance.cache_locations(image_id)
        refused = [
            n.name
            for n in nodes
            if "not registered" in (n.base / "stderr.txt").read_text(errors="replace")
        ]
        first_byte = min((t for n in nodes for t, b in n.samples if b > 0), default=0.0)
        last_byte = max(next((t for t, b in n.samples if b >= size), n.ended - t0) for n in nodes)
        span = last_byte - first_byte
        rows = []
        for node in nodes:
            got: dict[str, int] = {}
            segments = []
            pos = 0
            for att in node.doc.get("attempts", []):
                b = int(att.get("bytes") or 0)
                src = _classify(att.get("url", ""), origin, peers)
                if b:
                    got[src] = got.get(src, 0) + b
                    segments.append((pos, pos + b, src))
                    pos += b
            ok = _sha512(node.dest) == digest
            rows.append(
                {
                    "node": node.name,
                    "offset_s": round(node.offset, 3),
                    "seconds": round(node.seconds, 3),
                    "exit": node.returncode,
                    "verified_hash": ok,
                    "json_verified": node.doc.get("verified"),
                    "source_url": node.doc.get("source_url"),
                    "bytes_from": got,
                    "served_bytes": node.served_bytes,
                    "segments": segments,
                    "samples": _thin([(round(t, 2), b) for t, b in node.samples], 400),
                    "stderr_tail": (node.base / "stderr.txt").read_text(errors="replace")[-400:],
                }
            )
        times = [r["seconds"] for r in rows]
        out[phase] = {
            "image_id": image_id,
            "nodes": rows,
            "origin_bytes": origin_bytes,
            "origin_copies": origin_bytes / size,
            "origin_share": origin_bytes / (count * size),
            "origin_requests": origin_requests,
            "glance_requests": len(glance_lines),
            "glance_request_kinds": _request_kinds(glance_lines),
            "glance_file_bytes": _file_bytes(glance_lines),
            "p50_s": _pct(times, 50),
            "p95_s": _pct(times, 95),
            "max_s": max(times),
            "all_verified": all(r["verified_hash"] for r in rows),
            "origin_mibps_achieved": origin_bytes / span / MiB if span > 0 else 0.0,
            "registrations_refused": refused,
            "cache_locations_when_all_done": len(registered),
            "cache_locations_left_after_serve_stop": len(left),
            "t0": t0,
        }
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    alone = out["alone"]["max_s"]
    herd = out["herd"]
    herd["alone_s"] = alone
    for key in ("p50", "p95", "max"):
        herd[f"{key}_vs_alone"] = herd[f"{key}_s"] / alone
    return out


def _phases(results: dict[str, Any]) -> list[str]:
    """Where a node's time goes: before its first byte, the transfer, after its last byte
    (copy into the cache + registration), p50 and max over the herd."""
    size = results["config"]["size_mib"] * MiB
    lines = [
        "",
        "| mode | first byte after start: p50 / max | all bytes on disk: p50 / max "
        "| last byte to exit: p50 / max |",
        "|---|---|---|---|",
    ]
    for mode in results["modes"]:
        first, full, tail = [], [], []
        for row in mode["herd"]["nodes"]:
            start = row["offset_s"]
            got = [t for t, b in row["samples"] if b > 0]
            done = [t for t, b in row["samples"] if b >= size]
            if not got or not done:
                continue
            first.append(got[0] - start)
            full.append(done[0] - start)
            tail.append(row["seconds"] - (done[0] - start))
        if first:
            lines.append(
                f"| {mode['mode']} | {statistics.median(first):.1f} / {max(first):.1f} "
                f"| {statistics.median(full):.1f} / {max(full):.1f} "
                f"| {statistics.median(tail):.1f} / {max(tail):.1f} |"
            )
    return lines


def table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"N = {cfg['nodes']}, {cfg['size_mib']} MiB, origin uplink {cfg['origin_mibps']} MiB/s "
        f"shared, start window {cfg['window']} s (seed {cfg['seed']}); times in s",
        "",
        "| mode | origin bytes / (N x size) | alone | p50 | p95 | max | p95 / alone "
        "| max / alone | Glance requests (of which /file: MiB sent) "
        "| bytes sent by the nodes' serve (probes too) "
        "| all verified "
        "| cache locations registered: refused / in Glance when done / left after serve stop "
        "| origin MiB/s achieved (first to last byte) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in results["modes"]:
        h = mode["herd"]
        served = sum(r["served_bytes"] for r in h["nodes"])
        kinds = h["glance_request_kinds"].items()
        files = sum(v for k, v in kinds if k.startswith("GET /v2/images/ID/file"))
        file_mib = f"{h['glance_file_bytes'] / MiB:.0f}" if "glance_file_bytes" in h else "n/a"
        regs = "-"
        if mode["mode"] == "storm":
            regs = (
                f"{len(h['registrations_refused'])} / {h['cache_locations_when_all_done']} "
                f"/ {h['cache_locations_left_after_serve_stop']}"
            )
        lines.append(
            f"| {mode['mode']} | {h['origin_share'] * 100:.0f} % ({h['origin_copies']:.1f} "
            f"copies) | {h['alone_s']:.1f} | {h['p50_s']:.1f} | {h['p95_s']:.1f} "
            f"| {h['max_s']:.1f} | {h['p95_vs_alone']:.1f}x | {h['max_vs_alone']:.1f}x "
            f"| {h['glance_requests']} ({files}: {file_mib}) | {served / MiB:.0f} MiB "
            f"| {'yes' if h['all_verified'] else 'NO'} "
            f"| {regs} | {h['origin_mibps_achieved']:.1f} |"
        )
    return "\n".join(lines + _phases(results)) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = results["modes"]
    size = results["config"]["size_mib"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    colours = {"origin": "tab:red", "glance": "tab:purple", "other": "tab:gray"}
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    seen: set[str] = set()
    for ax, mode in zip(axes[0], modes, strict=True):
        h = mode["herd"]
        lines, line_colours = [], []
        for row in h["nodes"]:
            segs = row["segments"]
            for (t1, b1), (t2, b2) in itertools.pairwise(row["samples"]):
                mid = (b1 + b2) / 2
                src = next((s for lo, hi, s in segs if lo <= mid < hi), "")
                src = src or (segs[-1][2] if segs else "other")
                kind = "peer" if src.startswith("peer:") else src
                seen.add(kind)
                lines.append([(t1, b1 / MiB), (t2, b2 / MiB)])
                line_colours.append(colours.get(kind, "tab:blue"))
        ax.add_collection(LineCollection(lines, colors=line_colours, linewidths=1.2))
        ax.autoscale_view()
        ax.set_title(
            f"{mode['mode']}: origin {h['origin_share'] * 100:.0f} % of N x size, "
            f"max {h['max_vs_alone']:.1f}x alone"
        )
        ax.set_xlabel("seconds since the first node started")
        ax.set_ylabel("MiB on disk")
        ax.set_ylim(0, size * 1.05)
        ax.axvline(h["alone_s"], color="k", ls=":", lw=1)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours.get(k, "tab:blue")) for k in sorted(seen)]
    axes[0][0].legend(handles, sorted(seen), loc="upper left")
    cfg = results["config"]
    fig.suptitle(
        f"boot storm: {cfg['nodes']} nodes, {size} MiB, origin {cfg['origin_mibps']} MiB/s "
        "shared (dotted: one node alone)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--origin-mibps", type=float, default=32.0)
    ap.add_argument("--window", type=float, default=1.0, help="nodes start within this (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", default="origin,storm")
    ap.add_argument("--sample", type=float, default=0.1, help="progress sampling period (s)")
    ap.add_argument("--name", default="herd", help="results file stem in benchmarks/results")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--from-json", metavar="FILE", help="only redraw .md and .png from FILE")
    args = ap.parse_args()
    if args.from_json:
        done = json.loads(Path(args.from_json).read_text())
        stem = Path(args.from_json).with_suffix("")
        stem.with_suffix(".md").write_text(table(done))
        chart(done, stem.with_suffix(".png"))
        print(table(done))
        return 0
    if not gh.harness_available():
        print(f"the Glance harness is missing at {gh.harness_dir()}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="locpick-herd-", dir=os.environ.get("HERD_TMP")))
    image_file = work / "img.raw"
    with image_file.open("wb") as fh:
        for _ in range(args.size_mib):
            fh.write(os.urandom(MiB))
    digest = _sha512(image_file)
    glance = Glance(work)
    origin = Origin.from_file(image_file).start()
    results: dict[str, Any] = {
        "config": {
            "nodes": args.nodes,
            "size_mib": args.size_mib,
            "origin_mibps": args.origin_mibps,
            "window": args.window,
            "seed": args.seed,
            "max_sources_key": _has_max_sources(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "modes": [],
    }
    try:
        for mode in args.modes.split(","):
            results["modes"].append(run_mode(mode, args, work, glance, origin, image_file, digest))
    finally:
        origin.stop()
        glance.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    md = table(results)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results))
    (RESULTS / f"{args.name}.md").write_text(md)
    chart(results, RESULTS / f"{args.name}.png")
    print(md)
    for mode in results["modes"]:
        h = mode["herd"]
        print(f"{mode['mode']}: Glance requests {h['glance_request_kinds']}")
        for r in h["nodes"]:
            mib = {k: v // MiB for k, v in r["bytes_from"].items()}
            print(
                f"  {r['node']} +{r['offset_s']:.2f}s {r['seconds']:.1f}s exit {r['exit']} "
                f"ok={r['verified_hash']} MiB from={mib} "
                f"served={r['served_bytes'] // MiB} MiB"
            )
    print(f"wrote {RESULTS / args.name}.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
