#!/usr/bin/env python3
"""Boot-storm benchmark (issue 19): N nodes want one image at once, behind one capped origin.

    PYTHONPATH=.:tests python benchmarks/herd.py [--nodes 12] [--size-mib 128]
        [--origin-mibps 32] [--window 1.0] [--seed 1] [--modes origin,storm]
        [--kill-nodes 6] [--kill-lease 20] [--set herd.origin_share=0]

One real Glance (the shared harness, no-auth, ``image_location_quota`` raised above N) holds
the image: its upload (fs1, not readable by the nodes) and one http location on a
``locpick._demo.origin.Origin`` whose uplink is capped and SHARED by all its connections
(``Faults.uplink``, as a NIC is). Every node is real processes on loopback: its own directory,
config (topology: own host, racks of four, one zone; the origin sits in another zone), history
file, cache dir and, in storm mode, its own ``locpick serve`` (told Glance, so it renews and, on
SIGTERM, deregisters). Each node reaches Glance through its own small counting proxy, so Glance
requests are counted per node and by kind (image GET, /file GET, location add / remove /
renewal, listing), the downloader's and its ``serve``'s together. Nodes start at random
offsets within ``--window`` seconds (``--seed``), each running
``locpick download IMAGE DEST --glance-url PROXY --json``.

Modes, side by side in one run, each on a freshly seeded image (same bytes, new id):

  origin  every node from the origin: no cache, no registration, ``[transfer] max_sources = 1``
  storm   locpick's cache mode: ``serve`` + ``download --cache-dir --register``, plus any
          ``--set SECTION.KEY=VALUE`` (TOML value) in every storm node's config

For each mode, "alone" is one node of the same configuration downloading its own fresh image
with nobody else about, measured in the same run. Storm mode also runs a ``sigkill`` phase
(``--kill-nodes`` nodes, ``[cache] lease = --kill-lease``): a third of them are SIGKILLed
(download and serve) when they hold half the image, the others must still finish verified; then
every remaining ``serve`` is SIGKILLed; Glance's listing is read at once, after the lease ran
out (listed, and usable in a fresh node's ``rank``), and after ``locpick cache reap``.

Reported per mode: origin bytes / (N x size), p50/p95/max node time and their ratio to alone,
Glance requests (per kind, and the most any one node made of each), bytes each node's ``serve``
sent (``wchar`` of its /proc/PID/io) and each node got from each source (its --json ``sources``;
the kernel's per-socket ``bytes_received`` from ``ss`` as a cross-check), every dest's sha512,
and how many locpick cache locations Glance still lists once every ``serve`` stopped
(SIGTERM). Progress is sampled from the bytes on disk (allocated blocks of the part, filling
and dest files; the fill record's piece bitmap) and coloured by the source the node was
receiving from in that interval (``ss``). Writes benchmarks/results/NAME.json, .md and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import glance_harness as gh  # noqa: E402
from fixtures_cache import ServeProcess  # noqa: E402
from helpers import cli_env  # noqa: E402

from locpick._demo.origin import Origin  # noqa: E402
from locpick.glance.lease import MARKER, lease_state  # noqa: E402

RESULTS = HERE / "results"
MiB = 1 << 20
_ORIGIN_ZONE = "z-store"
_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "proxy-connection", "upgrade"}


def _has_max_sources() -> bool:
    """True when the tree under test knows ``[transfer] max_sources`` (the swarm fetch)."""
    import attrs

    from locpick.config.model import TransferConfig

    return "max_sources" in attrs.fields_dict(TransferConfig)


# ------------------------------------------------------------------ Glance request counting


def _glance_kind(method: str, path: str, body: bytes) -> str:
    """What a Glance request is, for counting: image GET, /file GET, location add/remove/renew."""
    parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
    if parts[:2] == ["v2", "images"]:
        if len(parts) == 2:
            return "list images" if method == "GET" else f"{method} images"
        if len(parts) == 3 and method == "GET":
            return "image GET"
        if len(parts) == 4 and parts[3] == "file":
            return f"/file {method}"
        if len(parts) == 3 and method == "PATCH":
            try:
                ops = {op.get("op") for op in json.loads(body or b"[]")}
            except (ValueError, AttributeError):
                ops = set()
            if ops == {"add"}:
                return "location add"
            if ops == {"remove"}:
                return "location remove"
            if ops == {"add", "remove"}:
                return "location renew"
            return "PATCH other"
    return f"{method} {'/'.join(parts[:2]) or '/'}"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a SIGKILLed node) is not news


class GlanceCounter:
    """One counting HTTP proxy per node in front of the harness Glance (same API, new port)."""

    def __init__(self, endpoint: str) -> None:
        u = urllib.parse.urlsplit(endpoint)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.lock = threading.Lock()
        #: (node name, kind, status) -> requests
        self.counts: dict[tuple[str, str, int], int] = {}
        #: (node name, kind, status, monotonic time, seconds to the response head): every
        #: request, for the bounds per node and Glance's latency under the storm
        self.log: list[tuple[str, str, int, float, float]] = []
        self.servers: list[ThreadingHTTPServer] = []

    def proxy(self, name: str) -> str:
        """Start a proxy for node ``name``; returns its endpoint URL."""
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(counter.host, counter.port, timeout=300)
                try:
                    began = time.monotonic()
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    kind = _glance_kind(self.command, self.path, body)
                    counter.count(name, kind, resp.status, time.monotonic() - began)
                    out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
                    known = any(k.lower() == "content-length" for k, _ in out)
                    data = b"" if known or self.command == "HEAD" else resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in out:
                        self.send_header(k, v)
                    if not known and self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if data:
                        self.wfile.write(data)
                    else:
                        while chunk := resp.read(1 << 20):
                            self.wfile.write(chunk)
                finally:
                    conn.close()

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        server = _QuietServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def count(self, name: str, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (name, kind, status)
            self.counts[key] = self.counts.get(key, 0) + 1
            self.log.append((name, kind, status, time.monotonic(), seconds))

    def snapshot(self) -> int:
        with self.lock:
            return len(self.log)

    def since(self, mark: int) -> list[tuple[str, str, int, float, float]]:
        with self.lock:
            return self.log[mark:]

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


def _glance_summary(log: list[tuple[str, str, int, float, float]]) -> dict[str, Any]:
    """Requests by kind (and status), per kind the most any one node made, and latency."""
    by_kind: dict[str, int] = {}
    by_status: dict[str, int] = {}
    per_node: dict[tuple[str, str], int] = {}
    times: dict[tuple[str, str], list[float]] = {}
    latency: dict[str, list[float]] = {}
    for name, kind, status, t, secs in log:
        latency.setdefault(kind, []).append(secs)
        by_kind[kind] = by_kind.get(kind, 0) + 1
        key = f"{kind} {status}"
        by_status[key] = by_status.get(key, 0) + 1
        per_node[(name, kind)] = per_node.get((name, kind), 0) + 1
        times.setdefault((name, kind), []).append(t)
    most: dict[str, int] = {}
    for (_, kind), n in per_node.items():
        most[kind] = max(most.get(kind, 0), n)
    gaps = [
        b - a
        for (_, kind), ts in times.items()
        if kind == "location renew"
        for a, b in itertools.pairwise(sorted(ts))
    ]
    return {
        "total": len(log),
        "by_kind": dict(sorted(by_kind.items())),
        "by_kind_status": dict(sorted(by_status.items())),
        "most_by_one_node": dict(sorted(most.items())),
        "min_renew_gap_s": round(min(gaps), 2) if gaps else None,
        "per_node": {
            name: {k: n for (nm, k), n in sorted(per_node.items()) if nm == name}
            for name in sorted({nm for nm, _ in per_node})
        },
        "latency_s_p50_max": {
            k: [round(statistics.median(v), 3), round(max(v), 3)]
            for k, v in sorted(latency.items())
        },
    }


# ------------------------------------------------------------------ sources, from the kernel


_SS_USER = re.compile(r"pid=(\d+)")
_SS_RECV = re.compile(r"bytes_received:(\d+)")


def _ss_received() -> dict[tuple[int, str, str], int]:
    """(pid, local addr:port, peer addr:port) -> bytes received, every established TCP socket."""
    try:
        out = subprocess.run(
            ["ss", "-tinpH", "state", "established"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[tuple[int, str, str], int] = {}
    key: tuple[int, str, str] | None = None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            cols = line.split()
            m = _SS_USER.search(line)
            key = (int(m.group(1)), cols[2], cols[3]) if m and len(cols) >= 4 else None
        elif key is not None:
            m = _SS_RECV.search(line)
            if m:
                found[key] = int(m.group(1))
            key = None
    return found


# ------------------------------------------------------------------ nodes


@dataclass
class Node:
    """One node of the herd: its directory, config, and what happened to it."""

    index: int
    base: Path
    offset: float = 0.0
    serve: ServeProcess | None = None
    glance_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float = 0.0
    returncode: int | None = None
    killed_at: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: (time, kind of the source with the most bytes received in the interval ending then)
    source_samples: list[tuple[float, str]] = field(default_factory=list)
    #: socket -> bytes received (kernel counters of the download process's sockets)
    sockets: dict[tuple[str, str], int] = field(default_factory=dict)
    #: source kind -> bytes received over the download's lifetime (kernel counters)
    socket_kinds: dict[str, int] = field(default_factory=dict)
    io_before: int = 0
    served_bytes: int = 0
    #: CPU seconds of the download process (last sample) and of its serve (at the end)
    cpu_download: float = 0.0
    cpu_serve: float = 0.0
    image_id: str = ""
    size: int = 0
    doc: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"node-{self.index:02d}"

    @property
    def dest(self) -> Path:
        return self.base / "dest.img"

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
        """Bytes on disk: the most of the fill record's pieces and the files' allocated blocks."""
        best = 0
        images = self.cache_dir / "images"
        fill = images / f"{self.image_id}.fill"
        if fill.exists():
            from locpick.cache.fill.record import FillStateError, read_fill

            with contextlib.suppress(FillStateError, OSError):
                snap = read_fill(fill)
                if snap is not None:
                    done = sum(snap.piece_done(i) for i in range(snap.pieces))
                    best = max(best, snap.written, done * snap.piece_size)
        for p in (
            self.base / ".dest.img.locpick-part",
            self.dest,
            images / f"{self.image_id}.filling",
            images / self.image_id,
        ):
            with contextlib.suppress(OSError):
                best = max(best, p.stat().st_blocks * 512)
        return min(best, self.size)


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used (/proc/PID/stat), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _wchar(pid: int) -> int:
    """Bytes the process has written, sendfile included (``wchar`` of /proc/PID/io)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fleet_key(base: Path) -> Path:
    """One fleet key for every node of a run (0600), as an operator distributes it."""
    path = base / "fleet.key"
    if not path.exists():
        path.write_text(os.urandom(32).hex() + "\n")
        path.chmod(0o600)
    return path


def _write_config(
    node: Node, mode: str, public_url: str | None, sets: list[str], lease: float | None
) -> None:
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
    sections: dict[str, list[str]] = {}
    if mode == "origin" and _has_max_sources():
        sections.setdefault("transfer", []).append("max_sources = 1")
    if mode != "origin":
        cache = [f'dir = "{node.cache_dir}"', f'public_url = "{public_url}"']
        if lease is not None:
            cache.append(f"lease = {lease:g}")
        sections.setdefault("cache", []).extend(cache)
        # the storm's peers trust each other's copies only with the fleet's word (issue 24)
        sections.setdefault("fleet", []).append(f'key_file = "{_fleet_key(node.base.parent)}"')
        for item in sets:
            key, _, value = item.partition("=")
            section, _, name = key.strip().rpartition(".")
            sections.setdefault(section, []).append(f"{name} = {value.strip()}")
    for section, body in sections.items():
        if section:
            lines.append(f"[{section}]")
        lines += body
    node.config.write_text("\n".join(lines) + "\n")


def _start_serve(node: Node, sets: list[str], lease: float | None) -> None:
    """The node's ``serve`` on a free port named in its config beforehand (public_url)."""
    for attempt in range(4):
        port = gh.find_free_port()
        url = f"http://127.0.0.1:{port}"
        _write_config(node, "storm", url, sets, lease)
        try:
            node.serve = ServeProcess(
                node.cache_dir,
                bind=f"127.0.0.1:{port}",
                config=node.config,
                extra=["--glance-url", node.glance_url],
            )
            return
        except RuntimeError:
            if attempt == 3:
                raise


class Glance:
    """The harness Glance (location quota raised), its access log, and image seeding."""

    def __init__(self, work: Path, quota: int) -> None:
        self.handle = gh.start_glance(work / "glance", location_quota=quota)
        self.endpoint = self.handle.endpoint
        self.access_log = self.handle.log_dir / "access.log"
        self.counter = GlanceCounter(self.endpoint)

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

    def cache_locations(self, image_id: str) -> list[dict[str, Any]]:
        rec = gh.get_image(self.endpoint, image_id)
        return [
            loc
            for loc in rec.get("locations", [])
            if (loc.get("metadata") or {}).get(MARKER) == "true"
        ]

    def stop(self) -> None:
        self.counter.stop()
        self.handle.stop()


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


def _source_kind(peer: str, origin: Origin, serve_ports: dict[str, str], glance: set[str]) -> str:
    port = peer.rsplit(":", 1)[-1]
    if port == str(origin.port):
        return "origin"
    if port in serve_ports:
        return "peer"
    if port in glance:
        return "glance"
    return "other"


def _run_nodes(
    nodes: list[Node],
    mode: str,
    sample: float,
    origin: Origin,
    glance: Glance,
    kill: Collection[int] = (),
    verbose: bool = False,
) -> float:
    """Start every node at its offset, sample progress until all exit; returns t0.

    Nodes whose index is in ``kill`` are SIGKILLed (download and serve) once they hold half
    the image (or when they finish, if that comes first)."""
    env = cli_env()
    env.pop("LOCPICK_CONFIG", None)
    t0 = time.monotonic()
    done = threading.Event()
    serve_ports = {str(n.serve.port): n.name for n in nodes if n.serve is not None and n.serve.url}
    glance_ports = {u.rsplit(":", 1)[-1] for u in (n.glance_url for n in nodes)}
    glance_ports.add(str(urllib.parse.urlsplit(glance.endpoint).port))

    def launch(node: Node) -> None:
        delay = t0 + node.offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cmd = [
            sys.executable,
            "-m",
            "locpick",
            "download",
            node.image_id,
            str(node.dest),
            "--glance-url",
            node.glance_url,
            "--config",
            str(node.config),
            "--json",
            "--no-progress",
        ]
        if mode != "origin":
            cmd += ["--cache-dir", str(node.cache_dir), "--register"]
        if verbose:
            cmd += ["--verbose", "--log-format", "json"]
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
            live = {n.proc.pid: n for n in nodes if n.proc is not None and not n.ended}
            received = _ss_received() if live else {}
            for n in nodes:
                if not n.started or n.ended or n.proc is None:
                    continue
                got = n.progress()
                n.samples.append((now, got))
                n.cpu_download = _cpu_seconds(n.proc.pid) or n.cpu_download
                delta: dict[str, int] = {}
                for (pid, local, peer), b in received.items():
                    if pid != n.proc.pid:
                        continue
                    before = n.sockets.get((local, peer), 0)
                    n.sockets[(local, peer)] = b
                    kind = _source_kind(peer, origin, serve_ports, glance_ports)
                    delta[kind] = delta.get(kind, 0) + max(0, b - before)
                big = max(delta.items(), key=lambda kv: kv[1], default=("", 0))
                n.source_samples.append((now, big[0] if big[1] > 64 * 1024 else "unattributed"))
                if n.index in kill and n.killed_at is None and got >= n.size // 2:
                    n.killed_at = now
                    with contextlib.suppress(ProcessLookupError):
                        n.proc.send_signal(signal.SIGKILL)
                    if n.serve is not None:
                        with contextlib.suppress(ProcessLookupError):
                            n.serve.proc.send_signal(signal.SIGKILL)
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
        for (_, peer), b in n.sockets.items():
            kind = _source_kind(peer, origin, serve_ports, glance_ports)
            n.socket_kinds[kind] = n.socket_kinds.get(kind, 0) + b
    return t0


def _thin(samples: list[Any], most: int) -> list[Any]:
    """At most about ``most`` samples, evenly spaced, always keeping the first and last."""
    if not samples:
        return samples
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


def _usable_copies(node: Node, image_id: str) -> int | None:
    """Locpick cache copies a fresh node's ``rank --json`` finds usable (None: rank failed)."""
    env = cli_env()
    env.pop("LOCPICK_CONFIG", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "locpick",
            "rank",
            image_id,
            "--glance-url",
            node.glance_url,
            "--config",
            str(node.config),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return None
    rows = doc.get("locations", doc) if isinstance(doc, dict) else doc
    return sum(
        1
        for row in rows
        if isinstance(row, dict)
        and row.get("usable")
        and "/images/" + image_id + "/" in str(row.get("url", ""))
    )


def _reap(node: Node, image_id: str) -> str:
    env = cli_env()
    env.pop("LOCPICK_CONFIG", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "locpick",
            "cache",
            "reap",
            image_id,
            "--glance-url",
            node.glance_url,
            "--config",
            str(node.config),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    return f"exit {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"


def run_phase(
    mode: str,
    phase: str,
    count: int,
    args: argparse.Namespace,
    work: Path,
    glance: Glance,
    origin: Origin,
    image_file: Path,
    digest: str,
    rng: random.Random,
) -> dict[str, Any]:
    """One phase: ``count`` nodes on a freshly seeded image; what they did and what is left."""
    size = image_file.stat().st_size
    origin.faults.uplink = None
    image_id = glance.seed(image_file, origin, f"herd-{mode}-{phase}")
    base = work / mode / phase
    nodes = [Node(i, base / f"node-{i:02d}") for i in range(count)]
    offsets = sorted(rng.uniform(0, args.window) for _ in nodes) if count > 1 else [0.0]
    lease = args.kill_lease if phase == "sigkill" else None
    kill = set(range(0, count, 3)) if phase == "sigkill" else set()
    peers: dict[str, str] = {}
    for node, off in zip(nodes, offsets, strict=True):
        node.base.mkdir(parents=True)
        node.offset, node.image_id, node.size = off, image_id, size
        node.glance_url = glance.counter.proxy(f"{mode}/{phase}/{node.name}")
        if mode == "storm":
            node.cache_dir.mkdir()
            _start_serve(node, args.set, lease)
            assert node.serve is not None
            node.io_before = _wchar(node.serve.proc.pid)
            node.cpu_serve = _cpu_seconds(node.serve.proc.pid) or 0.0
            peers[node.serve.url + "/"] = node.name
        else:
            _write_config(node, mode, None, [], None)
    origin.faults.uplink = args.origin_mibps * MiB
    origin.reset_counters()
    access_before = len(glance.requests())
    mark = glance.counter.snapshot()
    print(f"[{mode}/{phase}] {count} node(s) on image {image_id}", flush=True)
    t0 = _run_nodes(nodes, mode, args.sample, origin, glance, kill, args.verbose_nodes)
    origin_bytes = origin.bytes_sent
    origin_requests = len(origin.requests)
    for node in nodes:
        if node.serve is not None and node.serve.proc.poll() is None:
            node.served_bytes = _wchar(node.serve.proc.pid) - node.io_before
            node.cpu_serve = (_cpu_seconds(node.serve.proc.pid) or 0.0) - node.cpu_serve
    registered = glance.cache_locations(image_id)
    out: dict[str, Any] = {"image_id": image_id}
    if phase == "sigkill":
        for node in nodes:
            if node.serve is not None and node.serve.proc.poll() is None:
                node.serve.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        for node in nodes:
            if node.serve is not None:
                node.serve.stop()
        out["cache_locations_right_after_sigkill"] = len(glance.cache_locations(image_id))
        time.sleep(max(0.0, killed_at + args.kill_lease + 2 - time.monotonic()))
        probe_node = Node(99, base / "fresh")
        probe_node.base.mkdir()
        probe_node.glance_url = glance.counter.proxy(f"{mode}/{phase}/fresh")
        _write_config(probe_node, "origin", None, [], None)
        listed = glance.cache_locations(image_id)
        out["cache_locations_listed_after_lease"] = len(listed)
        out["cache_locations_lease_expired"] = sum(
            1 for loc in listed if lease_state(loc.get("metadata") or {}, time.time()).expired
        )
        out["cache_copies_usable_after_lease"] = _usable_copies(probe_node, image_id)
        out["reap"] = _reap(probe_node, image_id)
        out["cache_locations_left_after_reap"] = len(glance.cache_locations(image_id))
    else:
        for node in nodes:
            if node.serve is not None:
                node.serve.stop()
        out["cache_locations_left_after_serve_stop"] = len(glance.cache_locations(image_id))
    glance_log = [r for r in glance.counter.since(mark) if r[0] != f"{mode}/{phase}/fresh"]
    access = glance.requests()[access_before:]
    refused = [
        n.name
        for n in nodes
        if "not registered" in (n.base / "stderr.txt").read_text(errors="replace")
    ]
    first_byte = min((t for n in nodes for t, b in n.samples if b > 0), default=0.0)
    last_byte = max(next((t for t, b in n.samples if b >= size), n.ended - t0) for n in nodes)
    span = last_byte - first_byte
    rows: list[dict[str, Any]] = []
    for node in nodes:
        got: dict[str, int] = {}
        for src in node.doc.get("sources", []):
            kind = _classify(src.get("url", ""), origin, peers)
            kind = "peer" if kind.startswith("peer:") else kind
            got[kind] = got.get(kind, 0) + int(src.get("bytes") or 0)
        ok = _sha512(node.dest) == digest
        rows.append(
            {
                "node": node.name,
                "offset_s": round(node.offset, 3),
                "seconds": round(node.seconds, 3),
                "inproc_seconds": node.doc.get("seconds"),
                "exit": node.returncode,
                "killed_at_s": None if node.killed_at is None else round(node.killed_at, 2),
                "verified_hash": ok,
                "json_verified": node.doc.get("verified"),
                "source_url": node.doc.get("source_url"),
                "bytes_from": got,
                "kernel_bytes_from": node.socket_kinds,
                "served_bytes": node.served_bytes,
                "cpu_download_s": round(node.cpu_download, 2),
                "cpu_serve_s": round(node.cpu_serve, 2),
                "samples": _thin([(round(t, 2), b) for t, b in node.samples], 400),
                "source_samples": _thin([(round(t, 2), k) for t, k in node.source_samples], 400),
                "stderr_tail": (node.base / "stderr.txt").read_text(errors="replace")[-400:],
            }
        )
    survivors = [r for r in rows if r["killed_at_s"] is None]
    times = [r["seconds"] for r in survivors]
    inner = [float(n.doc.get("seconds") or 0) for n in nodes if n.killed_at is None]
    out.update(
        {
            "nodes": rows,
            "killed": len(rows) - len(survivors),
            "origin_bytes": origin_bytes,
            "origin_copies": origin_bytes / size,
            "origin_share": origin_bytes / (count * size),
            "origin_requests": origin_requests,
            "glance": _glance_summary(glance_log),
            "glance_access_log_lines": len(access),
            "glance_file_bytes": _file_bytes(access),
            "p50_s": _pct(times, 50),
            "p95_s": _pct(times, 95),
            "max_s": max(times),
            "inproc_p50_s": _pct(inner, 50),
            "inproc_p95_s": _pct(inner, 95),
            "load_after": os.getloadavg()[0],
            "cpu_s": round(sum(r["cpu_download_s"] + r["cpu_serve_s"] for r in rows), 1),
            "wall_s": round(max(n.ended for n in nodes) - t0, 1),
            "all_verified": all(r["verified_hash"] for r in survivors),
            "origin_mibps_achieved": origin_bytes / span / MiB if span > 0 else 0.0,
            "registrations_refused": refused,
            "cache_locations_when_all_done": len(registered),
            "filling_when_all_done": sum(
                1 for loc in registered if (loc.get("metadata") or {}).get("locpick_fill")
            ),
            "t0": t0,
        }
    )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return out


def run_mode(
    mode: str,
    args: argparse.Namespace,
    work: Path,
    glance: Glance,
    origin: Origin,
    image_file: Path,
    digest: str,
) -> dict[str, Any]:
    """One mode: a node alone on its own image, the herd on a fresh image, and (storm) the
    SIGKILL phase."""
    rng = random.Random(f"{args.seed}-{mode}")
    out: dict[str, Any] = {"mode": mode}
    phases = [("alone", 1), ("herd", args.nodes)]
    if mode == "storm" and args.kill_nodes > 0:
        phases.append(("sigkill", args.kill_nodes))
    for phase, count in phases:
        out[phase] = run_phase(
            mode, phase, count, args, work, glance, origin, image_file, digest, rng
        )
    alone = out["alone"]["max_s"]
    herd = out["herd"]
    herd["alone_s"] = alone
    for key in ("p50", "p95", "max"):
        herd[f"{key}_vs_alone"] = herd[f"{key}_s"] / alone
    herd["inproc_alone_s"] = out["alone"]["inproc_p50_s"]
    herd["inproc_p95_vs_alone"] = herd["inproc_p95_s"] / max(herd["inproc_alone_s"], 1e-9)
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


def _glance_cell(h: dict[str, Any], nodes: int) -> str:
    g = h.get("glance")
    if not g:
        return f"{h.get('glance_requests', '?')}"
    k, most = g["by_kind"], g["most_by_one_node"]
    parts = [f"{g['total']}"]
    for kind, short in (
        ("image GET", "rec"),
        ("location add", "add"),
        ("location remove", "rm"),
        ("location renew", "renew"),
        ("/file GET", "file"),
    ):
        if k.get(kind):
            parts.append(f"{short} {k[kind]} (≤{most[kind]}/node)")
    return "; ".join(parts)


def table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"N = {cfg['nodes']}, {cfg['size_mib']} MiB, origin uplink {cfg['origin_mibps']} MiB/s "
        f"shared, start window {cfg['window']} s (seed {cfg['seed']}); times in s; storm "
        f"config: {', '.join(cfg.get('set') or []) or 'defaults'}",
        "",
        "| mode | origin bytes / (N x size) | alone | p50 | p95 | max | p95 / alone "
        "| max / alone | in-process p95 / alone (--json seconds) "
        "| all verified | Glance requests: total; by kind (most by one node) "
        "| bytes sent by the nodes' serve | node bytes from origin / peers (--json) "
        "| cache locations: in Glance when done (filling) / left after serve stop "
        "| origin MiB/s achieved |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in results["modes"]:
        h = mode["herd"]
        served = sum(r["served_bytes"] for r in h["nodes"])
        frm_o = sum(r["bytes_from"].get("origin", 0) for r in h["nodes"])
        frm_p = sum(r["bytes_from"].get("peer", 0) for r in h["nodes"])
        regs = "-"
        if mode["mode"] != "origin":
            regs = (
                f"{h['cache_locations_when_all_done']} ({h.get('filling_when_all_done', 0)}) "
                f"/ {h['cache_locations_left_after_serve_stop']}"
            )
        lines.append(
            f"| {mode['mode']} | {h['origin_share'] * 100:.0f} % ({h['origin_copies']:.2f} "
            f"copies) | {h['alone_s']:.1f} | {h['p50_s']:.1f} | {h['p95_s']:.1f} "
            f"| {h['max_s']:.1f} | {h['p95_vs_alone']:.2f}x | {h['max_vs_alone']:.2f}x "
            f"| {h.get('inproc_p95_s', 0):.1f} / {h.get('inproc_alone_s', 0):.1f} = "
            f"{h.get('inproc_p95_vs_alone', 0):.2f}x "
            f"| {'yes' if h['all_verified'] else 'NO'} "
            f"| {_glance_cell(h, cfg['nodes'])} | {served / MiB:.0f} MiB "
            f"| {frm_o / MiB:.0f} / {frm_p / MiB:.0f} MiB "
            f"| {regs} | {h['origin_mibps_achieved']:.1f} |"
        )
    loads = [
        f"{m['mode']} {m['herd']['load_after']:.1f}"
        for m in results["modes"]
        if "load_after" in m["herd"]
    ]
    cpu = [
        f"{m['mode']} {m['herd']['cpu_s']:.0f} CPU s in {m['herd']['wall_s']:.0f} s"
        for m in results["modes"]
        if "cpu_s" in m["herd"]
    ]
    lines += [
        "",
        "CPU used by the herd's processes (download + serve): " + ", ".join(cpu) + ".",
        "",
        f"Load average (1 min) before the run {cfg.get('load_before', 0):.1f}; after each herd: "
        + ", ".join(loads)
        + f"; {cfg.get('cpus')} CPUs shared with other work.",
    ]
    lines += _phases(results)
    for mode in results["modes"]:
        k = mode.get("sigkill")
        if not k:
            continue
        n = len(k["nodes"])
        lines += [
            "",
            f"SIGKILL phase ({mode['mode']}, {n} nodes, lease {cfg['kill_lease']:g} s): "
            f"{k['killed']} node(s) SIGKILLed (download + serve) at half the image, the other "
            f"{n - k['killed']} {'all verified' if k['all_verified'] else 'NOT all verified'} "
            f"(max {k['max_s']:.1f} s, origin {k['origin_copies']:.2f} copies); then every "
            "serve SIGKILLed. Cache locations in Glance: "
            f"{k['cache_locations_right_after_sigkill']} right after, "
            f"{k['cache_locations_listed_after_lease']} listed after the lease "
            f"({k['cache_locations_lease_expired']} of them expired by their lease metadata, "
            f"{k['cache_copies_usable_after_lease']} usable in a fresh node's rank), "
            f"{k['cache_locations_left_after_reap']} after `locpick cache reap` "
            f"({k['reap']}).",
        ]
    return "\n".join(lines) + "\n"


_COLOURS = {
    "origin": "tab:red",
    "peer": "tab:blue",
    "glance": "tab:purple",
    "unattributed": "tab:gray",
    "other": "tab:olive",
}


def _kind_at(kinds: list[Any], t: float, window: float = 1.0) -> str:
    """The source a node received from last within ``window`` s before ``t``: bytes reach the
    disk a buffer after they arrive, so the interval itself may show none. "unattributed": no
    open socket of the node was seen receiving (idle, or connections shorter than a sample)."""
    idle = ("waiting", "unattributed")
    recent = [k for tk, k in kinds if t - window <= tk <= t + 1e-6 and k not in idle]
    return str(recent[-1]) if recent else "unattributed"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    panels = [(m["mode"], m["herd"]) for m in results["modes"]]
    panels += [(f"{m['mode']} sigkill", m["sigkill"]) for m in results["modes"] if "sigkill" in m]
    size = results["config"]["size_mib"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    seen: set[str] = set()
    for ax, (title, h) in zip(axes[0], panels, strict=True):
        lines, line_colours = [], []
        for row in h["nodes"]:
            kinds = row.get("source_samples") or []
            for (t1, b1), (t2, b2) in itertools.pairwise(row["samples"]):
                kind = _kind_at(kinds, t2)
                seen.add(kind)
                lines.append([(t1, b1 / MiB), (t2, b2 / MiB)])
                line_colours.append(_COLOURS.get(kind, "tab:olive"))
            if row.get("killed_at_s") is not None and row["samples"]:
                t, b = row["samples"][-1]
                ax.plot([t], [b / MiB], "kx")
        ax.add_collection(LineCollection(lines, colors=line_colours, linewidths=1.2))
        ax.autoscale_view()
        vs = f", max {h['max_vs_alone']:.1f}x alone" if "max_vs_alone" in h else ""
        ax.set_title(f"{title}: origin {h['origin_copies']:.2f} copies{vs}")
        ax.set_xlabel("seconds since the first node started")
        ax.set_ylabel("MiB on disk")
        ax.set_ylim(0, size * 1.05)
        if "alone_s" in h:
            ax.axvline(h["alone_s"], color="k", ls=":", lw=1)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=_COLOURS.get(k, "tab:olive")) for k in sorted(seen)]
    axes[0][0].legend(handles, sorted(seen), loc="upper left", title="receiving from")
    cfg = results["config"]
    fig.suptitle(
        f"boot storm: {cfg['nodes']} nodes, {size} MiB, origin {cfg['origin_mibps']} MiB/s "
        "shared (dotted: one node alone; x: SIGKILLed)"
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
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a TOML setting for every storm node (repeatable), e.g. herd.origin_share=0",
    )
    ap.add_argument(
        "--kill-nodes", type=int, default=6, help="nodes of the SIGKILL phase (0: skip it)"
    )
    ap.add_argument("--kill-lease", type=float, default=20.0, help="[cache] lease there (s)")
    ap.add_argument("--sample", type=float, default=0.2, help="progress sampling period (s)")
    ap.add_argument("--name", default="herd", help="results file stem in benchmarks/results")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--verbose-nodes", action="store_true", help="nodes log (JSON lines) to their stderr.txt"
    )
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
    glance = Glance(work, quota=max(args.nodes, args.kill_nodes) * 2 + 10)
    origin = Origin.from_file(image_file).start()
    results: dict[str, Any] = {
        "config": {
            "nodes": args.nodes,
            "size_mib": args.size_mib,
            "origin_mibps": args.origin_mibps,
            "window": args.window,
            "seed": args.seed,
            "set": args.set,
            "kill_nodes": args.kill_nodes,
            "kill_lease": args.kill_lease,
            "max_sources_key": _has_max_sources(),
            "cpus": os.cpu_count(),
            "load_before": os.getloadavg()[0],
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv[1:]),
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
        for phase in ("herd", "sigkill"):
            h = mode.get(phase)
            if not h:
                continue
            print(f"{mode['mode']}/{phase}: Glance {h['glance']}")
            for r in h["nodes"]:
                mib = {k: v // MiB for k, v in r["bytes_from"].items()}
                kern = {k: v // MiB for k, v in r["kernel_bytes_from"].items()}
                print(
                    f"  {r['node']} +{r['offset_s']:.2f}s {r['seconds']:.1f}s exit {r['exit']} "
                    f"ok={r['verified_hash']} MiB from={mib} kernel={kern} "
                    f"served={r['served_bytes'] // MiB} MiB"
                    + (" KILLED" if r["killed_at_s"] is not None else "")
                )
    print(f"wrote {RESULTS / args.name}.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
