#!/usr/bin/env python3
"""A boot storm of 100, 1,000 and 10,000 nodes on paper (issue 24 item 6): a discrete-event
simulation whose every decision is made by locpick's real choice code.

    python benchmarks/storm_sim.py [--nodes 100,1000,10000] [--size-gib 1] [--seed 1]
        [--origin-gbps 10] [--node-gbps 10] [--window 10] [--fanout 4] [--quota 0]
        [--name storm-sim]

What is real: each node's record is a real :class:`locpick.models.Image` of real
:class:`~locpick.models.Location` values carrying the metadata a node registers (marker, fill keys,
lease, topology, the ``[fleet]`` HMAC signature, made by :class:`locpick.glance.vouch.FleetTrust`),
and its source is what :func:`locpick.choose.storm.prepare` returns for it (demotion of unvouched
marks, the tree, ``_spread`` for nodes that could not register). Who registers follows Glance's
order of adds and its location quota (``--quota``; 0 = unlimited, Glance's default is 10). The
Glance requests a node makes are those of the real flow without a coordination backend
(``jobs/download.py``, ``cache/fill/register.py``, ``glance/locations.py``): GET the record, one
location add (a PATCH: the record just read stands for the duplicate check, and the PATCH's answer
— the record as the add left it — is both the check after the write and the storm refresh), and the
add's confirmation GET 1-3 s later if the download still runs; a node whose add is refused GETs
the record once more instead. Record bytes are the JSON size of the record at the moment of each
GET and of the PATCH answer.

What is modelled: time (a heapq event loop, injected seed), Glance as a fixed latency plus the
record's bytes at ``--glance-mbps``, uplinks shared equally by a source's active readers (the
origin's by all its readers), downlinks, and stream-through: a node reads its source piece by
piece (``--pieces``), never ahead of what the source holds. Not modelled: probes, TCP, lost or
refused (500/409) adds, disk, failures. Two pure functions are shared between nodes, relying on
their documented properties, so 10,000 nodes run in minutes: ``storm.parents`` (depends only on
its prefix: computed once for the registration order) and ``FleetTrust.vouches`` per location object
(the same registration is judged the same way by every node).

Output: benchmarks/results/NAME.json, .md (the table) and .png (matplotlib, ``bench`` extra).
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locpick.choose import storm
from locpick.config.model import Config, HerdConfig, Topology
from locpick.glance.lease import FILL, FILL_STARTED
from locpick.glance.locations import cache_metadata
from locpick.glance.vouch import FleetTrust
from locpick.models import Image, Location

RESULTS = Path(__file__).resolve().parent / "results"
KEY = b"storm-sim fleet key, 32 bytes.."
#: Goals of issue 24.
GOAL_REQUESTS, GOAL_RECORD, GOAL_ORIGIN = 3, 64 << 10, 1.2
#: An image record's fields besides its locations (a Glance 33 image, measured: ~1.3 KB).
BASE_RECORD = 1300
ORIGIN_URL = "https://images.example.net/v1/AUTH_ops/images/ubuntu-24.04.raw"


def _prefix_cached(fn: Callable[[Sequence[Topology], int], list[int | None]]) -> Any:
    """``storm.parents`` computed once for the whole registration order and sliced for any
    prefix: its result for ``places[:i+1]`` depends only on that prefix (its docstring)."""
    memo: dict[str, Any] = {"places": [], "fanout": None, "tree": []}

    def cached(places: Sequence[Topology], fanout: int) -> list[int | None]:
        known = memo["places"]
        if (
            memo["fanout"] != fanout
            or len(places) > len(known)
            or any(places[i] != known[i] for i in (0, len(places) - 1) if places)
        ):
            return fn(places, fanout)
        return list(memo["tree"][: len(places)])

    def prime(places: list[Topology], fanout: int) -> None:
        memo.update(places=places, fanout=fanout, tree=fn(places, fanout))

    cached.prime = prime  # type: ignore[attr-defined]
    return cached


class Sim:
    """One storm of ``n`` nodes."""

    def __init__(self, n: int, args: argparse.Namespace) -> None:
        self.n, self.a = n, args
        self.rng = random.Random(args.seed)
        # separate streams: the registration order does not depend on the choices made
        self.rng_confirm = random.Random(args.seed + 1)
        self.rng_plan = random.Random(args.seed + 2)
        #: Only register (no choices, no transfers): the order ``parents`` is primed with.
        self.dry = False
        self.size = int(args.size_gib * (1 << 30))
        self.zones = max(1, min(args.max_zones, math.ceil(n / args.zone_size)))
        self.piece = self.size / args.pieces
        self.image_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        self.fleet = FleetTrust(key=KEY)
        self.config = Config(herd=HerdConfig(fanout=args.fanout), history_file="")
        # per node
        self.zone = [i % self.zones for i in range(n)]
        self.topo = [
            Topology(region="R", zone=f"z{z}", rack=f"z{z}-r{(i // self.zones) // 20}",
                     host=f"n{i}")
            for i, z in enumerate(self.zone)
        ]  # fmt: skip
        self.url = [
            f"http://10.{z}.{(i // self.zones) // 200}.{(i // self.zones) % 200}:8080/images/"
            f"{self.image_id}/{self.rng.getrandbits(256):064x}"
            for i, z in enumerate(self.zone)
        ]
        self.requests = [0] * n
        self.record_bytes = [0] * n
        self.source: list[int | None] = [None] * n  # None: the origin
        self.depth = [0] * n
        self.start = [0.0] * n
        self.end = [math.inf] * n
        self.got = [0] * n  # pieces received
        self.registered: list[int] = []  # node indexes in Glance's order
        self.locations: list[Location] = [Location(ORIGIN_URL, {"zone": "z-origin"})]
        self.loc_bytes = [len(json.dumps({"url": ORIGIN_URL, "metadata": {"zone": "z-origin"}}))]
        self.loc_total = sum(self.loc_bytes)
        self.readers: dict[int | None, int] = {}
        self.waiting: dict[tuple[int, int], list[int]] = {}
        self.origin_bytes = [0.0] * self.zones
        self.cross_zone = 0.0
        self.events: list[tuple[float, int, str, int]] = []
        self.seq = 0

    # -- the record ---------------------------------------------------------------------------
    def record_size(self) -> int:
        return BASE_RECORD + self.loc_total + 2 * len(self.loc_bytes)

    def glance(self, i: int, nbytes: int) -> float:
        """One Glance request by node ``i`` answering ``nbytes``: its duration."""
        self.requests[i] += 1
        self.record_bytes[i] += nbytes
        return self.a.glance_latency + nbytes * 8 / (self.a.glance_mbps * 1e6)

    def image(self) -> Image:
        return Image(
            id=self.image_id, size=self.size, checksum=None, locations=tuple(self.locations)
        )

    # -- events -------------------------------------------------------------------------------
    def at(self, t: float, kind: str, i: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, i))

    def run(self) -> dict[str, Any]:
        for i in range(self.n):
            self.start[i] = self.rng.uniform(0, self.a.window) if self.n > 1 else 0.0
            self.at(self.start[i], "get", i)
        while self.events:
            t, _, kind, i = heapq.heappop(self.events)
            getattr(self, "on_" + kind)(t, i)
        return self.summary()

    def run_registrations(self) -> None:
        """Only the Glance side: who registers, in which order."""
        for i in range(self.n):
            self.start[i] = self.rng.uniform(0, self.a.window) if self.n > 1 else 0.0
            self.at(self.start[i], "get", i)
        while self.events:
            t, _, kind, i = heapq.heappop(self.events)
            if kind in ("get", "add", "reload", "reload_unregistered"):
                getattr(self, "on_" + kind)(t, i)

    def on_get(self, t: float, i: int) -> None:
        self.at(t + self.glance(i, self.record_size()), "add", i)

    def on_add(self, t: float, i: int) -> None:
        """The location add (one PATCH; its answer is the record); refused past the quota."""
        quota = self.a.quota
        ok = not quota or len(self.locations) < quota
        if ok:
            meta = cache_metadata(self.topo[i], lease=3600.0, now=1e9 + t)
            meta.update({FILL: "filling", FILL_STARTED: f"{1e9 + t:.3f}"})
            meta = self.fleet.sign(self.image_id, self.url[i], meta)
            self.locations.append(Location(self.url[i], meta))
            self.loc_bytes.append(len(json.dumps({"url": self.url[i], "metadata": meta})))
            self.loc_total += self.loc_bytes[-1]
            self.registered.append(i)
            self.at(t + self.rng_confirm.uniform(1.0, 3.0), "confirm", i)
        took = self.glance(i, self.record_size() if ok else 200)
        self.at(t + took, "reload" if ok else "reload_unregistered", i)

    def on_confirm(self, t: float, i: int) -> None:
        if self.end[i] > t:  # the fill's renewal thread confirms the add while it runs
            self.glance(i, self.record_size())

    def on_reload(self, t: float, i: int, mine: bool = True) -> None:
        # a registered node has the record in its add's answer; a refused one reads it again
        took = 0.0 if mine else self.glance(i, self.record_size())
        if self.dry:
            return
        self._index()
        _, plan = storm.prepare(
            self.image(),
            Config(herd=self.config.herd, topology=self.topo[i], history_file=""),
            mine=self.url[i] if mine else None,
            fleet=self.fleet,
            rng=self.rng_plan,
        )
        src = None if plan.parent is None else self.by_url[plan.parent]
        self.source[i] = src
        self.depth[i] = 1 if src is None else self.depth[src] + 1
        self.readers[src] = self.readers.get(src, 0) + 1
        self.at(t + took, "piece", i)

    def on_reload_unregistered(self, t: float, i: int) -> None:
        self.on_reload(t, i, mine=False)

    def places(self) -> list[Topology]:
        """The topology of every registrant, in Glance's order (after a dry run)."""
        return [storm._place(loc.metadata) for loc in self.locations[1:]]

    def _index(self) -> None:
        n = len(self.locations) - 1
        if getattr(self, "_indexed", -1) == n:
            return None
        self._indexed = n
        self.by_url = {
            loc.url: j for loc, j in zip(self.locations[1:], self.registered, strict=True)
        }
        return True

    def on_piece(self, t: float, i: int) -> None:
        """Node ``i`` asks for its next piece at ``t``: from its source once the source has it,
        at its share of the source's uplink."""
        k, src = self.got[i], self.source[i]
        if src is not None and self.got[src] <= k:
            self.waiting.setdefault((src, k), []).append(i)
            return
        up = self.a.origin_gbps if src is None else self.a.node_gbps
        rate = min(self.a.node_gbps, up / max(1, self.readers.get(src, 1))) * 1e9 / 8
        self.at(t + self.piece / rate, "piece_done", i)

    def on_piece_done(self, t: float, i: int) -> None:
        k, src = self.got[i], self.source[i]
        self.got[i] = k + 1
        if src is None:
            self.origin_bytes[self.zone[i]] += self.piece
        elif self.zone[src] != self.zone[i]:
            self.cross_zone += self.piece
        for j in self.waiting.pop((i, k), []):
            self.at(t, "piece", j)
        if self.got[i] < self.a.pieces:
            self.at(t, "piece", i)
            return
        self.end[i] = t
        self.readers[src] -= 1

    # -- results ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        times = sorted(self.end[i] - self.start[i] for i in range(self.n))
        q = statistics.quantiles(times, n=20) if len(times) > 1 else [times[0]] * 19
        per_zone = [b / self.size for b in self.origin_bytes]
        return {
            "nodes": self.n,
            "zones": self.zones,
            "registered": len(self.registered),
            "origin_copies": sum(per_zone),
            "origin_copies_per_zone_max": max(per_zone),
            "cross_zone_copies": self.cross_zone / self.size,
            "glance_requests_per_node_mean": statistics.fmean(self.requests),
            "glance_requests_per_node_max": max(self.requests),
            "record_kib_per_node_mean": statistics.fmean(self.record_bytes) / 1024,
            "record_kib_per_node_max": max(self.record_bytes) / 1024,
            "record_kib_final": self.record_size() / 1024,
            "p50_s": statistics.median(times),
            "p95_s": q[18],
            "max_s": times[-1],
            "depth_max": max(self.depth),
            "depth_mean": statistics.fmean(self.depth),
            "origin_readers": sum(1 for s in self.source if s is None),
        }


def table(rows: list[dict[str, Any]], alone: float, args: argparse.Namespace) -> str:
    head = (
        "| nodes | zones | registered | origin copies (max per zone) | cross-zone copies | "
        "Glance req/node mean (max) | record KiB/node mean (max) | p50 / alone | p95 / alone | "
        "tree depth max (mean) |\n|" + "---|" * 10 + "\n"
    )
    body = ""
    for r in rows:
        body += (
            f"| {r['nodes']:,} | {r['zones']} | {r['registered']:,} | "
            f"{r['origin_copies']:.2f} ({r['origin_copies_per_zone_max']:.2f}) | "
            f"{r['cross_zone_copies']:.1f} | "
            f"{r['glance_requests_per_node_mean']:.2f} ({r['glance_requests_per_node_max']}) | "
            f"{r['record_kib_per_node_mean']:,.0f} ({r['record_kib_per_node_max']:,.0f}) | "
            f"{r['p50_s'] / alone:.2f} | {r['p95_s'] / alone:.2f} | "
            f"{r['depth_max']} ({r['depth_mean']:.1f}) |\n"
        )
    goals = (
        f"\nGoals: <= {GOAL_REQUESTS} Glance requests and <= {GOAL_RECORD >> 10} KiB of image "
        f"record per node, origin <= {GOAL_ORIGIN} copies per zone. One node alone: "
        f"{alone:.2f} s ({args.size_gib:g} GiB, origin {args.origin_gbps:g} Gbit/s, nodes "
        f"{args.node_gbps:g} Gbit/s, fan-out {args.fanout}, quota "
        f"{args.quota or 'unlimited'}, starts within {args.window:g} s).\n"
    )
    return head + body + goals


def plot(rows: list[dict[str, Any]], alone: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["nodes"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].plot(ns, [r["p50_s"] / alone for r in rows], "o-", label="p50")
    ax[0].plot(ns, [r["p95_s"] / alone for r in rows], "s-", label="p95")
    ax[0].set(xscale="log", xlabel="nodes", ylabel="time / one node alone", title="node time")
    ax[0].legend()
    ax[1].plot(ns, [r["record_kib_per_node_mean"] for r in rows], "o-", label="mean")
    ax[1].plot(ns, [r["record_kib_per_node_max"] for r in rows], "s-", label="max")
    ax[1].axhline(GOAL_RECORD / 1024, color="r", ls="--", label="goal 64 KiB")
    ax[1].set(xscale="log", yscale="log", xlabel="nodes", ylabel="KiB",
              title="image record read per node")  # fmt: skip
    ax[1].legend()
    ax[2].plot(ns, [r["origin_copies_per_zone_max"] for r in rows], "o-", label="origin/zone max")
    ax[2].plot(ns, [r["glance_requests_per_node_mean"] for r in rows], "s-",
               label="Glance req/node")  # fmt: skip
    ax[2].plot(ns, [r["depth_max"] for r in rows], "^-", label="tree depth")
    ax[2].axhline(GOAL_ORIGIN, color="r", ls=":", lw=0.8)
    ax[2].axhline(GOAL_REQUESTS, color="r", ls="--", lw=0.8)
    ax[2].set(xscale="log", xlabel="nodes", title="origin, Glance, depth")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _judged_once() -> None:
    """``FleetTrust.vouches`` once per registration object: every node judges the same entry
    (same image, URL and metadata object) the same way, so its answer is shared."""
    real = FleetTrust.vouches
    seen: dict[int, tuple[Location, bool]] = {}

    def vouches(self: FleetTrust, image_id: str, location: Location) -> bool:
        hit = seen.get(id(location.metadata))
        if hit is not None and hit[0] is location:
            return hit[1]
        ok = real(self, image_id, location)
        seen[id(location.metadata)] = (location, ok)
        return ok

    FleetTrust.vouches = vouches  # type: ignore[method-assign]


def simulate(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """A dry run for Glance's order of registrations, ``parents`` primed with it, the storm."""
    dry = Sim(n, args)
    dry.dry = True
    dry.run_registrations()
    storm.parents.prime(dry.places(), args.fanout)  # type: ignore[attr-defined]
    sim = Sim(n, args)
    row = sim.run()
    assert sim.registered == dry.registered, "the dry run's order differs"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="100,1000,10000")
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--origin-gbps", type=float, default=10.0)
    ap.add_argument("--node-gbps", type=float, default=10.0)
    ap.add_argument("--glance-latency", type=float, default=0.02, help="s per request")
    ap.add_argument("--glance-mbps", type=float, default=1000.0, help="record transfer rate")
    ap.add_argument("--window", type=float, default=10.0, help="nodes start within (s)")
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--pieces", type=int, default=64)
    ap.add_argument("--zone-size", type=int, default=250, help="nodes per zone")
    ap.add_argument("--max-zones", type=int, default=20)
    ap.add_argument("--quota", type=int, default=0, help="Glance image_location_quota; 0 = none")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name", default="storm-sim")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    storm.parents = _prefix_cached(storm.parents)  # type: ignore[assignment]
    _judged_once()
    alone = simulate(1, args)["p50_s"]
    rows = []
    for n in (int(x) for x in args.nodes.split(",")):
        t0 = time.monotonic()
        row = simulate(n, args)
        row["cpu_s"] = round(time.monotonic() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    md = table(rows, alone, args)
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"args": vars(args), "alone_s": alone, "rows": rows}, indent=1)
    )
    (RESULTS / f"{args.name}.md").write_text(md)
    plot(rows, alone, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
