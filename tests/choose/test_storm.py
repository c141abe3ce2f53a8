"""Boot-storm choice (issue 19): the fleet's tree, origin protection, and how filling peers
are probed, scored and explained. Pure units, then a real HTTP server and the real CLI."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.choose.peer import judge
from locpick.choose.score import Candidate, rank
from locpick.choose.storm import (
    arrange,
    parents,
    plan,
    prepare,
    settle_delay,
    start_delay,
    takes_origin,
    transfer_for,
    wait_start,
)
from locpick.config.model import Config, HerdConfig, Topology, TransferConfig
from locpick.glance.lease import FILL, FILL_STARTED, MARKER
from locpick.glance.vouch import FleetTrust
from locpick.models import FillHeader, Image, Location, Probe, parse_fill_header
from tests.helpers import image_record, run_cli, write_record

MiB = 1 << 20
#: The fleet vouches for every loopback node (these peers are unsigned demo servers).
FLEET_LOOPBACK = '[fleet]\npeers = ["127.0.0.0/8"]\n'
ORIGIN = "http://origin.example/img"


def _fill_meta(started: float, **place: str) -> dict[str, str]:
    return {MARKER: "true", FILL: "filling", FILL_STARTED: f"{started}", **place}


def _image(n: int, *, racks: list[str] | None = None, size: int = 128 * MiB) -> Image:
    peers = tuple(
        Location(
            f"http://node{i}.example/images/img/tok",
            _fill_meta(1000.0 + i, **({"rack": racks[i]} if racks else {})),
        )
        for i in range(n)
    )
    return Image(id="img", size=size, locations=(Location(ORIGIN), *peers))


def _peer(i: int) -> str:
    return f"http://node{i}.example/images/img/tok"


# -- the X-Locpick-Fill header ------------------------------------------------------------------
def test_fill_header_parsed() -> None:
    assert parse_fill_header("state=filling; held=1048576; size=4194304; rate=33554432") == (
        FillHeader("filling", 1 << 20, 4 << 20, float(32 * MiB))
    )
    assert parse_fill_header("state=complete; held=10; size=10") == FillHeader("complete", 10, 10)
    assert parse_fill_header("STATE=filling;held=5;future=x") == FillHeader("filling", 5)


@pytest.mark.parametrize(
    "value",
    [None, "", "state=filling", "state=odd; held=1", "state=filling; held=-1",
     "state=filling; held=9; size=8", "state=filling; held=1e9", "x" * 600],
)  # fmt: skip
def test_fill_header_malformed_is_ignored(value: str | None) -> None:
    assert parse_fill_header(value) is None


@given(st.text(max_size=200))
def test_fill_header_never_raises(value: str) -> None:
    got = parse_fill_header(value)
    assert got is None or (got.held >= 0 and (got.size is None or got.held <= got.size))


# -- the tree -----------------------------------------------------------------------------------
_places = st.lists(
    st.builds(Topology, rack=st.sampled_from(["", "r1", "r2", "r3"])), min_size=1, max_size=60
)


@given(_places, st.integers(min_value=1, max_value=6))
def test_tree_properties(places: list[Topology], fanout: int) -> None:
    """Only the first registrant takes the origin; everyone else reads an EARLIER one (no
    cycles, so no two nodes wait on each other); nobody gets more than ``fanout`` readers;
    every node computes the same parents for the prefix it sees; and a parent is never
    farther than an earlier copy that still had room."""
    tree = parents(places, fanout)
    assert tree[0] is None and all(p is not None and p < i for i, p in enumerate(tree) if i)
    assert max(tree.count(j) for j in range(len(places))) <= fanout
    for k in range(1, len(places)):
        assert parents(places[:k], fanout) == tree[:k]
    for i in range(1, len(places)):
        p = tree[i]
        assert p is not None
        kids = [tree[:i].count(j) for j in range(i)]
        near = [j for j in range(i) if kids[j] < fanout and places[j].rack == places[i].rack]
        if places[i].rack and near:
            assert places[p].rack == places[i].rack


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=2, max_value=8))
def test_tree_is_shallow(n: int, fanout: int) -> None:
    """Same place for all: a breadth-first tree, depth ceil(log_fanout) — each level adds one
    piece of lag, never a copy from the origin."""
    tree = parents([Topology()] * n, fanout)
    depth = [0] * n
    for i in range(1, n):
        parent = tree[i]
        assert parent is not None
        depth[i] = depth[parent] + 1
    assert max(depth) <= math.ceil(math.log(n * (fanout - 1) + 1, fanout))


@given(st.integers(min_value=1, max_value=500), st.floats(min_value=0, max_value=1))
def test_origin_share_is_exact_and_spread(n: int, share: float) -> None:
    takers = [k for k in range(1, n + 1) if takes_origin(k, share)]
    assert len(takers) == math.floor(n * share)
    assert takes_origin(0, 0.0)


def test_start_jitter_bounded_and_spread() -> None:
    rng = random.Random(7)
    delays = [start_delay(HerdConfig(start_jitter=0.5), rng) for _ in range(200)]
    assert all(0 <= d < 0.5 for d in delays) and max(delays) - min(delays) > 0.3
    assert start_delay(HerdConfig(), rng) == 0.0
    slept: list[float] = []
    assert wait_start(HerdConfig(start_jitter=2.0), rng=rng, sleep=slept.append) == slept[0] > 0
    assert wait_start(HerdConfig(), sleep=slept.append) == 0.0 and len(slept) == 1


# -- one node's plan ----------------------------------------------------------------------------
def test_first_registrant_takes_the_origin() -> None:
    image = _image(5)
    p = plan(image, HerdConfig(), Topology(), mine=_peer(0))
    assert p.active and p.position == 0 and p.parent is None and p.origin
    assert set(p.excluded) == {_peer(i) for i in range(5)}


def _listing(*nodes: int) -> Image:
    """The record with the filling copies of ``nodes``, in that order."""
    peers = tuple(Location(_peer(i), _fill_meta(1000.0 + i)) for i in nodes)
    return Image(id="img", size=128 * MiB, locations=(Location(ORIGIN), *peers))


def test_two_nodes_whose_adds_each_answered_first_end_with_one_origin_reader() -> None:
    """Two concurrent adds, Glance's lost update: each PATCH answer shows its own copy first,
    and Glance kept node 1's. Each node that finds itself first looks again (a GET after the
    adds settled): node 0 is not listed any more and reads node 1; node 1 stays the root.
    Without the second look both read the origin (red when ``recheck`` is ignored)."""
    fleet = FleetTrust(peers=("http://node0.example", "http://node1.example"))
    config = Config()
    looks: list[int] = []

    def look(node: int) -> Image:
        looks.append(node)
        return _listing(1)  # what Glance kept

    plans = {}
    for node in (0, 1):
        answered = _listing(node)  # the add's answer: this node's copy the only one
        recheck = functools.partial(look, node)
        _, plans[node] = prepare(answered, config, mine=_peer(node), fleet=fleet, recheck=recheck)
    assert sorted(looks) == [0, 1]
    assert plans[1].position == 0 and plans[1].origin and plans[1].parent is None
    assert plans[0].position is None and plans[0].parent == _peer(1)
    assert sum(p.parent is None for p in plans.values()) == 1


def test_only_a_node_that_finds_itself_first_looks_again() -> None:
    fleet = FleetTrust(peers=("http://node0.example", "http://node1.example"))
    looked: list[bool] = []

    def look() -> Image:
        looked.append(True)
        return _listing(0, 1)

    _, p = prepare(_listing(0, 1), Config(), mine=_peer(1), fleet=fleet, recheck=look)
    assert p.parent == _peer(0) and looked == []
    _, p = prepare(_listing(0, 1), Config(), mine=_peer(0), fleet=fleet, recheck=look)
    assert p.position == 0 and looked == [True]


@pytest.mark.parametrize(("add", "wait"), [(0.0, 0.1), (0.02, 0.1), (0.3, 0.6), (5.0, 2.0)])
def test_settle_delay_is_twice_the_add_bounded(add: float, wait: float) -> None:
    assert settle_delay(add) == pytest.approx(wait)


def test_later_registrant_reads_an_earlier_one_not_the_origin() -> None:
    image = _image(12)
    p = plan(image, HerdConfig(fanout=4), Topology(), mine=_peer(6))
    assert p.parent == _peer(1) and not p.origin
    assert set(p.backups) == {_peer(i) for i in (0, 2, 3, 4, 5)}
    assert _peer(6) in p.excluded and _peer(7) in p.excluded and _peer(5) not in p.excluded
    assert "origin only as a fallback" in p.why
    cfg = transfer_for(TransferConfig(max_sources=4), p)
    assert cfg.max_sources == 1 and cfg.stall_timeout >= TransferConfig().idle_timeout


def test_topology_picks_the_parent_in_the_same_rack() -> None:
    image = _image(4, racks=["a", "b", "a", "b"])
    p = plan(image, HerdConfig(), Topology(rack="b"), mine=_peer(3))
    assert p.parent == _peer(1)
    # only earlier ones; equally far, the one with fewer readers first (node 0 has two)
    assert p.backups == (_peer(2), _peer(0))


def test_origin_share_lets_some_nodes_read_the_origin_too() -> None:
    image = _image(10)
    herd = HerdConfig(origin_share=0.5)
    both = [plan(image, herd, Topology(), mine=_peer(k)).origin for k in range(1, 10)]
    assert sum(both) == 4
    assert transfer_for(TransferConfig(max_sources=4), plan(image, herd, Topology(), mine=_peer(2)))


def test_unregistered_node_spreads_over_parents_with_room() -> None:
    image = _image(3)
    picks = {
        plan(image, HerdConfig(fanout=8), Topology(), rng=random.Random(i)).parent
        for i in range(40)
    }
    assert picks == {_peer(0), _peer(1), _peer(2)}


def test_no_storm_changes_nothing() -> None:
    image = Image(id="img", size=1, locations=(Location(ORIGIN),))
    assert not plan(image, HerdConfig(), Topology()).active
    assert not plan(_image(3), HerdConfig(enabled=False), Topology(), mine=_peer(2)).active
    complete = Location(_peer(0), {MARKER: "true"})  # a finished copy: no storm
    assert not plan(attrs.evolve(image, locations=(complete,)), HerdConfig(), Topology()).active


def test_arrange_puts_parent_first_and_holds_the_origin_back() -> None:
    image = _image(6)
    p = plan(image, HerdConfig(fanout=2), Topology(), mine=_peer(4))
    ranked = rank(image, [Candidate(loc) for loc in image.locations], Config())
    scores = sorted(ranked, key=lambda s: s.location.url != ORIGIN)  # as if the origin won
    out = arrange(scores, p)
    urls = [s.location.url for s in out]
    assert urls[0] == p.parent == _peer(1)
    assert urls[-1] == ORIGIN and _peer(4) not in urls and _peer(5) not in urls
    assert [s.rank for s in out] == list(range(1, len(out) + 1))
    assert any("origin held back" in n for n in out[-1].reasons.notes)
    assert any("storm parent" in n for n in out[0].reasons.notes)


# -- scoring a filling peer ---------------------------------------------------------------------
def test_judge_expected_speed_is_min_of_throughput_and_fill_rate() -> None:
    loc = Location(_peer(0), _fill_meta(1.0))
    fill = FillHeader("filling", 64 * MiB, 128 * MiB, 32.0 * MiB)
    probe = Probe(url=loc.url, ok=True, ttfb=0.01, throughput_bps=800.0 * MiB, fill=fill)
    j = judge(loc, probe, 128 * MiB, 0.01, 800.0 * MiB)
    assert j is not None and j.expected == pytest.approx(0.01 + 2.0)
    assert "holds 64.0 MiB" in j.text
    busy = Probe(url=loc.url, ok=False, ttfb=0.01, status=503, retry_after=3, fill=fill)
    jb = judge(loc, busy, 128 * MiB, 0.01, 800.0 * MiB)
    assert jb is not None and jb.expected == pytest.approx(0.01 + 2.0 + 3) and "busy" in jb.text
    assert judge(Location(ORIGIN), Probe(url=ORIGIN, ok=True), 10, 0.01, 1e6) is None


def test_rank_prefers_the_fuller_faster_filling_peer_and_keeps_busy_usable() -> None:
    image = _image(3)
    a, b, c = image.locations[1:]

    def cand(loc: Location, held: int, rate: float, status: int | None = None) -> Candidate:
        fill = FillHeader("filling", held, 128 * MiB, rate)
        ok = status is None
        return Candidate(loc, probe=Probe(loc.url, ok, 0.001, throughput_bps=1e9 if ok else None,
                                          status=status, fill=fill))  # fmt: skip

    scores = rank(
        image,
        [cand(a, 1 * MiB, 10e6), cand(b, 100 * MiB, 40e6), cand(c, 120 * MiB, 40e6, status=503)],
        Config(),
    )
    assert [s.location.url for s in scores] == [b.url, c.url, a.url]
    assert all(s.usable for s in scores)
    assert "busy (503)" in (scores[1].reasons.fill or "")


# -- real server, real CLI ----------------------------------------------------------------------
DATA = bytes(range(256)) * 4096 * 20  # 20 MiB


class _Peer(BaseHTTPRequestHandler):
    """A peer whose copy is still filling: answers what it holds with X-Locpick-Fill; ``/busy``
    answers 503 + Retry-After the way ``serve`` does at max_clients."""

    held = {"/slow": 2 * MiB, "/full": 18 * MiB, "/busy": 19 * MiB}
    rates = {"/slow": 1_000_000, "/full": 40_000_000, "/busy": 40_000_000}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        origin = path == "/origin"
        held, rate = self.held.get(path, 0), self.rates.get(path, 0)
        header = f"state=filling; held={held}; size={len(DATA)}; rate={rate}"
        if path == "/busy":
            self.send_response(503)
            self.send_header("X-Locpick-Fill", header)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = 0, len(DATA) - 1
        rng = self.headers.get("Range")
        if rng:
            lo, _, hi = rng.removeprefix("bytes=").partition("-")
            first, last = int(lo), min(int(hi) if hi else last, len(DATA) - 1)
        self.send_response(206 if rng else 200)
        if not origin:
            self.send_header("X-Locpick-Fill", header)
        self.send_header("Content-Length", str(last - first + 1))
        if rng:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(DATA[first : last + 1])


@pytest.fixture
def peer() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Peer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_records_the_fill_header_from_a_real_server(peer: str) -> None:
    from locpick.transports.base import Context
    from locpick.transports.http.transport import HttpTransport

    image = Image(id="img", size=len(DATA))
    ctx = Context(Config())
    try:
        transport = HttpTransport(ctx)
        ok = transport.probe(Location(peer + "/full"), image, timeout=10)
        busy = transport.probe(Location(peer + "/busy"), image, timeout=10)
    finally:
        ctx.close()
    assert ok.ok and ok.fill == FillHeader("filling", 18 * MiB, len(DATA), 40e6)
    assert not busy.ok and busy.status == 503 and busy.retry_after == 2
    assert busy.fill is not None and busy.fill.held == 19 * MiB


def test_cli_rank_json_explains_filling_peers(peer: str, tmp_path: Path) -> None:
    """``locpick rank --json`` on a record with three filling peers: the one holding most and
    filling fastest first, the busy one still usable but behind it, today's keys kept and the
    new ``fill`` reason added; a node that is not in the tree reads one of them, the origin
    held back."""
    meta = [(peer + p, _fill_meta(1000.0 + i)) for i, p in enumerate(["/slow", "/full", "/busy"])]
    record = image_record("img", DATA, [(peer + "/origin", {}), *meta])
    path = write_record(tmp_path / "m.json", record)
    (tmp_path / "c.toml").write_text(f'history_file = ""\n[herd]\nfanout = 8\n{FLEET_LOOPBACK}')
    proc = run_cli("rank", "img", "--metadata", str(path), "--json", "--config",
                   str(tmp_path / "c.toml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by = {r["url"]: r for r in rows}
    for key in ("latency_ms", "throughput_bps", "topology", "shared_fs", "history", "error"):
        assert key in rows[0]["reasons"]
    assert all(r["usable"] for r in rows)
    assert "holds 18.0 MiB" in by[peer + "/full"]["reasons"]["fill"]
    assert "busy (503)" in by[peer + "/busy"]["reasons"]["fill"]
    assert by[peer + "/full"]["score"] < by[peer + "/busy"]["score"] < by[peer + "/slow"]["score"]
    assert rows[-1]["url"] == peer + "/origin"
    assert any("origin held back" in n for n in rows[-1]["reasons"]["notes"])
    assert any("storm parent" in n for r in rows[:3] for n in r["reasons"]["notes"])


# -- real downloads: the origin held back, a dead parent ------------------------------------------
def _download(tmp_path: Path, record: dict[str, object]) -> dict[str, object]:
    path = write_record(tmp_path / "m.json", record)
    (tmp_path / "c.toml").write_text(f'history_file = ""\n{FLEET_LOOPBACK}')
    dest = tmp_path / "img.raw"
    proc = run_cli("download", "img", str(dest), "--metadata", str(path), "--json", "--config",
                   str(tmp_path / "c.toml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == DATA
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def test_download_reads_the_filling_peer_and_leaves_the_origin_alone(tmp_path: Path) -> None:
    """A node that sees a filling peer reads it alone (no swarm with the origin, no probe of
    the origin): the origin sends no byte."""
    with Origin(DATA) as origin, Origin(DATA) as peer:
        record = image_record("img", DATA, [origin.url, (peer.url, _fill_meta(1000.0))])
        doc = _download(tmp_path, record)
        assert doc["source_url"] == peer.url
        assert origin.bytes_sent == 0 and peer.bytes_sent >= len(DATA)


def test_download_falls_back_when_the_parent_dies(tmp_path: Path) -> None:
    """The parent's copy failed (its serve answers 404): the other earlier filling copy takes
    over; the origin is still not needed. With every peer dead, the origin delivers."""
    dead = Faults(status=404)
    with Origin(DATA) as origin, Origin(DATA, faults=dead) as a, Origin(DATA, faults=dead) as b:
        with Origin(DATA) as c:
            peers = [(a.url, _fill_meta(1000.0)), (c.url, _fill_meta(1001.0))]
            record = image_record("img", DATA, [origin.url, *peers])
            # fan-out 1 would be a chain; here the node is unregistered: either may be first
            doc = _download(tmp_path, record)
            assert doc["source_url"] == c.url and origin.bytes_sent == 0
        record = image_record("img", DATA, [origin.url, (a.url, _fill_meta(1.0)),
                                            (b.url, _fill_meta(2.0))])  # fmt: skip
        (tmp_path / "img.raw").unlink()
        doc = _download(tmp_path, record)
        assert doc["source_url"] == origin.url and origin.bytes_sent >= len(DATA)
