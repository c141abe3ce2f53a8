"""Choosing right when the location list is long or lies (issue 26), against real loopback
servers on distinct 127.0.0.x addresses: silent decoys listed before the honest copy, fifty
hosts with black holes among them, and OpenStack's ``nova`` zone in two regions.

No wall-clock limits: each download behind decoys is compared with the same download from the
honest copy alone, measured in the same test, plus the probe deadline (a config value)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from helpers import image_record, run_cli, write_record

import locpick
from locpick._demo.blackhole import BlackHole, BlackHoles
from locpick._demo.origin import Origin
from locpick.config.model import Config, ProbeConfig, ScoringConfig, Topology
from locpick.models import Result

#: A swarm-sized image: on main a swarm download skipped probing and waited out a header
#: deadline (15 s) per decoy it drew on.
DATA = os.urandom(16 << 20)
#: The probe deadline of these tests (the default).
DEADLINE = ProbeConfig().deadline


def _hosts(n: int, first: int = 10) -> list[str]:
    """n distinct loopback addresses 127.0.x.y, none of them 127.0.0.1."""
    return [f"127.0.{(first + i) // 250}.{(first + i) % 250 + 2}" for i in range(n)]


@contextlib.contextmanager
def _nofile(n: int) -> Iterator[None]:
    """Raise the soft open-file limit to ``n`` (within the hard limit) for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: This node's zone: every decoy claims it (any project member can add a location with any
#: metadata), so each ranks before the honest copy by what is known before a probe.
HERE = Config(topology=Topology(zone="az1"), history_file="")
NEAR = {"zone": "az1"}


def _download(tmp: Path, name: str, urls: list[str], decoys: int = 0) -> tuple[Result, float]:
    """Download from ``urls`` (the first ``decoys`` of them claiming this node's zone)."""
    locs = [(u, NEAR) if i < decoys else u for i, u in enumerate(urls)]
    t0 = time.monotonic()
    result = locpick.download(
        "img", tmp / name, metadata=image_record("img", DATA, locs), config=HERE
    )
    return result, time.monotonic() - t0


def _no_header_wait_on(result: Result, decoys: set[str]) -> None:
    """The transfer never asked a decoy (no attempt on one: no header deadline waited out)."""
    asked = [a for a in result.attempts if a.url in decoys and a.outcome != "skipped"]
    assert not asked, asked


def test_forty_decoys_on_forty_hosts_cost_no_header_wait(tmp_path: Path) -> None:
    """40 black holes on 40 addresses, listed first and claiming this node's zone, then the
    honest copy (on its own address): the download asks no decoy and costs at most one probe
    deadline more than from the honest copy alone."""
    with Origin(DATA, host="127.0.0.2") as honest, BlackHoles(_hosts(40)) as holes:
        url, decoys = honest.url, holes.urls
        _r, alone = _download(tmp_path, "alone", [url])
        result, behind = _download(tmp_path, "dest", [*decoys, url], len(decoys))
    assert result.source_url == url
    _no_header_wait_on(result, set(decoys))
    assert behind < alone + DEADLINE, (behind, alone)


def test_forty_decoys_on_the_honest_copys_host(tmp_path: Path) -> None:
    """40 black holes on the honest copy's own address (other ports, as behind a firewall
    that drops them): no header wait, no cap shared with them."""
    with ExitStack() as stack:
        honest = stack.enter_context(Origin(DATA))
        holes = [stack.enter_context(BlackHole()) for _ in range(40)]
        url, decoys = honest.url, [h.url for h in holes]
        _r, alone = _download(tmp_path, "alone", [url])
        result, behind = _download(tmp_path, "dest", [*decoys, url], len(decoys))
    assert result.source_url == url
    _no_header_wait_on(result, set(decoys))
    assert behind < alone + DEADLINE, (behind, alone)


@contextlib.contextmanager
def _holes_elsewhere(hosts: list[str]) -> Iterator[list[str]]:
    """Black holes on ``hosts`` served by a child process (as other machines would be: a
    thousand listening and held sockets do not share this process's descriptors or GIL)."""
    code = (
        "import json, resource, sys\n"
        "from locpick._demo.blackhole import BlackHoles\n"
        "_s, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))\n"
        "holes = BlackHoles(json.loads(sys.argv[1])).start()\n"
        "print(json.dumps(holes.urls), flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(hosts)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_thousand_decoys_on_a_thousand_hosts(tmp_path: Path) -> None:
    """1,000 black holes on 1,000 addresses, then the honest copy: delivered from it, the
    transfer asked no decoy, within a few probe rounds of the honest copy alone."""
    with _nofile(8192), Origin(DATA, host="127.0.0.2") as honest:
        url = honest.url
        with _holes_elsewhere(_hosts(1000)) as holes:
            decoys = set(holes)
            _r, alone = _download(tmp_path, "alone", [url])
            result, behind = _download(tmp_path, "dest", [*holes, url], len(decoys))
    assert result.source_url == url
    _no_header_wait_on(result, decoys)
    # Probing a thousand silent copies in waves: a few probe deadlines, not one header
    # deadline (15 s) per decoy drawn on.
    assert behind < alone + 4 * DEADLINE, (behind, alone)


def test_fifty_hosts_ten_black_holes_every_live_copy_above_every_silent(tmp_path: Path) -> None:
    """50 locations on 50 addresses (the default max_candidates, 32, is below 50), 10 of them
    black holes: ``rank --json`` probes enough that every live copy ranks above every black
    hole, and flags the holes ``silent``."""
    data = DATA[: 1 << 20]
    with ExitStack() as stack:
        hosts = _hosts(50)
        good = [stack.enter_context(Origin(data, host=h)) for h in hosts[:40]]
        holes = stack.enter_context(BlackHoles(hosts[40:]))
        urls = [o.url for o in good] + holes.urls
        urls = urls[::2] + urls[1::2]
        good_urls, hole_urls = [o.url for o in good], holes.urls
        meta = write_record(tmp_path / "m.json", image_record("img", data, urls))
        proc = run_cli("rank", "img", "--metadata", str(meta), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["url"]: r for r in json.loads(proc.stdout)}
    live = [rows[u] for u in good_urls]
    silent = [rows[u] for u in hole_urls]
    assert max(r["rank"] for r in live) < min(r["rank"] for r in silent)
    assert all(r["reasons"]["probe"] == "live" for r in live), [r["reasons"] for r in live]
    assert all(r["reasons"]["probe"] == "silent" for r in silent)
    assert all("silent" in " ".join(r["reasons"]["notes"]) for r in silent)


def test_nova_zone_in_two_regions_is_not_same_zone() -> None:
    """OpenStack's default zone ``nova`` exists in every region: a copy in ``nova`` of another
    region is not same-zone (a same-region copy in another zone beats it), and rank says
    which levels matched."""
    # A low throughput prior keeps loopback TTFB jitter (ms) far below the 20 % tolerance.
    cfg = Config(
        topology=Topology(region="r1", zone="nova"),
        history_file="",
        scoring=ScoringConfig(prior_throughput_bps=5e6),
    )
    data = DATA[: 1 << 20]
    with Origin(data) as other_region, Origin(data) as same_region, Origin(data) as here:
        here_url, same_url, other_url = here.url, same_region.url, other_region.url
        rec = image_record(
            "img",
            data,
            [
                (other_region.url, {"region": "r2", "zone": "nova"}),
                (same_region.url, {"region": "r1", "zone": "az2"}),
                (here.url, {"region": "r1", "zone": "nova"}),
            ],
        )
        ranking = locpick.rank("img", metadata=rec, config=cfg)
    by_url = {s.url: s.reasons for s in ranking}
    assert (by_url[other_url].topology or "").startswith("unknown")
    assert (by_url[here_url].topology or "").startswith("same-zone")
    assert (by_url[same_url].topology or "").startswith("same-region")
    assert ranking.scores[0].url == here_url
    assert by_url[here_url].topology_match == "region=r1 zone=nova"
    assert by_url[same_url].topology_match == "region=r1"
    assert by_url[other_url].topology_match is None


@pytest.mark.parametrize(
    ("node", "copy", "expected"),
    [
        ({"region": "r1", "zone": "az1", "rack": "k1"}, {"region": "r2", "zone": "az1"}, 4),
        ({"region": "r1", "zone": "az1", "rack": "k1"}, {"zone": "az2", "rack": "k1"}, 4),
        ({"region": "r1", "zone": "az1", "rack": "k1"}, {"region": "r1", "rack": "k1"}, 1),
        (
            {"region": "r1", "zone": "az1", "host": "n7"},
            {"region": "r1", "zone": "az2", "host": "n7"},
            3,
        ),
        ({"zone": "az1"}, {"region": "r9", "zone": "az1"}, 2),
        ({}, {"zone": "az1"}, 4),
    ],
)
def test_topology_levels_nest(node: dict[str, str], copy: dict[str, str], expected: int) -> None:
    """A level counts only when no level outside it differs (one side silent: no contradiction)."""
    from locpick.choose.score import topology_class

    assert topology_class(Topology(**node), Topology(**copy)) == expected
