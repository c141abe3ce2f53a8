"""A fake "filling" peer in a boot storm, against a real Glance 33 (issue 24 item 2).

A tenant adds a location with ``locpick_cache`` / ``locpick_fill`` marks and the nodes'
topology before any node starts, so it is first in Glance's order: registrant 0, which on the
old code was the storm parent of the next nodes (and read without a probe). It comes in three
shapes: silent (a :class:`~locpick._demo.blackhole.BlackHole` on the address Glance checked),
stalling (sends a little, then holds the connection), and fast wrong bytes (a byte flipped
every 64 KiB). Three real nodes (``locpick serve`` + ``locpick download --register``, sharing
a fleet key) start one after another. Each must deliver the verified image, the origin must
serve at most 1.2 copies, and the fake must never be read: its marks carry no fleet signature.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import glance_harness as gh
import pytest
from fixtures_glance import GlanceWorld, glance_world_fixture  # noqa: F401
from test_storm_e2e import Node, _cache_locations, _seed, _wait, fleet_key

from locpick._demo.blackhole import BlackHole
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.glance.lease import FILL, FILL_STARTED, LEASE, MARKER, REGISTERED
from locpick.glance.vouch import FleetTrust

pytestmark = pytest.mark.glance

MiB = 1 << 20
SIZE = 8 * MiB
#: Per-response cap of the origin: the first node's fill takes about SIZE / RATE seconds, so
#: the later nodes start while it fills (and read it, not the origin).
RATE = 2 * MiB


class Fake:
    """The tenant's fake peer: answers Glance's HEAD at add time, then turns into ``shape``."""

    def __init__(self, shape: str, data: bytes) -> None:
        self.shape = shape
        self.origin: Origin | None = Origin(data).start()
        self.hole: BlackHole | None = None
        self.url = self.origin.url

    def turn(self) -> None:
        """Become silent, stalling or wrong; forget what Glance's checks did."""
        assert self.origin is not None
        if self.shape == "silent":
            port = self.origin.port
            self.origin.stop()
            self.origin = None
            self.hole = BlackHole(port=port).start()
            return
        if self.shape == "stalling":
            self.origin.faults.stall_after = 64 * 1024
            self.origin.faults.stall_seconds = 600.0
        else:
            self.origin.faults.corrupt_at = range(0, SIZE, 64 * 1024)
        self.origin.reset_counters()

    def contacted(self) -> int:
        """Connections (silent) or requests (the others) nodes made to it since ``turn``."""
        if self.hole is not None:
            return self.hole.connections
        assert self.origin is not None
        return len(self.origin.requests)

    def stop(self) -> None:
        for server in (self.origin, self.hole):
            if server is not None:
                server.stop()


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            thing.stop()


@pytest.mark.parametrize("shape", ["silent", "stalling", "wrong"])
def test_unsigned_fake_filling_peer_is_never_a_parent(
    glance_world: GlanceWorld, tmp_path: Path, shape: str, cleanup: list[Any]
) -> None:
    w = glance_world
    data = os.urandom(SIZE)
    origin = Origin(data, faults=Faults(bandwidth=RATE)).start()
    cleanup.append(origin)
    image_id = _seed(w, tmp_path, data, origin.url)
    fake = Fake(shape, data)
    cleanup.append(fake)
    now = f"{time.time():.1f}"
    marks = {MARKER: "true", FILL: "filling", FILL_STARTED: now, REGISTERED: now, LEASE: "3600",
             "region": "R", "zone": "z1", "rack": "rack-1"}  # fmt: skip
    gh.add_http_location(w.endpoint, image_id, fake.url, marks, token=w.admin_token)
    fake.turn()
    origin.reset_counters()

    nodes = [Node(w, tmp_path, f"node-{i}", rack="rack-1") for i in range(3)]
    cleanup.extend(nodes)
    for node in nodes:  # one after another: Glance's order is fake, node-0, node-1, node-2
        node.start_download(image_id)
        url = node.url(image_id)
        _wait(f"{node.name}'s copy registered", lambda u=url: u in _cache_locations(w, image_id))

    for node in nodes:
        code, doc, err = node.finish()
        assert code == 0, err
        assert doc["verified"] == "sha512"
        assert node.dest.read_bytes() == data
        assert all(s["url"] != fake.url for s in doc["sources"]), doc["sources"]
    copies = origin.bytes_sent / SIZE
    assert copies <= 1.2, f"the origin served {copies:.2f} copies"
    assert fake.contacted() == 0, f"the unsigned fake was read ({shape})"
    # the fake's marks were left alone: locpick never changes what it did not add
    assert fake.url in _cache_locations(w, image_id)


def test_signed_liar_is_dropped_and_children_move_on(
    glance_world: GlanceWorld, tmp_path: Path, cleanup: list[Any]
) -> None:
    """A fleet member that lies (signed with the fleet key, sends fast wrong bytes) registered
    first: the nodes that read it find the hash wrong, drop it, withdraw what they mirrored
    into their own filling copies, and go to the next honest peer; the first of them goes to
    the origin, the later ones read it, not the origin: it serves about one copy."""
    w = glance_world
    data = os.urandom(SIZE)
    origin = Origin(data, faults=Faults(bandwidth=RATE)).start()
    cleanup.append(origin)
    image_id = _seed(w, tmp_path, data, origin.url)
    liar = Origin(data).start()
    cleanup.append(liar)
    now = f"{time.time():.1f}"
    marks = {MARKER: "true", FILL: "filling", FILL_STARTED: now, REGISTERED: now, LEASE: "3600",
             "region": "R", "zone": "z1", "rack": "rack-1"}  # fmt: skip
    key = fleet_key(tmp_path).read_bytes().strip()
    signed = FleetTrust(key=key).sign(image_id, liar.url, marks)
    gh.add_http_location(w.endpoint, image_id, liar.url, signed, token=w.admin_token)
    liar.faults.corrupt_at = range(0, SIZE, 64 * 1024)
    liar.reset_counters()
    origin.reset_counters()

    nodes = [Node(w, tmp_path, f"node-{i}", rack="rack-1") for i in range(3)]
    cleanup.extend(nodes)
    for node in nodes:
        node.start_download(image_id)
        url = node.url(image_id)
        _wait(f"{node.name}'s copy registered", lambda u=url: u in _cache_locations(w, image_id))

    for node in nodes:
        code, doc, err = node.finish()
        assert code == 0, err
        assert doc["verified"] == "sha512"
        assert node.dest.read_bytes() == data
        assert doc["verify_failures"] >= 1, "the liar was not read: nothing was tested"
    gets = [r for r in liar.requests if r.method == "GET"]
    assert len(gets) <= 2 * len(nodes), f"the liar was read again after it lied: {len(gets)}"
    copies = origin.bytes_sent / SIZE
    assert copies <= 1.2, f"the origin served {copies:.2f} copies"
