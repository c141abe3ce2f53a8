"""Glance location writes that can never remove what locpick did not add (issue 24), against
the real Glance 33 + Keystone of ``fixtures_glance``, real ``locpick serve`` nodes and, where a
lock is used, a real etcd (``fixtures_etcd``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import glance_harness as gh
import httpx
import pytest
from fixtures_etcd import etcd_fixture  # noqa: F401
from fixtures_fleet import (
    FleetNode,
    copied,
    count,
    entries,
    nodes,
    reap_json,
    start_copy,
    store_file,
    store_locations,
    wait_for,
)
from fixtures_glance import GlanceWorld, fresh_image, glance_world_fixture  # noqa: F401
from fixtures_net import GlanceCounter
from harness.etcd import EtcdHandle

from locpick._demo.origin import Origin
from locpick.cache.store import NodeCache
from locpick.client import Client
from locpick.config.env import Environment
from locpick.config.load import load_config
from locpick.glance.coordination import coordination_for
from locpick.glance.locations import CopiesCapped, GlanceLocations, PublishError
from locpick.serve.renew import Renewer

pytestmark = pytest.mark.glance

SIZE = 300_000


@pytest.fixture
def image(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[tuple[str, bytes, Origin]]:
    """A fresh image: fs1 and an http origin of its own."""
    with fresh_image(glance_world, tmp_path, "locpick-fleet-test", SIZE) as made:
        yield made


def _register(node: FleetNode, image_id: str, tmp_path: Path) -> None:
    code, _out, err = node.cli("download", image_id, str(tmp_path / f"{node.name}.img"),
                               "--register")  # fmt: skip
    assert code == 0, err
    wait_for(f"{node.name} listed", lambda: count(node.w, image_id, node.url(image_id)) == 1)


def test_stale_index_interleaving_never_removes_the_operators_copy(
    glance_world: GlanceWorld,
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
    etcd: EtcdHandle,
) -> None:
    """Node B reads the list, node A renews, node B patches: B removes its own entry and
    nothing else; the operator's copy-image replica in fs2 and its file stay."""
    w = glance_world
    image_id, _data, origin = image
    a = FleetNode(w, tmp_path, "node-a", coordination=etcd.url)
    b = FleetNode(w, tmp_path, "node-b", coordination=etcd.url)
    with nodes(a.start(renew=False), b.start(renew=False)):
        _register(a, image_id, tmp_path)
        _register(b, image_id, tmp_path)
        start_copy(w, image_id, "fs2")  # the operator: fs2 after A and B in the list
        wait_for("copy-image into fs2", lambda: copied(w, image_id, "fs2"))
        (fs2,) = store_locations(w, image_id, "fs2")
        order = [loc["url"] for loc in entries(w, image_id)]
        assert order.index(a.url(image_id)) < order.index(b.url(image_id)) < order.index(fs2)
        assert store_file(fs2).exists()

        client_a, client_b = a.client(), b.cache_admin()
        renewer = Renewer(client_a, NodeCache(a.cache_dir))
        fired: list[str] = []

        def a_renews_now(request: httpx.Request) -> None:
            # B has read the list (inside its lock) and is about to send its PATCH
            if request.method == "PATCH" and not fired:
                fired.append(request.url.path)
                assert renewer.renew_once() == 1

        try:
            client_b._session.ctx.http.event_hooks["request"].append(a_renews_now)
            result = client_b.evict([image_id])
            assert list(result.evicted) == [image_id] and not result.warnings, result
        finally:
            client_a.close()
            client_b.close()
        assert fired, "B never patched"
        left = [loc["url"] for loc in entries(w, image_id)]
        assert fs2 in left, "the operator's fs2 replica was removed"
        assert store_file(fs2).exists(), "the operator's fs2 replica's file was deleted"
        assert left.count(a.url(image_id)) == 1
        assert b.url(image_id) not in left
        assert origin.url in left


def test_duplicate_url_reap_attack_keeps_the_live_registration(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """A tenant lists a live, renewing node's capability URL again with an expired lease:
    `cache reap` judges each entry and removes that one only; the node's own entry is never
    gone (watched all along) and never rewritten."""
    w = glance_world
    image_id, _data, _origin = image
    a = FleetNode(w, tmp_path, "node-a", lease=3)  # its serve checks every second
    reaper = FleetNode(w, tmp_path, "operator")
    with nodes(a.start()):
        _register(a, image_id, tmp_path)
        url = a.url(image_id)
        (mine,) = [loc for loc in entries(w, image_id) if loc["url"] == url]
        forged = {"locpick_cache": "true", "locpick_registered": "1000.0", "locpick_lease": "1"}
        gh.patch_locations(
            w.endpoint,
            image_id,
            [{"op": "add", "path": "/locations/0", "value": {"url": url, "metadata": forged}}],
            token=w.admin_token,
        )
        time.sleep(2.5)  # a renewal or two after the forgery
        seen: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(count(w, image_id, url))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            doc = reap_json(reaper, image_id)
            time.sleep(1.0)
        finally:
            stop.set()
            watcher.join(30)
        (result,) = doc["images"]
        assert 0 not in seen, f"the node's URL was unlisted during the reap: {seen}"
        left = [loc for loc in entries(w, image_id) if loc["url"] == url]
        assert [loc["metadata"] for loc in left] == [mine["metadata"]], result
        assert result["removed"] == [a.shown(image_id)], result


def test_removal_with_several_matching_entries_removes_none(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """A node's own deregistration finds its URL listed twice (same marker): it removes
    neither and says so; the list is unchanged."""
    w = glance_world
    image_id, _data, _origin = image
    a = FleetNode(w, tmp_path, "node-a")
    with nodes(a.start()):
        _register(a, image_id, tmp_path)
        url = a.url(image_id)
        other = {"locpick_cache": "true", "zone": "elsewhere"}
        gh.add_http_location(w.endpoint, image_id, url, other, token=w.admin_token)
        before = entries(w, image_id)
        client = a.client()
        try:
            api = client._session.glance_locations(designated=True)
            with pytest.raises(PublishError, match="2 entries match"):
                api.remove(image_id, url)
        finally:
            client.close()
        assert entries(w, image_id) == before


def test_no_removal_without_coordination_unless_designated(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """Without [fleet] coordination a node never removes (appends only); the designated
    reaper may, one exact entry."""
    w = glance_world
    image_id, _data, _origin = image
    a = FleetNode(w, tmp_path, "node-a")
    with nodes(a.start()):
        _register(a, image_id, tmp_path)
        client = a.client()
        try:
            with pytest.raises(PublishError, match="only `locpick cache reap` removes"):
                client.glance_locations().remove(image_id, a.url(image_id))
            assert count(w, image_id, a.url(image_id)) == 1
            api = client._session.glance_locations(designated=True)
            assert api.remove(image_id, a.url(image_id)) == 1
            assert api.problems == []
        finally:
            client.close()
        assert count(w, image_id, a.url(image_id)) == 0


def test_the_etcd_lock_serialises_writers_of_one_image(etcd: EtcdHandle) -> None:
    """Two coordinators on the real etcd: the second waits for the first's lock (a short
    timeout is refused, nothing written), and gets it once released; other images are free."""
    first = coordination_for(etcd.url, timeout=10)
    second = coordination_for(etcd.url, timeout=0.5)
    try:
        with first.hold("img-1"):
            with pytest.raises(Exception, match="not granted"), second.hold("img-1"):
                pass
            with second.hold("img-2"):
                pass
        with second.hold("img-1"):
            pass
        got: list[float] = []
        third = coordination_for(etcd.url, timeout=30)
        try:
            with first.hold("img-3"):
                t = threading.Thread(target=lambda: _hold(third, "img-3", got))
                t.start()
                time.sleep(0.5)
                assert got == [], "the lock was granted twice"
            t.join(30)
            assert len(got) == 1
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def _hold(coordination: Any, image_id: str, got: list[float]) -> None:
    with coordination.hold(image_id):
        got.append(time.monotonic())


def test_max_copies_caps_registrations_the_rest_are_leaves(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """[fleet] max_copies = 2: the third node does not register (CopiesCapped) and its
    download still succeeds, reading the registered copies."""
    w = glance_world
    image_id, _data, _origin = image
    made = [FleetNode(w, tmp_path, f"node-{i}", fleet="max_copies = 2\n") for i in range(3)]
    with nodes(*(n.start() for n in made)):
        for node in made:
            code, _out, err = node.cli("download", image_id, str(tmp_path / f"{node.name}.img"),
                                       "--register")  # fmt: skip
            assert code == 0, err
        listed = [loc["url"] for loc in entries(w, image_id)]
        assert [node.url(image_id) in listed for node in made] == [True, True, False]
        client = made[2].client()
        try:
            api: GlanceLocations = client.glance_locations()
            with pytest.raises(CopiesCapped):
                api.add(image_id, made[2].url(image_id), {"locpick_cache": "true"})
        finally:
            client.close()


def test_evict_without_coordination_leaves_the_entry_to_reap(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """No [fleet] coordination: `cache evict` succeeds and writes nothing to Glance; the
    operator's `cache reap` then removes the entry (the node answers 404 for it)."""
    w = glance_world
    image_id, _data, _origin = image
    a = FleetNode(w, tmp_path, "node-a")
    reaper = FleetNode(w, tmp_path, "operator")
    with nodes(a.start()):
        _register(a, image_id, tmp_path)
        before = entries(w, image_id)
        code, _out, err = a.cli("cache", "evict", image_id)
        assert code == 0, err
        assert entries(w, image_id) == before
        (result,) = reap_json(reaper, image_id)["images"]
        assert result["removed"] == [a.shown(image_id)], result
        assert count(w, image_id, a.url(image_id)) == 0
        assert len(entries(w, image_id)) == len(before) - 1


def test_max_copies_per_zone(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """[fleet] max_copies_per_zone = 1: the second node of zone z1 is a leaf; a node of z2
    registers."""
    w = glance_world
    image_id, _data, _origin = image
    made = [
        FleetNode(w, tmp_path, name, zone=zone, fleet="max_copies_per_zone = 1\n")
        for name, zone in (("node-1", "z1"), ("node-2", "z1"), ("node-3", "z2"))
    ]
    with nodes(*(n.start() for n in made)):
        for node in made:
            code, _out, err = node.cli("download", image_id, str(tmp_path / f"{node.name}.img"),
                                       "--register")  # fmt: skip
            assert code == 0, err
        listed = [loc["url"] for loc in entries(w, image_id)]
        assert [node.url(image_id) in listed for node in made] == [True, False, True]


def test_a_registering_node_makes_three_glance_requests(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """Issue 24's goal of <= 3 Glance requests per node, measured on the wire: without a
    coordination backend a node that registers its filling copy GETs the record once, adds its
    location once (the PATCH's answer is both the check after the write and the storm
    refresh), and confirms the add once while its download still runs."""
    w = glance_world
    image_id, data, origin = image
    origin.faults.bandwidth = SIZE / 4  # a download of ~4 s: the confirmation comes in it
    node = FleetNode(w, tmp_path, "node-a")
    with nodes(node.start()), GlanceCounter(w.endpoint) as glance:
        client = Client(
            config=load_config(node.config),
            glance_url=glance.url,
            token=w.admin_token,
            env=Environment(vars={}),
        )
        try:
            report = client.download(image_id, tmp_path / "a.img", register=True)
        finally:
            client.close()
        asked = glance.of_image(image_id)
    assert (tmp_path / "a.img").read_bytes() == data
    assert report.source_url == origin.url
    assert count(w, image_id, node.url(image_id)) == 1
    assert [m for m, _ in asked] == ["GET", "PATCH", "GET"], asked
