"""Five real `locpick serve` nodes keep their registrations for a minute while the operator
copies the image into another store and adds a mirror (issue 24), against the real Glance 33
(quota: Glance's default) — without a coordination backend (appends only) and with a real
etcd (``[fleet] coordination``). Nothing of the operator's is lost, each node is listed
exactly once throughout, and the operator's own add is accepted at the first try."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import glance_harness as gh
import pytest
from fixtures_etcd import etcd_fixture  # noqa: F401
from fixtures_fleet import (
    FleetNode,
    copied,
    entries,
    nodes,
    start_copy,
    store_file,
    store_locations,
)
from fixtures_glance import GlanceWorld, fresh_image, glance_world_fixture  # noqa: F401

from locpick._demo.origin import Origin

pytestmark = pytest.mark.glance

SIZE = 300_000
NODES = 5
#: Seconds the nodes keep renewing (3 s leases: a check every second each).
RUN = 60.0
LEASE = 3.0


@pytest.fixture
def image(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[tuple[str, bytes, Origin]]:
    with fresh_image(glance_world, tmp_path, "locpick-fleet-e2e", SIZE) as made:
        yield made


@pytest.mark.parametrize("backend", ["none", "etcd"])
def test_five_renewing_nodes_never_touch_the_operators_locations(
    glance_world: GlanceWorld,
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    w = glance_world
    image_id, data, origin = image
    coordination = None
    if backend == "etcd":
        coordination = request.getfixturevalue("etcd").url
    fleet = [
        FleetNode(w, tmp_path, f"node-{i}", lease=LEASE, coordination=coordination)
        for i in range(NODES)
    ]
    mirror = Origin(data).start()
    fs2 = ""
    try:
        with nodes(*(n.start() for n in fleet)):
            for node in fleet:
                code, _out, err = node.cli(
                    "download", image_id, str(tmp_path / f"{node.name}.img"), "--register"
                )
                assert code == 0, err
            urls = [node.url(image_id) for node in fleet]
            fs1 = store_locations(w, image_id, "fs1")
            assert len(fs1) == 1
            operator = {fs1[0], origin.url}
            started = time.monotonic()
            copy_started = mirror_added = False
            samples = 0
            while time.monotonic() - started < RUN:
                listed = [loc["url"] for loc in entries(w, image_id)]
                samples += 1
                for url in operator:
                    assert url in listed, f"operator location {url} lost after {samples} looks"
                for node, url in zip(fleet, urls, strict=True):
                    assert listed.count(url) == 1, f"{node.name} listed {listed.count(url)}x"
                elapsed = time.monotonic() - started
                if not copy_started and elapsed > 3:
                    start_copy(w, image_id, "fs2")  # the operator copies into fs2 ...
                    copy_started = True
                if copy_started and not mirror_added and copied(w, image_id, "fs2"):
                    (fs2,) = store_locations(w, image_id, "fs2")
                    operator.add(fs2)
                    # ... then adds a mirror: one PATCH, no retry, must be accepted
                    op = {
                        "op": "add",
                        "path": "/locations/-",
                        "value": {"url": mirror.url, "metadata": {"zone": "z-mirror"}},
                    }
                    status, body = gh.glance_request(
                        w.endpoint,
                        "PATCH",
                        f"/v2/images/{image_id}",
                        [op],
                        token=w.admin_token,
                        content_type="application/openstack-images-v2.1-json-patch",
                    )
                    assert status == 200, (status, body)
                    operator.add(mirror.url)
                    mirror_added = True
                time.sleep(0.25)
            assert mirror_added, "the copy into fs2 never finished"
            assert store_file(fs2).exists(), "the fs2 replica's file was deleted"
            listed = [loc["url"] for loc in entries(w, image_id)]
            assert operator <= set(listed)
            assert sorted(listed.count(u) for u in urls) == [1] * NODES
            for node in fleet:  # the nodes kept serving and checking all along
                assert node.serve is not None and node.serve.proc.poll() is None
    finally:
        mirror.stop()
    # stopped cleanly: with a lock the nodes took their own entries back, without one they
    # left them for `cache reap`; the operator's stay either way
    listed = [loc["url"] for loc in entries(w, image_id)]
    assert operator <= set(listed)
    assert store_file(fs2).exists()
    if backend == "etcd":
        assert not set(urls) & set(listed), "a node's entry outlived its clean stop"
    else:
        assert sorted(listed.count(u) for u in urls) == [1] * NODES
